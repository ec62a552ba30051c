"""`qanchor events`: placeholder; the owning team replaces this file with the real command."""
from __future__ import annotations

import argparse
import sys


def _run(args: argparse.Namespace) -> int:
    print("qanchor events: not implemented yet in this build", file=sys.stderr)
    return 2


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("events", help="(not implemented yet)")
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=_run)
