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
