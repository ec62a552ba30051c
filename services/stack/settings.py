"""Settings, state-dir layout and endpoints of the local stack (Kafka, Redis, Triton, Feast).

Ports come from the shared layout in `services.common.settings.PORT_OFFSETS` (docs/contracts.md), so a stack
started with `QANCHOR_PORT_BASE=21000` and a gateway configured with the same base find each other.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field
from pydantic_settings import SettingsConfigDict

from services.common.settings import ServiceSettings, repo_root

# Start order; `down` goes in reverse. Feast is a step (feast apply), not a process.
# COMPONENTS is the infrastructure: what `Stack.up()` with no names starts (the integration-test fixture).
COMPONENTS: tuple[str, ...] = ("kafka", "redis", "triton", "feast")
# The application (services/stack/apps.py): the models step, then the services; after the infrastructure.
# `tuning` is the Celery tuning worker (model env) the registry hands StartTuningJob to, through Redis; `eventlog`
# writes the offline event log (Parquet behind Feast's `event_log` FileSource) from its own consumer group.
APP_COMPONENTS: tuple[str, ...] = ("models", "registry", "ingest", "eventlog", "gateway", "tuning")
# What `qanchor stack up` with no names starts, and `down` with no names stops (apps first).
ALL_COMPONENTS: tuple[str, ...] = COMPONENTS + APP_COMPONENTS
# Started only when named (`qanchor stack up kube`): a Kubernetes control plane without nodes for the
# Kubernetes job backend (services/stack/kube.py, docs/jobs.md). `down` with no names stops them too.
OPTIONAL_COMPONENTS: tuple[str, ...] = ("etcd", "kube")
KNOWN_COMPONENTS: tuple[str, ...] = COMPONENTS + OPTIONAL_COMPONENTS + APP_COMPONENTS
PROCESS_COMPONENTS: tuple[str, ...] = ("kafka", "redis", "triton", "etcd", "kube", "registry", "ingest", "eventlog",
                                       "gateway", "tuning")
APP_PROCESSES: tuple[str, ...] = ("registry", "ingest", "eventlog", "gateway", "tuning")
# What each component needs running first; `resolve_components` adds these.
DEPENDS: dict[str, tuple[str, ...]] = {
    "kube": ("etcd",),
    "models": ("triton",),
    "registry": ("redis",),  # the Celery broker StartTuningJob publishes to
    "ingest": ("kafka", "feast", "models"),
    "eventlog": ("kafka", "feast"),  # feast: the FileSource over the log is applied with the rest
    "gateway": ("feast", "models", "registry"),
    "tuning": ("redis", "feast", "models", "registry"),
}

# Bump together with <kafka.version> in scripts/kafka/pom.xml; the JAR cache folder is keyed by it.
KAFKA_VERSION = "4.1.1"


def _default_cache_dir() -> Path:
    return Path(os.environ.get("HOME", "~")).expanduser() / ".cache" / "qanchor"


class StackSettings(ServiceSettings):
    """Everything `python -m services.stack` needs; built once in `__main__` (or by a test fixture)."""

    # validate_by_name: tests and the bench build StackSettings(state_dir=..., port_base=...) directly.
    model_config = SettingsConfigDict(
        env_prefix="QANCHOR_STACK_", extra="ignore", frozen=True, validate_by_name=True, validate_by_alias=True
    )

    # Downloads shared by every clone and state dir (Kafka JARs); same variable as scripts/setup_env.sh.
    cache_dir: Path = Field(default_factory=_default_cache_dir, validation_alias=AliasChoices("QANCHOR_CACHE_DIR"))
    # Feast online store: sqlite needs nothing running; redis reuses the stack's Redis (and so starts it).
    online_store: Literal["sqlite", "redis"] = Field(
        default="sqlite", validation_alias=AliasChoices("QANCHOR_ONLINE_STORE")
    )
    # Interface every component binds; loopback keeps a dev stack private to the machine.
    host: str = "127.0.0.1"
    # Executables; overridable for machines where they are not on PATH.
    java: str = "java"
    mvn: str = "mvn"
    redis_server: str = "redis-server"
    # Interpreter of the model env: Triton's Python backend must run with numpy<2 (numpy 2 returns empty outputs).
    model_python: Path = Field(
        default_factory=lambda: repo_root() / ".venv-model" / "bin" / "python",
        validation_alias=AliasChoices("QANCHOR_MODEL_PYTHON"),
    )
    # Broker heap: a single-node dev broker idles at ~250 MB; 512m leaves room for test bursts.
    kafka_heap: str = "512m"
    # C1-only JIT and serial GC cut JVM startup on 2 cores by seconds; peak throughput is not a goal here.
    kafka_jvm_opts: str = "-XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Xshare:auto -Djava.awt.headless=true"
    # AppCDS: dump the broker's classes once into the JAR cache, map them on later starts (faster start-up).
    kafka_cds: bool = True
    # Default topic partitions; matches qanchor.events.v1 so auto-created topics behave alike.
    kafka_partitions: int = 4
    # Redis persistence: off by default, the dev Redis is a cache/broker; set to keep data across restarts.
    redis_persist: bool = False
    # Seconds to wait for a component to turn healthy before printing its log tail and giving up.
    start_timeout_s: float = 120.0
    # Seconds a process gets after SIGTERM before SIGKILL; Triton drains models in ~3 s, Kafka in ~2 s.
    stop_timeout_s: float = 20.0
    # Triton gives in-flight requests this long on SIGTERM; must stay below stop_timeout_s.
    triton_exit_timeout_s: int = 10

    # Interpreter of the services env, which runs the registry, ingest and gateway processes.
    services_python: Path = Field(default_factory=lambda: repo_root() / ".venv" / "bin" / "python")
    # The gateway's A/B routing file (docs/ab.md); None = $QANCHOR_STATE_DIR/ab.yaml, copied from the repository's
    # config/ab.yaml at the first start, so experiments on a local stack (the demo's among them) never edit a
    # tracked file.
    ab_config: Path | None = None
    # Trained checkpoint to serve; None = the newest one under <repo>/artifacts, else `model_preset` untrained.
    model_checkpoint: Path | None = None
    # Config preset exported with freshly initialised adapters when no checkpoint exists.
    model_preset: str = "smollm2"
    # Intra-op threads of the Triton model instance (0 = torch default); 2-core machines share them with ingest.
    model_torch_threads: int = 0
    # torch intra-op threads of the tuning worker (0 = torch default); 1 leaves a core to serving on 2 cores.
    tuning_torch_threads: int = 1
    # Seconds the export (SmolLM2: ~1 min on 2 cores) and Triton's model load may take.
    model_export_timeout_s: float = 600.0

    @property
    def layout(self) -> StateLayout:
        return StateLayout(Path(self.state_dir).expanduser().resolve())

    def resolved_ab_config(self) -> Path:
        return Path(self.ab_config) if self.ab_config else self.layout.root / "ab.yaml"

    @property
    def kafka_home(self) -> Path:
        return Path(self.cache_dir).expanduser() / f"kafka-{KAFKA_VERSION}"


@dataclass(frozen=True)
class StateLayout:
    """Where each component keeps its files under QANCHOR_STATE_DIR (see docs/stack.md)."""

    root: Path

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def tokens_file(self) -> Path:
        """Client and admin tokens of this stack (mode 600), created on first `up`."""
        return self.run / "tokens.json"

    @property
    def endpoints_file(self) -> Path:
        """Addresses of this stack's services, written by `up`, read by the CLI to find the stack."""
        return self.run / "endpoints.json"

    @property
    def model_repository(self) -> Path:
        # Fixed by docs/contracts.md: training's exporter writes here, Triton serves it.
        return self.root / "model_repository"

    def log_file(self, component: str) -> Path:
        return self.logs / f"{component}.log"

    def pid_file(self, component: str) -> Path:
        return self.run / f"{component}.json"

    def component_dir(self, component: str) -> Path:
        return self.root / component


