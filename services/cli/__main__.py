"""The `qanchor` command.

Subcommands are plug-ins: every module in `services/cli/commands/` with an `add_parser(subparsers)` function is
mounted (sorted by module name); each parser sets `func(args) -> int` as its default. To add a command, add one
file there. `qanchor stack ...` is mounted from `services.stack.cli` when that package is present.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys
from collections.abc import Sequence

from services.cli import commands
from services.cli.output import CliError
from services.common.errors import QAnchorError
from services.common.logging import setup_logging

log = logging.getLogger(__name__)

# Mounted from outside services/cli: (module, what it provides).
EXTERNAL_COMMANDS = {"stack": ("services.stack.cli", "start/stop/inspect the local stack")}


def _unavailable(name: str, help_text: str, reason: str, subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(name, help=f"{help_text} (unavailable: {reason})", add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER)

    def run(_args: argparse.Namespace) -> int:
        print(f"qanchor {name}: not available here: {reason}", file=sys.stderr)
        return 2

    p.set_defaults(func=run)


def _mount(module_name: str, subparsers: argparse._SubParsersAction, name: str, help_text: str) -> None:
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        # A command whose dependencies live in the other environment must not break the rest of the CLI.
        _unavailable(name, help_text, f"cannot import {module_name} ({exc}); run it with the environment "
                     "that has its dependencies (see docs/contracts.md)", subparsers)
        return
    module.add_parser(subparsers)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qanchor", description="Query-as-Anchor user embeddings platform.")
    parser.add_argument("--log-level", default="WARNING", help="logging level for the CLI's own logs")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if not info.name.startswith("_"):
            _mount(f"{commands.__name__}.{info.name}", subparsers, info.name.replace("_", "-"), "")
    for name, (module_name, help_text) in EXTERNAL_COMMANDS.items():
        if name not in subparsers.choices:
            _mount(module_name, subparsers, name, help_text)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging("cli", args.log_level)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(func(args) or 0)
    except QAnchorError as exc:
        print(f"error: {exc.code.name}: {exc.message}{_next_step(exc)}", file=sys.stderr)
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # one line, not a traceback: the traceback goes to the debug log
        log.debug("command failed", exc_info=True)
        print(f"error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}; rerun with "
              "`qanchor --log-level DEBUG ...` for the traceback", file=sys.stderr)
    return 1


def _next_step(exc: QAnchorError) -> str:
    """What to try next, by status code, unless the server's message already says it."""
    hints = {
        "UNAVAILABLE": "`qanchor stack status` shows the local stack; --gateway / --registry (or "
                       "QANCHOR_GATEWAY_TARGET / QANCHOR_REGISTRY_TARGET) name another server",
        "UNAUTHENTICATED": "pass --token (or QANCHOR_GATEWAY_TOKEN / QANCHOR_REGISTRY_TOKEN); the local stack's "
                           "tokens are in $QANCHOR_STATE_DIR/run/tokens.json",
        "PERMISSION_DENIED": "this needs the admin token: pass --token (or QANCHOR_REGISTRY_TOKEN)",
        "DEADLINE_EXCEEDED": "retry with a longer --timeout, or check the server's load",
    }
    hint = hints.get(exc.code.name)
    return f"; {hint}" if hint else ""


if __name__ == "__main__":
    sys.exit(main())
