"""`qanchor scenario register|get|list|versions|promote|tune|job|jobs|cancel`: talk to the scenario registry."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from google.protobuf.json_format import MessageToDict

from services.cli.commands._registry_target import add_connection_args, client_from_args
from services.cli.commands._tuning_jobs import add_job_actions
from services.common.errors import InvalidArgument
from services.common.proto.qanchor.v1 import registry_pb2 as pb


def _print(msg: Any) -> None:
    print(json.dumps(MessageToDict(msg, preserving_proto_field_name=True), indent=2, sort_keys=True))


def _register(args: argparse.Namespace) -> int:
    with client_from_args(args) as c:
        _print(c.register_scenario(args.name, args.query, args.description))
    return 0


def _get(args: argparse.Namespace) -> int:
    with client_from_args(args) as c:
        _print(c.get_scenario(args.name))
    return 0


def _list(args: argparse.Namespace) -> int:
    with client_from_args(args) as c:
        scenarios = c.list_scenarios()
    if args.json:
        print(json.dumps([MessageToDict(s, preserving_proto_field_name=True) for s in scenarios], indent=2))
        return 0
    rows = [[s.name, str(s.active_version), str(len(s.versions)), s.query_text] for s in scenarios]
    header = ["name", "active", "versions", "query"]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(3)]
    for row in [header, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(row[:3], widths)) + "  " + row[3])
    return 0


def _versions(args: argparse.Namespace) -> int:
    with client_from_args(args) as c:
        for v in c.list_prompt_versions(args.name):
            _print(v)
    return 0


def _promote(args: argparse.Namespace) -> int:
    with client_from_args(args) as c:
        _print(c.promote(args.name, args.version))
    return 0


def _tune(args: argparse.Namespace) -> int:
    labels = args.labels_opt or args.labels
    if not labels:
        raise InvalidArgument("give the labels file (CSV user_id,label): qanchor scenario tune NAME labels.csv")
    params = dict(kv.split("=", 1) for kv in args.param)
    with client_from_args(args) as c:
        job = c.start_tuning_job(args.name, _labels_uri(labels), args.model_version, params)
        if not args.watch:
            _print(job)
            return 0
        from services.cli.commands._tuning_jobs import watch_job

        print(f"job {job.job_id} queued; watching (Ctrl-C stops watching, not the job)", file=sys.stderr)
        job = watch_job(lambda: c.get_tuning_job(job.job_id))
    _print(job)
    return 0 if job.state == pb.JOB_STATE_SUCCEEDED else 1


def _labels_uri(labels: str) -> str:
    # A local path is sent absolute: the worker resolves it, not this shell's working directory.
    if "://" in labels:
        return labels
    return str(Path(labels).expanduser().resolve())


def _param(text: str) -> str:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--param expects KEY=VALUE, got {text!r}")
    return text


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("scenario", help="register, inspect and promote scenarios in the registry")
    sub = p.add_subparsers(dest="scenario_command", metavar="ACTION", required=True)

    r = sub.add_parser("register", help="register a scenario by its query text (serves zero-shot at once)")
    r.add_argument("name", help="scenario name: [a-z][a-z0-9_-]{1,63}")
    r.add_argument("--query", required=True, help="the natural-language anchor query")
    r.add_argument("--description", default="")
    r.set_defaults(func=_register)

    g = sub.add_parser("get", help="show one scenario with its prompt versions")
    g.add_argument("name")
    g.set_defaults(func=_get)

    ls = sub.add_parser("list", help="list all scenarios")
    ls.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ls.set_defaults(func=_list)

    v = sub.add_parser("versions", help="list a scenario's prompt versions")
    v.add_argument("name")
    v.set_defaults(func=_versions)

    pr = sub.add_parser("promote", help="make a READY prompt version the scenario's active version (admin)")
    pr.add_argument("name")
    pr.add_argument("version", type=int)
    pr.set_defaults(func=_promote)

    t = sub.add_parser("tune", help="queue a soft-prompt tuning job on labelled users (admin)")
    t.add_argument("name")
    t.add_argument("labels", nargs="?", help="CSV of user_id,label (a path the tuning worker can read), or a "
                   "feature snapshot .npz")
    t.add_argument("--labels", dest="labels_opt", help="the same, as an option")
    t.add_argument("--model-version", default="")
    t.add_argument("--param", action="append", default=[], type=_param, help="KEY=VALUE tuning parameter")
    t.add_argument("--watch", action="store_true", help="follow the job with a progress bar until it ends")
    t.set_defaults(func=_tune)

    for action in (r, g, ls, v, pr, t):
        add_connection_args(action)
    add_job_actions(sub, add_connection_args)
