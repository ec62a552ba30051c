"""One logging setup for every service: single-line key=value records an operator can grep.

    ts=2026-01-02T03:04:05.678Z level=INFO service=registry logger=services.registry.servicer
    request_id=4f2a... msg="scenario registered" scenario=promo_sensitivity

Pass structured fields with `extra={...}`; they are appended as key=value. The current gRPC request id (set by
the request-id interceptor) is added automatically. Tracebacks follow on indented lines.
"""
from __future__ import annotations

import contextvars
import logging
import sys
import time
from typing import Any

# Set by services.common.interceptors.RequestIdInterceptor for the duration of one RPC.
request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("qanchor_request_id", default=None)

# Attributes every LogRecord has; anything else on a record came from `extra=` and is rendered as a field.
_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("x", 0, "x", 0, "x", None, None))) | {"message", "asctime"}


def _quote(value: Any) -> str:
    text = str(value)
    if text == "" or any(c in text for c in ' ="\n\t'):
        text = '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return text


class KeyValueFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
        parts = [f"ts={ts}", f"level={record.levelname}", f"service={self.service}", f"logger={record.name}"]
        request_id = getattr(record, "request_id", None) or request_id_var.get()
        if request_id:
            parts.append(f"request_id={_quote(request_id)}")
        parts.append(f"msg={_quote(record.getMessage())}")
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRS and key != "request_id" and not key.startswith("_"):
                parts.append(f"{key}={_quote(value)}")
        line = " ".join(parts)
        if record.exc_info:
            trace = self.formatException(record.exc_info)
            line += "\n" + "\n".join("    " + ln for ln in trace.splitlines())
        return line


def setup_logging(service: str, level: str | int = "INFO") -> None:
    """Route the root logger to stderr in key=value form; idempotent (replaces earlier handlers)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_qanchor", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(KeyValueFormatter(service))
    handler._qanchor = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
