"""`qanchor scenario register|get|list|versions|promote|tune|job|jobs|cancel`: talk to the scenario registry.

    qanchor scenario register horror_next "Will this user watch a horror film in the next month?"
    qanchor scenario tune horror_next labels.csv --param steps=200 --watch
    qanchor scenario jobs --scenario horror_next
    qanchor scenario versions horror_next --json

Text by default, one JSON document with --json. The local stack's address and admin token are found on their own
(services/cli/target.py); --registry / --token (or QANCHOR_REGISTRY_TARGET / QANCHOR_REGISTRY_TOKEN) override them.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from services.cli.commands._registry import add_connection_args
from services.cli.commands._registry import enum_name as _enum
from services.cli.commands._registry import registry_client as _client
from services.cli.commands._tuning_jobs import add_job_actions, watch_job
from services.cli.output import CliError, as_dict, format_table, print_json
from services.common.proto.qanchor.v1 import registry_pb2 as pb


def _version_rows(versions: Any) -> list[list[object]]:
    return [[v.version, _enum(v.kind, pb.PromptKind, "PROMPT_KIND_"),
             _enum(v.status, pb.PromptStatus, "PROMPT_STATUS_"),
             v.model_version or "-", " ".join(f"{k}={m:.4f}" for k, m in sorted(v.metrics.items())) or "-"]
            for v in versions]


def _show_scenario(s: pb.Scenario, args: argparse.Namespace, verb: str = "") -> None:
    if args.json:
        print_json(as_dict(s))
        return
    if verb:
        print(f"{verb} scenario {s.name!r}; active version {s.active_version}")
    print(f"name:    {s.name}\nquery:   {s.query_text}\nactive:  v{s.active_version}")
    if s.description:
        print(f"about:   {s.description}")
    print(format_table(_version_rows(s.versions), ["version", "kind", "status", "model", "metrics"]))


def _show_job(job: pb.TuningJob, args: argparse.Namespace) -> None:
    if args.json:
        print_json(as_dict(job))
        return
    state = _enum(job.state, pb.JobState, "JOB_STATE_")
    print(f"job {job.job_id}  scenario {job.scenario}  {state}  {job.progress:.0%}"
          + (f"  -> version {job.prompt_version}" if job.prompt_version else "")
          + (f"\n{job.message}" if job.message else ""))


def _register(args: argparse.Namespace) -> int:
    query = _one_of(args.query_text, args.query, "QUERY", "--query")
    with _client(args) as c:
        _show_scenario(c.register_scenario(args.name, query, args.description), args, verb="registered")
    if not args.json:
        print(f"it serves zero-shot now: qanchor embed USER --scenario {args.name}")
    return 0


def _get(args: argparse.Namespace) -> int:
    with _client(args) as c:
        _show_scenario(c.get_scenario(args.name), args)
    return 0


def _list(args: argparse.Namespace) -> int:
    with _client(args) as c:
        scenarios = c.list_scenarios()
    if args.json:
        print_json([as_dict(s) for s in scenarios])
        return 0
    print(format_table([[s.name, s.active_version, len(s.versions), s.query_text] for s in scenarios],
                       ["name", "active", "versions", "query"]))
    return 0


def _versions(args: argparse.Namespace) -> int:
    with _client(args) as c:
        versions = c.list_prompt_versions(args.name)
    if args.json:
        print_json([as_dict(v) for v in versions])
    else:
        print(format_table(_version_rows(versions), ["version", "kind", "status", "model", "metrics"]))
    return 0


def _promote(args: argparse.Namespace) -> int:
    with _client(args) as c:
        v = c.promote(args.name, args.version)
    if args.json:
        print_json(as_dict(v))
    else:
        print(f"scenario {args.name!r} now serves version {v.version} "
              f"({_enum(v.status, pb.PromptStatus, 'PROMPT_STATUS_')})")
    return 0


def _tune(args: argparse.Namespace) -> int:
    labels = _one_of(args.labels_uri, args.labels, "LABELS", "--labels")
    if "://" not in labels:  # a local path: the worker reads a file:// URI (docs/tuning.md)
        path = Path(labels).expanduser()
        if not path.is_file():
            raise CliError(f"labels file {path} not found; pass a CSV of user_id,label (with as_of: features as "
                           "of each label's time) or a snapshot .npz (or a URI the tuning worker can read)")
        if path.suffix == ".csv":  # checked here, at once, rather than as a FAILED job minutes later
            from services.tuning.dataset import DatasetError, read_labels

            try:
                read_labels(path)
            except DatasetError as exc:
                raise CliError(str(exc)) from None
        labels = path.resolve().as_uri()
    params = dict(kv.split("=", 1) for kv in args.param)
    with _client(args) as c:
        job = c.start_tuning_job(args.name, labels, args.model_version, params)
        if args.watch:
            print(f"job {job.job_id} queued; watching (Ctrl-C stops watching, not the job)", file=sys.stderr)
            job = watch_job(lambda: c.get_tuning_job(job.job_id))
    _show_job(job, args)
    if not args.watch:
        if not args.json:
            print(f"follow it with: qanchor scenario job {job.job_id} --watch")
        return 0
    return 0 if job.state == pb.JOB_STATE_SUCCEEDED else 1


def _one_of(positional: str | None, flag: str | None, name: str, flag_name: str) -> str:
    if positional is not None and flag is not None and positional != flag:
        raise CliError(f"give {name} once: as the argument or as {flag_name}, not both")
    value = positional if positional is not None else flag
    if not value:
        raise CliError(f"{name} is missing; pass it after the scenario name (or as {flag_name})")
    return value


def _param(text: str) -> str:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--param expects KEY=VALUE, got {text!r}")
    return text


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("scenario", help="register, inspect, tune and promote scenarios in the registry",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="scenario_command", metavar="ACTION", required=True)

    r = sub.add_parser("register", help="register a scenario by its query text (serves zero-shot at once)")
    r.add_argument("name", help="scenario name: [a-z][a-z0-9_-]{1,63}")
    r.add_argument("query_text", nargs="?", metavar="QUERY", help="the natural-language anchor query")
    r.add_argument("--query", help="the same, as a flag")
    r.add_argument("--description", default="")
    r.set_defaults(func=_register)

    g = sub.add_parser("get", help="show one scenario with its prompt versions")
    g.add_argument("name")
    g.set_defaults(func=_get)

    ls = sub.add_parser("list", help="list all scenarios")
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
    t.add_argument("labels_uri", nargs="?", metavar="LABELS",
                   help="CSV of user_id,label[,as_of] or a snapshot .npz (docs/tuning.md): a local path or a URI the "
                        "tuning worker can read")
    t.add_argument("--labels", help="the same, as a flag")
    t.add_argument("--model-version", default="")
    t.add_argument("--param", action="append", default=[], type=_param, help="KEY=VALUE tuning parameter")
    t.add_argument("--watch", action="store_true", help="follow the job with a progress bar until it ends "
                   "(exit 0 only when it SUCCEEDED)")
    t.set_defaults(func=_tune)

    for action in (r, g, ls, v, pr, t):
        add_connection_args(action)
    add_job_actions(sub, add_connection_args, _client, _show_job)
