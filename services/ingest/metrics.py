"""Prometheus metrics of the ingest service (one registry per consumer, so tests can run several)."""
from __future__ import annotations

import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# Ingest latency: the record's Kafka time -> features servable; the goal is p99 <= 2 s, so resolve 50 ms .. 60 s
# finely, and keep coarse buckets up to 30 min so a lagging consumer still shows how far behind it is.
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
                   1800.0, float("inf"))
# Event-time lag: the event's own `ts` -> servable. Live traffic reads like the latency; a replay of history
# reads the events' age, so the buckets run on to hours, days and years.
EVENT_LAG_BUCKETS = LATENCY_BUCKETS[:-1] + (3600.0, 6 * 3600.0, 86400.0, 7 * 86400.0, 30 * 86400.0,
                                            365 * 86400.0, float("inf"))
STAGE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, float("inf"))


@dataclass
class IngestMetrics:
    registry: CollectorRegistry
    events: Counter
    dlq: Counter
    lag: Gauge
    latency: Histogram
    event_lag: Histogram
    stage_seconds: Histogram
    batch_size: Histogram
    encoder_cache: Counter
    user_state: Counter
    users_written: Counter
    batch_failures: Counter
    partition_stopped: Gauge
    prefix_warms: Counter

    @classmethod
    def create(cls) -> "IngestMetrics":
        r = CollectorRegistry()
        m = cls(
            registry=r,
            events=Counter("qanchor_ingest_events", "events by outcome (applied, duplicate, dlq)", ["outcome"],
                           registry=r),
            dlq=Counter("qanchor_ingest_dlq", "events sent to the DLQ, by reason", ["reason"], registry=r),
            lag=Gauge("qanchor_ingest_consumer_lag", "records not yet servable: the partition's end offset minus "
                      "the group's committed offset (refreshed on a timer)", ["partition"], registry=r),
            latency=Histogram("qanchor_ingest_latency_seconds", "ingest latency: the record's Kafka time (producer "
                              "send) -> features written to the online store", buckets=LATENCY_BUCKETS, registry=r),
            event_lag=Histogram("qanchor_ingest_event_lag_seconds", "event-time lag: the event's ts -> features "
                                "written (a replay of history reads the events' age)", buckets=EVENT_LAG_BUCKETS,
                                registry=r),
            stage_seconds=Histogram("qanchor_ingest_stage_seconds", "time per batch stage", ["stage"],
                                    buckets=STAGE_BUCKETS, registry=r),
            batch_size=Histogram("qanchor_ingest_batch_records", "records per polled batch",
                                 buckets=(1, 10, 50, 100, 250, 500, 1000, 5000, float("inf")), registry=r),
            encoder_cache=Counter("qanchor_ingest_encoder_cache",
                                  "distinct texts by cache result (hit = in-process L1, l2_hit = Redis, miss = "
                                  "encoded)", ["result"], registry=r),
            user_state=Counter("qanchor_ingest_user_state", "batch users served from the consumer's own last "
                               "write (hit) or read from the online store (miss)", ["result"], registry=r),
            users_written=Counter("qanchor_ingest_users_written", "user rows pushed to the online store",
                                  registry=r),
            batch_failures=Counter("qanchor_ingest_batch_failures", "batches replayed after an error", ["error"],
                                   registry=r),
            partition_stopped=Gauge("qanchor_ingest_partition_stopped", "1 while a partition is stopped because "
                                    "its rejected records cannot be written to the DLQ (restart after fixing it)",
                                    ["partition"], registry=r),
            prefix_warms=Counter("qanchor_ingest_prefix_warms", "prefix warm-ups of users whose features changed "
                                 "(sent, failed, dropped: rate limit, full queue or paused under load)", ["outcome"],
                                 registry=r),
        )
        # Every outcome's series exists from the start (at 0), so a consumer that ends before its first batch still
        # reports them and rate()/sum() queries see no gaps.
        for outcome in ("applied", "duplicate", "dlq"):
            m.events.labels(outcome=outcome)
        for outcome in ("sent", "failed", "dropped"):
            m.prefix_warms.labels(outcome=outcome)
        return m

    def serve(self, port: int, host: str = "127.0.0.1", alive: Callable[[], str | None] | None = None) -> None:
        serve_metrics(self.registry, port, host, alive, thread_name="ingest-metrics")


def serve_metrics(registry: CollectorRegistry, port: int, host: str = "127.0.0.1",
                  alive: Callable[[], str | None] | None = None, thread_name: str = "metrics") -> None:
    """/metrics, and /healthz: 200 while `alive()` returns None (the poll loop turns), else 503 with the
    reason. One thread; a probe never waits on the worker. Shared by the Kafka consumers (ingest, eventlog)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            if self.path.startswith("/healthz"):
                problem = alive() if alive is not None else None
                body, code, kind = (problem or "ok").encode(), 503 if problem else 200, "text/plain"
            elif self.path.startswith("/metrics") or self.path == "/":
                body, code, kind = generate_latest(registry), 200, CONTENT_TYPE_LATEST
            else:
                body, code, kind = b"not found: try /metrics or /healthz", 404, "text/plain"
            self.send_response(code)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:  # probes every few seconds: not worth a log line
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, name=thread_name, daemon=True).start()


def read_metrics(url: str, timeout_s: float = 5.0) -> dict[str, float]:
    """What `serve_metrics` serves, read back: every sample line of the Prometheus text at `url`, keyed as written
    (`name{label="value"}`), e.g. `qanchor_ingest_events_total{outcome="applied"}`. Raises OSError (URLError) when
    the endpoint does not answer. For tests, benchmarks and the demo; Prometheus itself scrapes in production."""
    import urllib.request

    text = urllib.request.urlopen(url, timeout=timeout_s).read().decode()
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines() if line and not line.startswith("#")}


def event_outcomes(samples: dict[str, float]) -> dict[str, float]:
    """Ingest's event counters out of `read_metrics`' samples: {"applied", "duplicate", "dlq": events so far, and
    "dlq:<reason>"} (each of the two counters has one label)."""
    out: dict[str, float] = {}
    for key, value in samples.items():
        name, _, label = key.partition("{")
        if name == "qanchor_ingest_events_total":
            out[label.split('"')[1]] = value
        elif name == "qanchor_ingest_dlq_total":
            out["dlq:" + label.split('"')[1]] = value
    return out
