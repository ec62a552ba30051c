"""Settings of the event-log service (env prefix EVENTLOG_), built once in `__main__` and passed in.

The same words as ingest's settings for the same things (`kafka_bootstrap`, `topic`, `group_id`, `metrics_port`,
`resolved_*()`). What counts as a valid record is ingest's business: the limits come from ingest's own INGEST_MAX_*
variables (services/eventlog/service.py), so the log skips exactly what ingest dead-letters.
"""
from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import SettingsConfigDict

from services.common.settings import ServiceSettings
from services.ingest.schema import EVENTS_TOPIC

# The variable Feast's definitions (feature_repo/definitions.py) and training read too (defined with the log layout).
from training.data.event_log import EVENT_LOG_DIR_ENV  # noqa: E402,F401  (re-exported)


def default_log_root(state_dir: Path) -> Path:
    return Path(state_dir) / "eventlog"


class EventLogSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="EVENTLOG_", extra="ignore", frozen=True, validate_by_name=True,
                                      validate_by_alias=True)

    # Kafka bootstrap servers; None = the local stack's broker (127.0.0.1:QANCHOR_PORT_BASE+92).
    kafka_bootstrap: str | None = None
    topic: str = EVENTS_TOPIC
    # Its own group, so the log never holds back ingest (and ingest never holds back the log).
    group_id: str = "qanchor-eventlog"
    # Stable member id for static membership (e.g. the pod name); None = dynamic membership.
    group_instance_id: str | None = None
    # Records per poll; a flush may span several polls.
    max_poll_records: int = 1000
    # How long one poll waits for data; also how quickly an idle consumer notices SIGTERM or a due time flush.
    poll_timeout_ms: int = 500
    max_poll_interval_ms: int = 120_000
    session_timeout_ms: int = 10_000
    # Bounds one offset commit and leaving the group at a stop (as ingest's INGEST_GROUP_TIMEOUT_MS): past it the
    # flush counts as not committed and the partition's next owner rewrites the same segments.
    group_timeout_ms: int = Field(default=10_000, ge=100)
    # "earliest": a new group logs the topic's whole retention (a week by default) on its first start.
    auto_offset_reset: str = "earliest"
    # Root of the Parquet log (date=YYYY-MM-DD/ folders); None = $QANCHOR_STATE_DIR/eventlog.
    root: Path | None = Field(default=None, validation_alias=AliasChoices(
        "EVENTLOG_ROOT", EVENT_LOG_DIR_ENV, "root"))
    # Flush (write segments, then commit) once this many records are buffered: bigger files, more to replay.
    flush_records: int = Field(default=5000, ge=1)
    # ... or once the oldest buffered record waited this long: the log's freshness bound.
    flush_interval_s: float = Field(default=10.0, gt=0)
    # Failed attempts of one flush (disk full, permission) before the process exits non-zero, uncommitted.
    max_flush_attempts: int = Field(default=5, ge=1)
    retry_backoff_s: float = Field(default=2.0, ge=0)
    # sources.yaml (known sources, tabular width); None = the repository's feature_repo/sources.yaml.
    sources_yaml: Path | None = None
    # Prometheus /metrics and /healthz port; None = QANCHOR_PORT_BASE+63, 0 = do not serve them.
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    # /healthz answers 503 once the poll loop has not turned for this long.
    liveness_timeout_s: float = Field(default=300.0, gt=0)
    lag_refresh_s: float = Field(default=5.0, gt=0)
    # Compaction (services/eventlog/compact.py): a pass every this many seconds over the partitions this member
    # owns, merging a day's small files into `-c` files; 0 = off (run `qanchor events compact` instead).
    compact_interval_s: float = Field(default=3600.0, ge=0)
    # Files younger than this are left alone (a replay may still rewrite them by name).
    compact_min_age_s: float = Field(default=3600.0, ge=0)
    # Rows per merged file at most; a file this big is left as it is.
    compact_target_rows: int = Field(default=200_000, ge=2)
    # What merging one run may take in memory (estimated from the files' footers); keep it well under the pod's limit.
    compact_memory_mib: float = Field(default=256.0, gt=0)
    # Test/drill hook (services/ingest/gate.py): gates "flush" and "commit" per flush number; None = off.
    batch_gate: Path | None = None

    def resolved_kafka_bootstrap(self) -> str:
        return self.kafka_bootstrap or f"127.0.0.1:{self.port('kafka')}"

    def resolved_root(self) -> Path:
        return self.root or default_log_root(self.state_dir)

    def resolved_metrics_port(self) -> int:
        return self.port("eventlog_metrics") if self.metrics_port is None else self.metrics_port
