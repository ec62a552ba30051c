"""Tuning-job actions of `qanchor scenario`: job (with --watch), jobs (list), cancel.

    qanchor scenario job JOB_ID [--watch]        one job; --watch: a progress bar until SUCCEEDED/FAILED/CANCELLED
    qanchor scenario jobs [--scenario NAME] [--state S ...] [--limit N] [--json]
    qanchor scenario cancel JOB_ID [--reason TEXT]   (admin)

`--watch` exits 0 when the job SUCCEEDED, 1 when it FAILED or was CANCELLED; Ctrl-C stops watching (the job goes
on: watch again, or cancel it).
"""
from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import Any

from services.cli.output import as_dict, format_table, print_json
from services.common.proto.qanchor.v1 import registry_pb2 as pb

STATES = ("QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED")
TERMINAL = (pb.JOB_STATE_SUCCEEDED, pb.JOB_STATE_FAILED, pb.JOB_STATE_CANCELLED)


def state_name(value: int) -> str:
    return pb.JobState.Name(value).removeprefix("JOB_STATE_")


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
    with args.make_client(args) as c:
        if not args.watch:
            args.show_job(c.get_tuning_job(args.job_id), args)
            return 0
        try:
            job = watch_job(lambda: c.get_tuning_job(args.job_id), args.interval)
        except KeyboardInterrupt:
            print(f"stopped watching; the job goes on: qanchor scenario job {args.job_id} --watch "
                  f"(or cancel it: qanchor scenario cancel {args.job_id})", file=sys.stderr)
            return 130
    args.show_job(job, args)
    if job.state != pb.JOB_STATE_SUCCEEDED:
        print(f"job {state_name(job.state)}: {job.message}", file=sys.stderr)
        return 1
    return 0


def _jobs(args: argparse.Namespace) -> int:
    states = [pb.JobState.Value(f"JOB_STATE_{s}") for s in args.state]
    with args.make_client(args) as c:
        jobs = c.list_tuning_jobs(args.scenario or "", states, limit=args.limit)
    if args.json:
        print_json([as_dict(j) for j in jobs])
        return 0
    rows = [[j.job_id, j.scenario, state_name(j.state), f"{100 * j.progress:.0f}%", str(j.prompt_version or "-"),
             j.updated_at.ToDatetime().strftime("%Y-%m-%d %H:%M:%S"), j.message[:70]] for j in jobs]
    print(format_table(rows, ["job_id", "scenario", "state", "progress", "version", "updated", "message"]))
    return 0


def _cancel(args: argparse.Namespace) -> int:
    with args.make_client(args) as c:
        args.show_job(c.cancel_tuning_job(args.job_id, args.reason), args)
    return 0


def add_job_actions(sub: argparse._SubParsersAction, add_connection_args: Callable[[Any], None],
                    make_client: Callable[[argparse.Namespace], Any],
                    show_job: Callable[[pb.TuningJob, argparse.Namespace], None]) -> None:
    """`job`, `jobs` and `cancel` under `sub`; `make_client(args)` opens the registry client, `show_job` prints a
    job as the other scenario actions do (text, or JSON with --json)."""
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
    ls.set_defaults(func=_jobs)

    c = sub.add_parser("cancel", help="cancel a queued or running tuning job (admin)")
    c.add_argument("job_id")
    c.add_argument("--reason", default="", help="written to the job's message")
    c.set_defaults(func=_cancel)

    for action in (j, ls, c):
        action.set_defaults(make_client=make_client, show_job=show_job)
        add_connection_args(action)