@dataclass(frozen=True)
class Endpoints:
    """Addresses clients use; `triton_grpc`/`triton_http` are in tritonclient's `host:port` form."""

    kafka_bootstrap: str
    redis_url: str
    triton_grpc: str
    triton_http: str
    triton_metrics_url: str
    state_dir: Path
    model_repository: Path
    # feature_store.yaml written by the feast step; None until `up feast` succeeded.
    feast_config: Path | None = None

    @classmethod
    def from_settings(cls, settings: StackSettings, feast_config: Path | None = None) -> Endpoints:
        h = settings.host
        return cls(
            kafka_bootstrap=f"{h}:{settings.port('kafka')}",
            redis_url=f"redis://{h}:{settings.port('redis')}/0",
            triton_grpc=f"{h}:{settings.port('triton_grpc')}",
            triton_http=f"{h}:{settings.port('triton_http')}",
            triton_metrics_url=f"http://{h}:{settings.port('triton_metrics')}/metrics",
            state_dir=settings.layout.root,
            model_repository=settings.layout.model_repository,
            feast_config=feast_config,
        )


def resolve_components(names: list[str] | tuple[str, ...] | None, online_store: str = "sqlite") -> list[str]:
    """Validate names, add implied dependencies, return them in start order.

    Feast on the redis online store needs Redis first; an app needs what DEPENDS says. An empty selection means
    the infrastructure (COMPONENTS); pass ALL_COMPONENTS for everything.
    """
    wanted = set(names or COMPONENTS)
    unknown = sorted(wanted - set(KNOWN_COMPONENTS))
    if unknown:
        raise ValueError(f"unknown component(s) {', '.join(unknown)}; choose from: {', '.join(KNOWN_COMPONENTS)}")
    todo = list(wanted)
    while todo:  # transitive: gateway -> models -> triton
        for dep in DEPENDS.get(todo.pop(), ()):
            if dep not in wanted:
                wanted.add(dep)
                todo.append(dep)
    if "feast" in wanted and online_store == "redis":
        wanted.add("redis")
    return [c for c in KNOWN_COMPONENTS if c in wanted]
