"""Prometheus metrics of the tuning worker, served on /metrics (TUNING_METRICS_HOST:TUNING_METRICS_PORT).

    qanchor_tuning_jobs{state}                         jobs in the registry per state (read on each scrape)
    qanchor_tuning_registry_up                         1 when that read worked
    qanchor_tuning_jobs_finished_total{outcome}        jobs this worker ended: succeeded, failed, cancelled, skipped
    qanchor_tuning_job_duration_seconds{outcome}       wall time of those jobs (histogram)
    qanchor_tuning_jobs_running                        jobs running in this worker now
    qanchor_tuning_job_progress{job_id}                progress (0..1) of the jobs running in this worker
"""
from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from services.registry.domain import JobState

log = logging.getLogger(__name__)

OUTCOMES = ("succeeded", "failed", "cancelled", "skipped")
# Seconds: a few-step CPU job takes ~10 s, a GPU job on many users up to the 4 h limit.
DURATION_BUCKETS = (5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400)


class RegistryJobsCollector(Collector):
    """Jobs by state from the registry database, on each scrape (one GROUP BY; every state, zeros included)."""

    def __init__(self, repo_factory: Any) -> None:
        self.repo_factory = repo_factory

    def collect(self) -> Iterator[GaugeMetricFamily]:
        jobs = GaugeMetricFamily("qanchor_tuning_jobs", "Tuning jobs in the registry by state", labels=["state"])
        up = GaugeMetricFamily("qanchor_tuning_registry_up", "1 when the registry database answered the last scrape")
        try:
            counts = self.repo_factory().count_tuning_jobs()
        except Exception as exc:  # noqa: BLE001 - a scrape must not fail because the database is down
            log.warning("cannot count tuning jobs for /metrics", extra={"error": str(exc)[:200]})
            up.add_metric([], 0.0)
            yield up
            return
        for state in JobState:
            jobs.add_metric([state.value], float(counts.get(state, 0)))
        up.add_metric([], 1.0)
        yield jobs
        yield up


class WorkerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.finished = Counter("qanchor_tuning_jobs_finished", "Tuning jobs this worker ended, by outcome",
                                ["outcome"], registry=self.registry)
        self.duration = Histogram("qanchor_tuning_job_duration_seconds", "Wall time of tuning jobs, by outcome",
                                  ["outcome"], buckets=DURATION_BUCKETS, registry=self.registry)
        self.running = Gauge("qanchor_tuning_jobs_running", "Tuning jobs running in this worker",
                             registry=self.registry)
        self.progress = Gauge("qanchor_tuning_job_progress", "Progress (0..1) of running tuning jobs", ["job_id"],
                              registry=self.registry)
        for outcome in OUTCOMES:  # present from the start, so rate() works before the first job ends
            self.finished.labels(outcome)
            self.duration.labels(outcome)

    def watch_registry(self, repo_factory: Any) -> None:
        self.registry.register(RegistryJobsCollector(repo_factory))

    def started(self, job_id: str) -> None:
        self.running.inc()
        self.progress.labels(job_id).set(0.0)

    def ended(self, job_id: str, outcome: str, seconds: float) -> None:
        self.running.dec()
        try:
            self.progress.remove(job_id)
        except KeyError:
            pass
        self.finished.labels(outcome).inc()
        self.duration.labels(outcome).observe(seconds)

    def serve(self, host: str, port: int) -> None:
        start_http_server(port, addr=host, registry=self.registry)
        log.info("tuning metrics served", extra={"url": f"http://{host}:{port}/metrics"})


METRICS = WorkerMetrics()
