"""Command line of the local stack: `python -m services.stack up|down|status|logs`, or `qanchor stack ...`.

`add_parser(subparsers)` mounts the same commands under another CLI; the mounted parser sets
`func(args) -> int` as its default, so a dispatcher runs `sys.exit(args.func(args))`.
"""
from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import asdict

from services.cli.output import add_json_flag, format_table, print_json
from services.stack.components import StackError
from services.stack.settings import ALL_COMPONENTS, KNOWN_COMPONENTS, OPTIONAL_COMPONENTS, StackSettings
from services.stack.stack import UP, Stack

log = logging.getLogger(__name__)


def cmd_up(stack: Stack, args: argparse.Namespace) -> int:
    try:
        # No names = everything: infrastructure, models, then the application services.
        results = stack.up(args.components or list(ALL_COMPONENTS), timeout_s=args.timeout)
    except StackError as exc:
        print(exc.render(), file=sys.stderr)
        return 1
    ep = stack.endpoints()
    apps = {r.component: stack.components[r.component].address() for r in results
            if r.component in ("registry", "ingest", "eventlog", "gateway", "tuning", "kube")}
    if args.json:
        print_json({"results": [asdict(r) for r in results],
                    "endpoints": {k: str(v) if v is not None else None for k, v in asdict(ep).items()} | apps})
        return 0
    print(format_table([[r.component, r.outcome, f"{r.seconds:.1f}s"] for r in results],
                       ["component", "result", "took"]))
    print(f"\nkafka bootstrap  {ep.kafka_bootstrap}\nredis            {ep.redis_url}\n"
          f"triton grpc      {ep.triton_grpc}\ntriton http      {ep.triton_http}\n"
          f"feast config     {ep.feast_config or '-'}\nstate dir        {ep.state_dir}")
    for name, address in apps.items():
        print(f"{name:<17}{address}")
    return 0


def cmd_down(stack: Stack, args: argparse.Namespace) -> int:
    try:
        outcomes = stack.down(args.components or None)
    except StackError as exc:
        print(exc.render(), file=sys.stderr)
        return 1
    if args.json:
        print_json(outcomes)
    else:
        print(format_table([[name, how] for name, how in outcomes.items()], ["component", "result"]))
    return 0


def cmd_status(stack: Stack, args: argparse.Namespace) -> int:
    statuses = stack.status(args.components or list(ALL_COMPONENTS))
    if args.json:
        print_json([asdict(s) for s in statuses])
    else:
        rows = [[s.component, s.state, str(s.pid or "-"), s.address, s.detail] for s in statuses]
        print(format_table(rows, ["component", "state", "pid", "address", "detail"]))
    # Non-zero when anything is not up, so scripts can `status || up`.
    return 0 if all(s.state == UP for s in statuses) else 3


def cmd_logs(stack: Stack, args: argparse.Namespace) -> int:
    lines = stack.logs(args.component, args.lines)
    if not lines:
        print(f"no log yet for {args.component} at {stack.layout.log_file(args.component)}", file=sys.stderr)
        return 1
    print("\n".join(lines))
    return 0


COMMANDS = {"up": cmd_up, "down": cmd_down, "status": cmd_status, "logs": cmd_logs}


def _configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="stack_command", required=True, metavar="{up,down,status,logs}")
    choices_help = (f"components (default: all): {' '.join(ALL_COMPONENTS)}; "
                    f"only when named: {' '.join(OPTIONAL_COMPONENTS)}")
    p_up = sub.add_parser("up", help="start components and wait until healthy (idempotent)")
    p_up.add_argument("components", nargs="*", metavar="COMPONENT", help=choices_help)
    p_up.add_argument("--timeout", type=float, default=None, help="seconds to wait per component for health")
    p_down = sub.add_parser("down", help="stop components; verifies their ports are closed")
    p_down.add_argument("components", nargs="*", metavar="COMPONENT", help=choices_help)
    p_status = sub.add_parser("status", help="table of component/state/pid/address; exit 3 if any is not up")
    p_status.add_argument("components", nargs="*", metavar="COMPONENT", help=choices_help)
    for p in (p_up, p_down, p_status):
        add_json_flag(p)
    p_logs = sub.add_parser("logs", help="tail one component's log")
    p_logs.add_argument("component", choices=KNOWN_COMPONENTS)
    p_logs.add_argument("-n", "--lines", type=int, default=50, help="number of lines (default 50)")
    parser.set_defaults(func=run)


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Mount `stack up|down|status|logs` on another CLI's subparsers (e.g. `qanchor stack ...`)."""
    parser = subparsers.add_parser("stack", help="local Kafka/Redis/Triton/Feast stack",
                                   description="Start, check and stop the local stack (docs/stack.md).")
    _configure(parser)
    return parser


def run(args: argparse.Namespace, settings: StackSettings | None = None) -> int:
    """Execute parsed `stack` arguments; settings are built from the environment unless given."""
    from services.common.logging import setup_logging

    settings = settings or StackSettings()
    setup_logging("stack", settings.log_level)
    # kafka-python logs every connection at INFO: noise around the stack's own lines.
    logging.getLogger("kafka").setLevel(logging.WARNING)
    try:
        return COMMANDS[args.stack_command](Stack(settings), args)
    except ValueError as exc:  # unknown component names: argparse-style usage error
        print(f"error: {exc}", file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.stack",
                                     description="Start, check and stop the local stack (docs/stack.md).")
    _configure(parser)
    args = parser.parse_args(argv)
    return run(args)
