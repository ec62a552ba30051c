"""Ingest's health port: configurable interface, /metrics, and a /healthz that proves the poll loop turns."""
from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request

import pytest

pytest.importorskip("prometheus_client", reason="services env only")

from services.ingest.consumer import IngestWorker
from services.ingest.metrics import IngestMetrics
from services.ingest.settings import IngestSettings


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_healthz_follows_the_loop_and_metrics_are_served() -> None:
    problem: list[str | None] = [None]
    port = _port()
    IngestMetrics.create().serve(port, "127.0.0.1", alive=lambda: problem[0])
    assert _get(f"http://127.0.0.1:{port}/healthz") == (200, "ok")
    assert "qanchor_ingest_consumer_lag" in _get(f"http://127.0.0.1:{port}/metrics")[1]
    problem[0] = "no poll or batch attempt for 301 s (limit 300 s)"
    assert _get(f"http://127.0.0.1:{port}/healthz") == (503, problem[0])


def test_a_worker_is_stalled_only_when_its_loop_stops() -> None:
    w = IngestWorker.__new__(IngestWorker)  # only the liveness bookkeeping is exercised
    w.last_progress = time.monotonic()
    assert w.stalled(300) is None
    w.last_progress -= 301
    assert "no poll" in (w.stalled(300) or "")


def test_metrics_host_is_a_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INGEST_METRICS_HOST", "0.0.0.0")
    assert IngestSettings().metrics_host == "0.0.0.0"
