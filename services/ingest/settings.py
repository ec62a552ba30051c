"""Settings of the ingest service (env prefix INGEST_), built once in `__main__` and passed in.

The same words as the gateway's settings for the same things (`triton_url`, `triton_model`, `feast_location`,
`metrics_port`, `resolved_*()`); the older names INGEST_FEAST_CONFIG and INGEST_ENCODER_MODEL still work.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field
from pydantic_settings import SettingsConfigDict

from services.common.settings import ServiceSettings
from services.ingest.schema import DLQ_TOPIC, EVENTS_TOPIC


class IngestSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="INGEST_", extra="ignore", frozen=True, validate_by_name=True,
                                      validate_by_alias=True)

    # Kafka bootstrap servers; None = the local stack's broker (127.0.0.1:QANCHOR_PORT_BASE+92).
    kafka_bootstrap: str | None = None
    topic: str = EVENTS_TOPIC
    dlq_topic: str = DLQ_TOPIC
    # Consumer group: every replica with the same group splits the partitions (scale-out = start another one).
    group_id: str = "qanchor-ingest"
    # Stable member id for static membership (e.g. the pod name): a restart inside session_timeout_ms keeps its
    # partitions without a rebalance. None = dynamic membership.
    group_instance_id: str | None = None
    # Records per poll: bigger batches amortise Feast reads/writes and encoder calls; smaller ones cut latency.
    max_poll_records: int = 500
    # How long one poll waits for data; also how quickly an idle consumer notices SIGTERM.
    poll_timeout_ms: int = 200
    # A revoke must be followed by an assign (possibly empty) once the rejoin completes. kafka-python 3.0.x was
    # seen to revoke a fresh member's partitions and never finish the rejoin (it then consumes nothing, forever);
    # after this many seconds the member unsubscribes and subscribes again. 0 disables the watchdog.
    rejoin_timeout_s: float = 30.0
    # Kafka evicts a member whose batch takes longer; the consumer also refuses to write a batch past this
    # (minus a margin), so an evicted zombie never overwrites what the partition's new owner wrote.
    max_poll_interval_ms: int = 120_000
    session_timeout_ms: int = 10_000
    # Bounds one offset commit and leaving the group at a stop: past it the batch counts as not committed (the
    # partition's next owner replays it, a no-op thanks to the stored positions) and a stop goes on.
    group_timeout_ms: int = Field(default=10_000, ge=100)
    # Where a new group starts: "earliest" replays the topic's retention, "latest" only new events.
    auto_offset_reset: str = "earliest"
    # Triton gRPC address ("host:port"); None = the local stack's Triton (QANCHOR_PORT_BASE+1).
    triton_url: str | None = None
    # Name of the text-encoder model in Triton's repository.
    triton_model: str = Field(default="text_encoder", validation_alias=AliasChoices(
        "INGEST_TRITON_MODEL", "INGEST_ENCODER_MODEL", "triton_model"))
    encoder_max_batch: int = 256
    # Distinct texts cached (text -> 384 float16 ~ 0.8 KB each): 100k ~ 80 MB.
    encoder_cache_size: int = 100_000
    # L2 text-vector cache shared by all consumers (Redis URL); None = the local stack's Redis, "" = off.
    vector_cache_url: str | None = None
    # Names the encoder weights + tokenisation in the L2 cache key: change it when either changes.
    encoder_id: str = "all-MiniLM-L6-v2/ml64"
    # L2 entries expire after this long unused-or-not (bounds Redis memory: ~0.9 KB per distinct text).
    vector_cache_ttl_s: int = Field(default=30 * 86400, ge=1)
    # Users whose last written row is kept per owned partition to skip the store read (~55 KB each with the
    # default sources.yaml, K=64 in all); 0 = always read the store.
    user_state_size: int = Field(default=10_000, ge=0)
    # feature_store.yaml or a state dir holding feast/feature_store.yaml; None = QANCHOR_STATE_DIR.
    feast_location: Path | None = Field(default=None, validation_alias=AliasChoices(
        "INGEST_FEAST_LOCATION", "INGEST_FEAST_CONFIG", "feast_location"))
    # sources.yaml with K and window per source; None = the repository's feature_repo/sources.yaml.
    sources_yaml: Path | None = None
    # The served model's normalisation constants (normalisation.json, exported beside the model); None or a missing
    # file = `tabular` is not derived from events (left empty: the model's cold start), said once in the log.
    normalisation: Path | None = None
    # Prometheus /metrics and /healthz port; None = QANCHOR_PORT_BASE+61, 0 = do not serve them.
    metrics_port: int | None = None
    # Interface of that port; 0.0.0.0 in containers, so Kubernetes probes and Prometheus reach it on the pod IP.
    metrics_host: str = "127.0.0.1"
    # /healthz answers 503 once the poll loop has not turned for this long (a wedged worker, not a slow batch:
    # keep it above max_poll_interval_ms), so the orchestrator restarts it.
    liveness_timeout_s: float = Field(default=300.0, gt=0)
    # Seconds between refreshes of the consumer-lag gauge (end offset minus committed offset, per owned partition).
    lag_refresh_s: float = Field(default=5.0, gt=0)
    # Seconds to back off after a failed batch (Triton or the store down) before replaying it.
    retry_backoff_s: float = 2.0
    # Consecutive failed attempts of one batch before the process exits non-zero (let the supervisor restart it).
    max_batch_attempts: int = Field(default=30, ge=1)
    # Attempts of a batch whose rejected records cannot be written to the DLQ before their partitions are stopped
    # (paused, `qanchor_ingest_partition_stopped` = 1) while the other partitions go on.
    dlq_attempts: int = Field(default=3, ge=1)
    # Limits on one record (a record beyond them goes to the DLQ with its reason; docs/ingest.md).
    max_record_bytes: int = Field(default=64 * 1024, ge=1024)
    max_json_depth: int = Field(default=4, ge=2)
    max_text_chars: int = Field(default=2000, ge=1)
    # Seconds an event's ts may run ahead of its record's Kafka time before it is rejected (ts_in_future).
    max_future_skew_s: float = Field(default=300.0, ge=0)
    # Event ids remembered per user (with their event times) to apply a producer's re-sent event or replayed history
    # (same event_id, new offset) once; an unknown id older than a forgotten one is dead-lettered.
    recent_event_ids: int = Field(default=256, ge=1)
    # Warm prefixes on feature change (services/ingest/warm.py): after a user's features are written, their prefix
    # is computed on the `qanchor` replica the gateway routes them to, so the next request hits the cache. The
    # model servers, as the gateway's GATEWAY_TRITON_URL lists them (comma separated host:port; with
    # warm_discovery=dns each is a headless Service re-resolved); None = off.
    warm_triton_url: str | None = None
    warm_discovery: Literal["static", "dns"] = "static"
    warm_model: str = "qanchor"
    # The gateway's A/B routing file (GATEWAY_AB_CONFIG, watched for changes like the gateway does): each user is
    # warmed under every model version their requests may be routed to. None = the server's default version only.
    warm_ab_config: Path | None = None
    # Warm-ups per second at most (a replay must not become a storm of prefix computations), users waiting at most
    # (more are dropped and counted), and when to give way: a warm-up slower than warm_busy_s or failing pauses
    # warming for warm_cooldown_s.
    warm_rate_per_s: float = Field(default=20.0, gt=0)
    warm_max_pending: int = Field(default=256, ge=1)
    warm_busy_s: float = Field(default=2.0, gt=0)
    warm_cooldown_s: float = Field(default=10.0, ge=0)
    # Test/drill hook (services/ingest/gate.py): a directory of gate files the worker waits on; None = off.
    batch_gate: Path | None = None

    def resolved_kafka_bootstrap(self) -> str:
        return self.kafka_bootstrap or f"127.0.0.1:{self.port('kafka')}"

    def resolved_triton_url(self) -> str:
        return self.triton_url or f"127.0.0.1:{self.port('triton_grpc')}"

    def resolved_vector_cache_url(self) -> str:
        if self.vector_cache_url is None:
            return f"redis://127.0.0.1:{self.port('redis')}/0"
        return self.vector_cache_url

    def resolved_feast_location(self) -> Path:
        return self.feast_location or Path(self.state_dir) / "feast" / "feature_store.yaml"

    def resolved_metrics_port(self) -> int:
        return self.port("ingest_metrics") if self.metrics_port is None else self.metrics_port
