"""Export a MovieLens user world as event-contract JSONL (services/ingest/schema.py), for replay into Kafka.

    python -m training.data.export_events --dataset ml-1m --users 100 --out /tmp/events.jsonl

One line per rating of the chosen window (default: history, the part that feeds the prefix), ordered by time
as a live stream would be. Raw events are all a producer sends: ingest derives the dense user vector (statistics +
whole-history mean event vector) from them, reading the attributes sources.yaml's `statistics:` names (rating, year,
genres). With --tabular each user also gets the `kind: tabular` override record carrying the vector the training
data uses, timestamped at the user's last history event (for comparing the two paths).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np

from training.data.encoder import cached_text_vectors
from training.data.features import dense_user_features
from training.data.world import SPLITS, UserWorld, WorldConfig, build_world

log = logging.getLogger(__name__)


def export_records(world: UserWorld, users: list[int], window: str = "history",
                   vecs: np.ndarray | None = None) -> list[dict]:
    """Event-contract records of `users`, sorted by (ts, user_id), a user's events of one second in timeline order.
    With `vecs` (the event-text vectors) each user also gets a `kind: tabular` record: the dense user vector training
    reads (statistics + history mean)."""
    dense = dense_user_features(world, vecs) if vecs is not None else None
    out: list[tuple[tuple, dict]] = []  # (sort key, record)
    for u in users:
        uid = world.ml.users[u].user_id
        windows = ("history", "future") if window == "all" else (window,)
        last_ts = 0
        for w in windows:
            for seq, e in enumerate(world.events(u, w)):
                if e["source"] is None:
                    continue
                # events of one second in the user's timeline order: ingest keeps ties in log order, so a replay
                # gives the feature store the prefix training reads (the event id's string order did not)
                out.append(((e["ts"], uid, False, w == "future", seq), {
                    "schema_version": 1, "event_id": f"{world.cfg.dataset}-{e['row']}", "user_id": uid,
                    "kind": "event", "source": e["source"], "ts": e["ts"], "text": e["text"],
                    "attributes": {"rating": e["rating"], "item_id": e["item_id"], "title": e["title"],
                                   "genres": "|".join(e["genres"]),
                                   "year": e["year"], "window": w},
                }))
                if w == "history":
                    last_ts = max(last_ts, e["ts"])
        if dense is not None and last_ts:
            # tabular after the events of the same second, so a replay ends with the statistics in place
            out.append(((last_ts, uid, True, False, 0), {
                "schema_version": 1, "event_id": f"{world.cfg.dataset}-tab-{uid}", "user_id": uid, "kind": "tabular",
                "ts": last_ts, "vector": [round(float(x), 6) for x in dense[u]]}))
    out.sort(key=lambda kr: kr[0])
    return [r for _, r in out]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="ml-1m", choices=["ml-1m", "ml-100k"])
    p.add_argument("--users", type=int, default=100, help="number of users (first N of the split, by file order)")
    p.add_argument("--split", default="all", choices=("all",) + SPLITS)
    p.add_argument("--window", default="history", choices=["history", "future", "all"])
    p.add_argument("--tabular", action="store_true",
                   help="also emit kind=tabular override records (ingest derives the same vector without them)")
    p.add_argument("--out", required=True, help="output JSONL file ('-' for stdout)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    world = build_world(WorldConfig(dataset=args.dataset))
    users = world.users(None if args.split == "all" else args.split)[:args.users]
    vecs = None if not args.tabular else cached_text_vectors(world.texts, args.dataset, progress=False)
    records = export_records(world, users, args.window, vecs)
    fh = sys.stdout if args.out == "-" else Path(args.out).open("w", encoding="utf-8")
    try:
        for r in records:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")
    finally:
        if fh is not sys.stdout:
            fh.close()
    log.info("events_exported dataset=%s users=%d records=%d window=%s out=%s",
             args.dataset, len(users), len(records), args.window, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
