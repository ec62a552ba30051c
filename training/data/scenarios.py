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


def _window(world: UserWorld, user: int, window: str = "future"):
    """(ts, ratings, years, categories) of one user's window (world.stats_columns: any world, MovieLens' or an event
    log's), or None where the window is too short to label (an event log cut late: the label is undefined)."""
    rows = getattr(world.timelines[user], window)
    # a future of fewer events than the world's minimum (WorldConfig's where the world keeps every user, as an event
    # log read for evaluation does) says too little to label; MovieLens worlds only keep users above it
    least = 1 if window == "history" else (world.cfg.min_future or WorldConfig.min_future)
    return world.stats_columns(rows) if len(rows) >= least else None


def demographic_gender(world: UserWorld, user: int, gender: str) -> int:
    return int(world.ml.users[user].gender == gender)


def demographic_age(world: UserWorld, user: int, min_age: int, max_age: int) -> int:
    # ML-1M stores the lower bound of an age bucket (18 = 18-24): bounds on bucket starts stay exact.
    return int(min_age <= world.ml.users[user].age <= max_age)


def demographic_occupation(world: UserWorld, user: int, occupations: list[str]) -> int:
    return int(world.ml.users[user].occupation in set(occupations))


# future labels read only the future window, through stats_columns: `genre` is a value of an event's categories
# (MovieLens: its genres; an event log: the attribute sources.yaml's `statistics: categories` names)
def future_genre_share(world: UserWorld, user: int, genre: str, min_share: float) -> int | None:
    cols = _window(world, user)
    return None if cols is None else int(np.mean([genre in cats for cats in cols[3]]) >= min_share)


def future_any_genre(world: UserWorld, user: int, genre: str) -> int | None:
    cols = _window(world, user)
    return None if cols is None else int(any(genre in cats for cats in cols[3]))


def future_old_share(world: UserWorld, user: int, before_year: int, min_share: float) -> int | None:
    cols = _window(world, user)
    years = [] if cols is None else [y for y in cols[2] if y > 0]
    if not years:
        return None
    return int(np.mean([y < before_year for y in years]) >= min_share)


def future_rating_drop(world: UserWorld, user: int, margin: float) -> int | None:
    future, history = _window(world, user), _window(world, user, "history")
    if future is None or history is None or np.isnan(future[1]).all() or np.isnan(history[1]).all():
        return None  # an event log's events may carry no rating
    return int(np.nanmean(future[1]) < np.nanmean(history[1]) - margin)


def future_active_after(world: UserWorld, user: int, days: float) -> int | None:
    future, history = _window(world, user), _window(world, user, "history")
    if future is None or history is None:
        return None
    return int(future[0].max() - history[0].max() > days * DAY)


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


USER_TABLE_LABELS = ("demographic_gender", "demographic_age", "demographic_occupation")  # MovieLens' user table
FUTURE_LABELS = ("future_genre_share", "future_any_genre", "future_old_share", "future_rating_drop",
                 "future_active_after")  # any world's future window
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
