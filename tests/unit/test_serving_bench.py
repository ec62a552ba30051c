"""Serving benchmark plumbing: the gateway's stage histogram scraped over a window -> quantiles (pure logic)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("grpc")
pytest.importorskip("feast")

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "serving" / "bench_gateway.py"


def _load():
    spec = importlib.util.spec_from_file_location("bench_gateway", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def test_histogram_quantile_counts_only_the_window_and_interpolates_like_prometheus() -> None:
    bench = _load()
    inf = float("inf")
    before = [(0.001, 10.0), (0.005, 10.0), (0.01, 10.0), (inf, 10.0)]  # 10 older observations, all <= 1 ms
    # window: 100 new observations: 50 in (0, 1 ms], 49 in (1, 5 ms], 1 in (5, 10 ms]
    after = [(0.001, 60.0), (0.005, 109.0), (0.01, 110.0), (inf, 110.0)]
    assert bench.histogram_quantile(0.5, before, after) == pytest.approx(1.0)  # rank 50 = top of the first bucket
    # rank 99 of 100: 49 past the first bucket's 50, inside (1, 5] ms holding 49 -> its upper edge
    assert bench.histogram_quantile(0.99, before, after) == pytest.approx(5.0)
    assert bench.histogram_quantile(0.995, before, after) == pytest.approx(7.5)  # half-way into (5, 10] ms
    assert bench.histogram_quantile(0.5, after, after) != bench.histogram_quantile(0.5, after, after)  # empty: nan


def test_stage_buckets_parses_both_label_orders(monkeypatch) -> None:
    bench = _load()
    text = ('qanchor_gateway_stage_seconds_bucket{le="0.005",stage="overhead"} 3.0\n'
            'qanchor_gateway_stage_seconds_bucket{stage="overhead",le="+Inf"} 4.0\n'
            'qanchor_gateway_stage_seconds_bucket{le="0.005",stage="model"} 1.0\n')

    class _Resp:
        def read(self) -> bytes:
            return text.encode()

    import urllib.request
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: _Resp())
    got = bench.stage_buckets("http://x/metrics")
    assert got["overhead"] == [(0.005, 3.0), (float("inf"), 4.0)] and got["model"] == [(0.005, 1.0)]
