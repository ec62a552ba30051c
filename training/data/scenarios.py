"""Binary evaluation scenarios: a query text plus a named label function (training/data/scenarios.yaml).

    python -m training.data.scenarios --dataset ml-1m     # class balance per scenario and split

Label functions take (world, user index, **params) and return 0 / 1, or None where the label is undefined
(the user is then left out of that scenario). Demographic labels read the user table; future labels read only
the future window, so a model that sees the history window cannot read the answer off its input. `given` labels
come from a team's own file (`params: {file: labels.csv}`, header `user_id,label`, the file `qanchor scenario tune`
reads; a path relative to the scenarios file): what the quality harness probes on an event log (docs/own-data.md).
"""
from __future__ import annotations

import argparse
import functools
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import yaml

from training.data.world import SPLITS, UserWorld, WorldConfig, build_world

log = logging.getLogger(__name__)

SCENARIOS_YAML = Path(__file__).with_name("scenarios.yaml")
DAY = 86400


def _future(world: UserWorld, user: int) -> tuple[np.ndarray, list]:
    rows = world.timelines[user].future
    r = world.ml.ratings
    return rows, [world.ml.movies[i] for i in r.item[rows]]


def demographic_gender(world: UserWorld, user: int, gender: str) -> int:
    return int(world.ml.users[user].gender == gender)


def demographic_age(world: UserWorld, user: int, min_age: int, max_age: int) -> int:
    # ML-1M stores the lower bound of an age bucket (18 = 18-24): bounds on bucket starts stay exact.
    return int(min_age <= world.ml.users[user].age <= max_age)


def demographic_occupation(world: UserWorld, user: int, occupations: list[str]) -> int:
    return int(world.ml.users[user].occupation in set(occupations))


def future_genre_share(world: UserWorld, user: int, genre: str, min_share: float) -> int:
    _, movies = _future(world, user)
    return int(np.mean([genre in m.genres for m in movies]) >= min_share)


def future_any_genre(world: UserWorld, user: int, genre: str) -> int:
    _, movies = _future(world, user)
    return int(any(genre in m.genres for m in movies))


def future_old_share(world: UserWorld, user: int, before_year: int, min_share: float) -> int | None:
    _, movies = _future(world, user)
    years = [m.year for m in movies if m.year > 0]
    if not years:
        return None
    return int(np.mean([y < before_year for y in years]) >= min_share)


def future_rating_drop(world: UserWorld, user: int, margin: float) -> int:
    r = world.ml.ratings
    tl = world.timelines[user]
    return int(r.rating[tl.future].mean() < r.rating[tl.history].mean() - margin)


def future_active_after(world: UserWorld, user: int, days: float) -> int:
    r = world.ml.ratings
    tl = world.timelines[user]
    return int(r.ts[tl.future].max() - r.ts[tl.history].max() > days * DAY)


@functools.lru_cache(maxsize=None)
def labels_file(file: str) -> dict[str, int]:
    """user_id -> 0/1 of a labels CSV (services.tuning.dataset.read_labels_csv: the tuning service's reader, so one
    file serves both), read once per path."""
    from services.tuning.dataset import read_labels_csv

    users, labels = read_labels_csv(Path(file))
    other = sorted(set(labels.tolist()) - {0, 1})
    if other:
        raise ValueError(f"{file}: labels {other[:5]} besides 0/1; a scenario is binary: write 1 for the users it is "
                         "about and 0 for the others")
    return dict(zip(users, labels.tolist()))


def given(world: UserWorld, user: int, file: str) -> int | None:
    """The user's label in a team's labels file; None (left out) for users it does not list."""
    return labels_file(file).get(str(world.user_id(user)))


LABEL_FUNCTIONS: dict[str, Callable[..., int | None]] = {
    f.__name__: f for f in (demographic_gender, demographic_age, demographic_occupation, future_genre_share,
                            future_any_genre, future_old_share, future_rating_drop, future_active_after, given)
}


@dataclass(frozen=True)
class Scenario:
    name: str
    query: str
    label: str  # a key of LABEL_FUNCTIONS
    params: dict[str, Any] = field(default_factory=dict)

    def label_of(self, world: UserWorld, user: int) -> int | None:
        return LABEL_FUNCTIONS[self.label](world, user, **self.params)

    def labels(self, world: UserWorld, users: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """(kept user indices, 0/1 labels) for the users whose label is defined."""
        pairs = [(u, self.label_of(world, u)) for u in users]
        kept = [(u, y) for u, y in pairs if y is not None]
        return np.array([u for u, _ in kept], np.int64), np.array([y for _, y in kept], np.int64)


def load_scenarios(path: Path | None = None) -> list[Scenario]:
    path = path or SCENARIOS_YAML
    raw = yaml.safe_load(path.read_text())
    out = []
    for s in raw["scenarios"]:
        if s["label"] not in LABEL_FUNCTIONS:
            raise ValueError(f"scenario {s['name']!r} in {path} names unknown label function {s['label']!r}; "
                             f"known: {sorted(LABEL_FUNCTIONS)}")
        params = dict(s.get("params") or {})
        if s["label"] == "given":
            if "file" not in params:
                raise ValueError(f"scenario {s['name']!r} in {path}: label `given` needs `params: {{file: "
                                 "labels.csv}}` (header user_id,label)")
            params["file"] = str(path.parent / params["file"])  # relative to the scenarios file
            if not Path(params["file"]).is_file():
                raise ValueError(f"scenario {s['name']!r} in {path}: labels file {params['file']} not found")
        out.append(Scenario(s["name"], s["query"], s["label"], params))
    names = [s.name for s in out]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate scenario names in {path}: {names}")
    return out


def class_balance(world: UserWorld, scenarios: list[Scenario]) -> list[dict]:
    """Per scenario: users with a label and the positive rate, per split."""
    rows = []
    for s in scenarios:
        row: dict[str, Any] = {"scenario": s.name}
        for split in SPLITS:
            _, y = s.labels(world, world.users(split))
            row[f"{split}_n"] = int(len(y))
            row[f"{split}_pos"] = float(y.mean()) if len(y) else float("nan")
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Class balance of the evaluation scenarios")
    p.add_argument("--dataset", default="ml-1m", choices=["ml-1m", "ml-100k"])
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    world = build_world(WorldConfig(dataset=args.dataset))
    print("| scenario | train n | train pos | val pos | test n | test pos |\n|---|---|---|---|---|---|")
    for r in class_balance(world, load_scenarios()):
        print(f"| {r['scenario']} | {r['train_n']} | {r['train_pos']:.3f} | {r['val_pos']:.3f} | "
              f"{r['test_n']} | {r['test_pos']:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
