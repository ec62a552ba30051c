"""`qanchor ab check|assign`: the A/B routing file offline (no servers needed, docs/ab.md).

    qanchor ab check  --config config/ab.yaml
    qanchor ab assign --config config/ab.yaml --scenario concert_ads alice bob

`assign` prints `user_id, scenario, arm, prompt_version, model_version, bucket` as tab-separated lines (one JSON
document with --json), exactly what the gateway would assign.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from services.gateway.ab_config import ABConfig, ConfigError, load_config
from services.gateway.routing import assign


def _load(path: str) -> ABConfig | None:
    try:
        return load_config(Path(path).read_text(encoding="utf-8"), path)
    except (OSError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None


def _check(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    if cfg is None:
        return 2
    if args.json:
        print(json.dumps({"ok": True, "salt": cfg.salt, "scenarios": sorted(cfg.scenarios),
                          "default_model": cfg.default.model_version}))
    else:
        print(f"ok: salt={cfg.salt!r} scenarios={len(cfg.scenarios)} default_model={cfg.default.model_version}")
    return 0


def _assign(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    if cfg is None:
        return 2
    rows = [assign(cfg, args.scenario, user) for user in args.users]
    if args.json:
        print(json.dumps([{"user_id": u, "scenario": a.scenario, "arm": a.arm, "prompt_version": a.prompt_version,
                           "model_version": a.model_version, "bucket": a.bucket} for u, a in zip(args.users, rows)]))
        return 0
    print("user_id\tscenario\tarm\tprompt_version\tmodel_version\tbucket")
    for user, a in zip(args.users, rows):
        print(f"{user}\t{a.scenario}\t{a.arm}\t{a.prompt_version}\t{a.model_version}\t{a.bucket}")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("ab", help="check an A/B routing file and show users' arms (offline)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="ab_command", metavar="ACTION", required=True)
    check = sub.add_parser("check", help="validate a config file's structure (weights, names, versions)")
    check.add_argument("--config", required=True, help="the A/B YAML file (e.g. config/ab.yaml)")
    check.add_argument("--json", action="store_true", help="print one JSON document")
    check.set_defaults(func=_check)
    a = sub.add_parser("assign", help="print the arm of each user for a scenario")
    a.add_argument("--config", required=True, help="the A/B YAML file (e.g. config/ab.yaml)")
    a.add_argument("--scenario", "-s", required=True)
    a.add_argument("users", nargs="+", metavar="USER")
    a.add_argument("--json", action="store_true", help="print one JSON document")
    a.set_defaults(func=_assign)
