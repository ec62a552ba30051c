"""python -m services.demo.labels --scenario NAME --users N --out labels.csv   (model env: reads MovieLens)

Labels `user_id,label` of one evaluation scenario (training/data/scenarios.yaml) for the first N MovieLens-1M
users, the same users `training.data.export_events --users N` replays: what a product team would hand to
`qanchor scenario tune`. Users whose label is undefined for that scenario are left out.
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m services.demo.labels", description=__doc__.split("\n")[0])
    p.add_argument("--scenario", required=True, help="a name from training/data/scenarios.yaml")
    p.add_argument("--users", type=int, required=True, help="first N MovieLens-1M users (as export_events)")
    p.add_argument("--dataset", default="ml-1m", choices=["ml-1m", "ml-100k"])
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    from training.data.scenarios import load_scenarios
    from training.data.world import WorldConfig, build_world

    by_name = {s.name: s for s in load_scenarios()}
    if args.scenario not in by_name:
        print(f"unknown scenario {args.scenario!r}; choose from {sorted(by_name)}", file=sys.stderr)
        return 2
    world = build_world(WorldConfig(dataset=args.dataset))
    users = world.users(None)[:args.users]
    kept, labels = by_name[args.scenario].labels(world, users)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    with tmp.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["user_id", "label"])
        for u, y in zip(kept, labels):
            w.writerow([world.ml.users[int(u)].user_id, int(y)])
    tmp.replace(args.out)
    print(f"{len(kept)} labelled users ({int(labels.sum())} positive) -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
