"""Scenario labels as the files a team brings: one labels CSV per scenario and a scenarios file that names them.

    python benchmarks/quality/labels_files.py --dataset ml-100k --user-prefix ml100k- --out var/own-labels \
        --scenarios training/data/scenarios.yaml benchmarks/quality/scenarios_unseen.yaml
    python benchmarks/quality/labels_files.py --dataset offline --as-of 2026-06-01 --out var/log-labels \
        --scenarios my-future-scenarios.yaml

writes `OUT/<scenario>.csv` (header `user_id,label`: the file `qanchor scenario tune` reads, the user named as the
events were sent, `--user-prefix` + the dataset's user id) for every user the scenario's label function defines,
and `OUT/scenarios.yaml` (each scenario's name and query, `label: given` pointing at its file) per --scenarios file
(`scenarios.yaml`, then `scenarios_2.yaml`, ...). With the dataset's users replayed into the stack (served.py
events / `qanchor events produce`), `run.py --dataset offline --scenarios OUT/scenarios.yaml` measures the event
log the way a team measures its own (docs/own-data.md); the future-window labels are about what came after the
replayed history, as a team's labels are about what came after its log's cut.

`--dataset offline` labels the platform's event log with the future label functions (the events at or after
--as-of; docs/own-data.md section 7): the files `qanchor scenario tune` takes, for labels the log already holds.
"""
from __future__ import annotations

import argparse
import csv
import logging
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from training.data.scenarios import load_scenarios  # noqa: E402
from training.data.world import WorldConfig, build_world  # noqa: E402

log = logging.getLogger("benchmarks.quality.labels_files")


def write_files(world, scenario_files: list[Path], prefix: str, out: Path) -> list[Path]:
    """The labels CSVs and one `given` scenarios file per input file; -> the scenarios files written."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for n, path in enumerate(scenario_files, start=1):
        entries = []
        for s in load_scenarios(path):
            users, labels = s.labels(world, world.users())
            with (out / f"{s.name}.csv").open("w", newline="") as f:
                w = csv.writer(f)
                w.writerow(["user_id", "label"])
                w.writerows((prefix + str(world.user_id(int(u))), int(y)) for u, y in zip(users, labels))
            entries.append({"name": s.name, "query": s.query, "label": "given", "params": {"file": f"{s.name}.csv"}})
            log.info("labels_written scenario=%s users=%d positive=%d", s.name, len(labels), int(labels.sum()))
        target = out / ("scenarios.yaml" if n == 1 else f"scenarios_{n}.yaml")
        target.write_text(f"# {path.name}'s scenarios, labelled from {world.cfg.dataset} (labels_files.py)\n"
                          + yaml.safe_dump({"scenarios": entries}, sort_keys=False, allow_unicode=True))
        written.append(target)
    return written


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="ml-100k", choices=["ml-1m", "ml-100k", "offline"],
                   help="a MovieLens dataset, or `offline`: the event log (--log-root, --as-of)")
    p.add_argument("--log-root", default=None, help="offline: the event log folder (default: the local stack's)")
    p.add_argument("--as-of", default=None, metavar="TIME",
                   help="offline: label each user from the events at or after TIME (unix seconds or ISO time)")
    p.add_argument("--scenarios", nargs="+", type=Path, default=[Path("training/data/scenarios.yaml")],
                   help="scenario files whose labels to write (each gets its own `given` scenarios file)")
    p.add_argument("--user-prefix", default="", help="what the replay put before each user id (served.py events)")
    p.add_argument("--out", type=Path, required=True, help="folder for the CSVs and scenarios files")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if args.dataset == "offline":  # the harness's own reading of the log: the same users, cut and refusals
        from benchmarks.quality.run import log_world

        scenarios = [s for path in args.scenarios for s in load_scenarios(path)]
        world = log_world(args, WorldConfig.split_fracs, scenarios)
    else:
        world = build_world(WorldConfig(dataset=args.dataset))
    for path in write_files(world, args.scenarios, args.user_prefix, args.out):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
