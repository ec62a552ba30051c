from __future__ import annotations

import logging

import pytest

from services.common.logging import request_id_var, setup_logging


def test_key_value_lines(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("demo", "DEBUG")
    setup_logging("demo", "DEBUG")  # idempotent: one handler, one line per record
    token = request_id_var.set("req-1")
    try:
        logging.getLogger("x.y").info("scenario registered", extra={"scenario": "promo", "note": "two words"})
    finally:
        request_id_var.reset(token)
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1
    line = lines[0]
    assert line.startswith("ts=") and line.endswith('note="two words"')
    for part in ("level=INFO", "service=demo", "logger=x.y", "request_id=req-1", 'msg="scenario registered"',
                 "scenario=promo"):
        assert part in line.split(" ") or part in line


def test_traceback_on_indented_lines(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("demo", "INFO")
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("t").error("failed", exc_info=True)
    logging.getLogger("t").debug("hidden")
    out = capsys.readouterr().err.splitlines()
    assert 'msg=failed' in out[0] and "request_id" not in out[0]
    assert all(ln.startswith("    ") for ln in out[1:]) and any("ValueError: boom" in ln for ln in out[1:])
    assert not any("hidden" in ln for ln in out)


def test_services_log_one_way() -> None:
    """Loggers are named by module (`getLogger(__name__)`) and fields travel in `extra=`, not in the message."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "services"
    # Rewritten together with the Triton tensor-contract module, which owns this file.
    pending = {"gateway/clients/triton.py"}
    problems = []
    for path in sorted(root.rglob("*.py")):
        rel = str(path.relative_to(root))
        if "proto" in path.parts or rel in pending:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                continue
            if (node.func.attr == "getLogger" and node.args and isinstance(node.args[0], ast.Constant)
                    and isinstance(getattr(node.func.value, "id", None), str)
                    and str(node.args[0].value).startswith(("qanchor", "services"))):
                problems.append(f"{rel}:{node.lineno}: getLogger({node.args[0].value!r}); use __name__")
            if (getattr(node.func.value, "id", None) == "log"
                    and node.func.attr in ("debug", "info", "warning", "error", "exception")
                    and len(node.args) > 1):
                problems.append(f"{rel}:{node.lineno}: %-style arguments; pass fields with extra={{...}}")
    assert not problems, "\n".join(problems)
