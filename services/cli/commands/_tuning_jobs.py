"""Tuning-job actions of `qanchor scenario`: job (with --watch), jobs (list), cancel.

    qanchor scenario job JOB_ID [--watch]        one job; --watch: a progress bar until SUCCEEDED/FAILED/CANCELLED
    qanchor scenario jobs [--scenario NAME] [--state S ...] [--limit N] [--json]
    qanchor scenario cancel JOB_ID [--reason TEXT]   (admin)

`--watch` exits 0 when the job SUCCEEDED, 1 when it FAILED or was CANCELLED; Ctrl-C stops watching (the job goes
on: watch again, or cancel it).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import Any

from google.protobuf.json_format import MessageToDict

from services.cli.commands._registry_target import client_from_args
from services.common.proto.qanchor.v1 import registry_pb2 as pb

STATES = ("QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED")
TERMINAL = (pb.JOB_STATE_SUCCEEDED, pb.JOB_STATE_FAILED, pb.JOB_STATE_CANCELLED)


def state_name(value: int) -> str:
    return pb.JobState.Name(value).removeprefix("JOB_STATE_")


def _json(msg: Any) -> dict[str, Any]:
    return MessageToDict(msg, preserving_proto_field_name=True)


def watch_job(get: Callable[[], pb.TuningJob], interval_s: float = 1.0, out: Any = None,
              sleep: Callable[[float], None] = time.sleep) -> pb.TuningJob:
    """Poll `get` and draw a progress bar (stderr) until the job reaches a terminal state; return that job."""
    from tqdm import tqdm

    out = out or sys.stderr
    job = get()
    shown = None
    with tqdm(total=100, file=out, unit="%", bar_format="{desc} |{bar}| {n:.0f}% {postfix}",
              dynamic_ncols=True) as bar:
        while True:
            now = (job.state, round(100 * job.progress, 1), job.message[:60])
            if now != shown:  # redraw on change only: a log file or pipe gets one line per change, not per poll
                bar.set_description_str(f"{job.scenario} {state_name(job.state):<9}", refresh=False)
                bar.set_postfix_str(now[2], refresh=False)
                bar.n = now[1]
                bar.refresh()
                shown = now
            if job.state in TERMINAL:
                return job
            sleep(interval_s)
            job = get()


def _job(args: argparse.Namespace) -> int:
    with client_from_args(args) as c:
        if not args.watch:
            print(json.dumps(_json(c.get_tuning_job(args.job_id)), indent=2, sort_keys=True))
            return 0
        try:
            job = watch_job(lambda: c.get_tuning_job(args.job_id), args.interval)
        except KeyboardInterrupt:
            print(f"stopped watching; the job goes on: qanchor scenario job {args.job_id} --watch "
                  f"(or cancel it: qanchor scenario cancel {args.job_id})", file=sys.stderr)
            return 130
    print(json.dumps(_json(job), indent=2, sort_keys=True))
    if job.state != pb.JOB_STATE_SUCCEEDED:
        print(f"job {state_name(job.state)}: {job.message}", file=sys.stderr)
        return 1
    return 0


def _jobs(args: argparse.Namespace) -> int:
    states = [pb.JobState.Value(f"JOB_STATE_{s}") for s in args.state]
    with client_from_args(args) as c:
        jobs = c.list_tuning_jobs(args.scenario or "", states, limit=args.limit)
    if args.json:
        print(json.dumps([_json(j) for j in jobs], indent=2, sort_keys=True))
        return 0
    header = ["job_id", "scenario", "state", "progress", "version", "updated", "message"]
    rows = [[j.job_id, j.scenario, state_name(j.state), f"{100 * j.progress:.0f}%", str(j.prompt_version or "-"),
             j.updated_at.ToDatetime().strftime("%Y-%m-%d %H:%M:%S"), j.message[:70]] for j in jobs]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]
    for row in [header, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[-1])
    return 0


def _cancel(args: argparse.Namespace) -> int:
    with client_from_args(args) as c:
        print(json.dumps(_json(c.cancel_tuning_job(args.job_id, args.reason)), indent=2, sort_keys=True))
    return 0


def add_job_actions(sub: argparse._SubParsersAction, add_connection_args: Callable[[Any], None]) -> None:
    j = sub.add_parser("job", help="show a tuning job; --watch follows it with a progress bar until it ends")
    j.add_argument("job_id")
    j.add_argument("--watch", action="store_true", help="poll until SUCCEEDED/FAILED/CANCELLED (exit 0 = succeeded)")
    j.add_argument("--interval", type=float, default=1.0, help="seconds between polls with --watch (default 1)")
    j.set_defaults(func=_job)

    ls = sub.add_parser("jobs", help="list tuning jobs, newest first")
    ls.add_argument("--scenario", help="only this scenario's jobs")
    ls.add_argument("--state", action="append", default=[], choices=STATES, help="only jobs in this state "
                    "(repeatable)")
    ls.add_argument("--limit", type=int, default=50, help="at most this many (0 = all; default 50)")
    ls.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ls.set_defaults(func=_jobs)

    c = sub.add_parser("cancel", help="cancel a queued or running tuning job (admin)")
    c.add_argument("job_id")
    c.add_argument("--reason", default="", help="written to the job's message")
    c.set_defaults(func=_cancel)

    for action in (j, ls, c):
        add_connection_args(action)
