"""What every `qanchor` command shares about output: `--json` (one JSON document on stdout), plain-text rows, and
errors that are one line with the next step (`CliError`, raised by commands and printed by services.cli.__main__).
"""
from __future__ import annotations

import argparse
import json
import socket
from typing import Any, Sequence

from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message


class CliError(Exception):
    """A failure the user can fix; the message is one line and says what to do next. Exit status 1."""


def add_json_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print one JSON document instead of text")


def as_dict(msg: Message) -> dict[str, Any]:
    return MessageToDict(msg, preserving_proto_field_name=True)


def print_json(doc: Any) -> None:
    print(json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False))


def format_table(rows: Sequence[Sequence[object]], header: Sequence[str]) -> str:
    """Left-aligned columns; the last column is not padded (it may hold long text)."""
    cells = [[str(c) for c in row] for row in [header, *rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r[:-1], widths)) + "  " * (len(r) > 1) + r[-1]
                     for r in cells)


def require_reachable(bootstrap: str, what: str = "Kafka", timeout_s: float = 3.0) -> None:
    """Fail fast (one line) when no `host:port` of a comma list accepts a TCP connection, instead of letting a
    client library retry and log for half a minute."""
    errors = []
    for hostport in [h.strip() for h in bootstrap.split(",") if h.strip()]:
        host, _, port = hostport.rpartition(":")
        try:
            with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout_s):
                return
        except (OSError, ValueError) as exc:
            errors.append(f"{hostport}: {exc.strerror if isinstance(exc, OSError) and exc.strerror else exc}")
    raise CliError(f"{what} at {bootstrap} is not reachable ({'; '.join(errors) or 'no address'}); start the local "
                   "stack (`qanchor stack up`) or pass --bootstrap HOST:PORT (env QANCHOR_KAFKA_BOOTSTRAP)")
