"""The application side of the local stack: the `models` step and the registry, ingest and gateway processes.

They start after the infrastructure (Kafka, Redis, Triton, Feast) and take every endpoint from the same
`StackSettings`, so `qanchor stack up` with no arguments brings up a working online path:

    models    export the Q-Anchor model + MiniLM text encoder into $QANCHOR_STATE_DIR/model_repository when
              missing or stale (model env), then load them into Triton (explicit model control)
    registry  python -m services.registry   SQLite under $QANCHOR_STATE_DIR/registry, gRPC health probe;
                                            tuning jobs are published to the stack's Redis (db 1)
    ingest    python -m services.ingest     Kafka -> Feast, /metrics probe
    eventlog  python -m services.eventlog   Kafka -> Parquet event log under $QANCHOR_STATE_DIR/eventlog, /healthz
    gateway   python -m services.gateway    config/ab.yaml, gRPC health probe
    tuning    python -m services.tuning     Celery tuning worker (model env) on the same Redis, /metrics probe

Tokens: the registry's admin token and the gateway's client token are generated once per state dir
(`run/tokens.json`, mode 600) and handed to the processes as env vars; `read_tokens` gives them to clients.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from services.common.settings import project_pythonpath, repo_root
from services.stack.components import Component, StackError
from services.stack.settings import StackSettings

log = logging.getLogger(__name__)

REGISTRY_SERVICE = "qanchor.v1.ScenarioRegistry"
GATEWAY_SERVICE = "qanchor.v1.EmbeddingService"
QANCHOR_MODEL, TEXT_ENCODER_MODEL = "qanchor", "text_encoder"
CHECKPOINT_FORMAT = "qanchor-checkpoint/1"  # = training.artifacts.CHECKPOINT_FORMAT (that module needs torch)


# --- tokens ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Tokens:
    admin: str   # registry admin RPCs (RegisterScenario, Promote, StartTuningJob)
    client: str  # gateway and registry read RPCs


def read_tokens(settings: StackSettings) -> Tokens:
    """The state dir's tokens, created on first use (a dev stack needs no secret store, but no open admin API)."""
    path = settings.layout.tokens_file
    try:
        return Tokens(**json.loads(path.read_text()))
    except (FileNotFoundError, ValueError, TypeError):
        pass
    tokens = Tokens(admin=secrets.token_urlsafe(24), client=secrets.token_urlsafe(24))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(asdict(tokens), f)
    return tokens


# --- processes -------------------------------------------------------------------------------------------------
def grpc_serving(target: str, service: str, timeout_s: float = 2.0) -> bool:
    """gRPC health check of `service` at `target`; False on any error (probes must not raise)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    try:
        with grpc.insecure_channel(target) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service),
                                                             timeout=timeout_s)
            return reply.status == health_pb2.HealthCheckResponse.SERVING
    except grpc.RpcError:
        return False


def http_ok(url: str, timeout_s: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


# Not passed on to services: Python path overrides, and the prometheus multiprocess dir that importing Feast sets
# in *our* environment to a temp dir deleted when we exit (the services would then crash on their next metric).
INHERIT_NOT = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PROMETHEUS_MULTIPROCESS_DIR", "PROMETHEUS_MULTIPROC_DIR")


class AppComponent(Component):
    """A qanchor service run from the services env: `python -m services.<name>` with env from the settings."""

    module = ""
    default_hint = "see the full log with `qanchor stack logs {name} -n 200`"

    def __init__(self, settings: StackSettings, feast_config: Path | None = None) -> None:
        super().__init__(settings)
        self.feast_config = feast_config or settings.layout.root / "feast" / "feature_store.yaml"
        self.default_hint = self.default_hint.format(name=self.name)

    def command(self) -> list[str]:
        python = Path(self.settings.services_python)
        if not python.exists():
            raise StackError(self.name, f"services env interpreter {python} does not exist",
                             hint="run scripts/setup_env.sh services")
        return [str(python), "-m", self.module]

    def service_env(self) -> dict[str, str]:
        """Variables this service reads (its own prefix); the common ones are added by `env`."""
        return {}

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in INHERIT_NOT}
        env.update(QANCHOR_STATE_DIR=str(self.layout.root), QANCHOR_PORT_BASE=str(self.settings.port_base),
                   HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1",
                   PYTHONPATH=project_pythonpath())
        env.update(self.service_env())
        return env

    def prepare(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)

    def stop_timeout_s(self, record_cmd: list[str]) -> float:
        return self.settings.stop_timeout_s


class Registry(AppComponent):
    name, module = "registry", "services.registry"

    def ports(self) -> list[int]:
        return [self.settings.port("registry_grpc")]

    def address(self) -> str:
        return f"grpc {self.settings.host}:{self.settings.port('registry_grpc')}"

    def service_env(self) -> dict[str, str]:
        tokens = read_tokens(self.settings)
        return {"REGISTRY_HOST": self.settings.host, "REGISTRY_ADMIN_TOKEN": tokens.admin,
                "REGISTRY_TOKEN": tokens.client, "REGISTRY_CELERY_BROKER": tuning_broker(self.settings)}

    def healthy(self) -> bool:
        return grpc_serving(f"{self.settings.host}:{self.settings.port('registry_grpc')}", REGISTRY_SERVICE)


class Ingest(AppComponent):
    name, module = "ingest", "services.ingest"

    def ports(self) -> list[int]:
        return [self.settings.port("ingest_metrics")]

    def address(self) -> str:
        return f"consumer of {self.settings.host}:{self.settings.port('kafka')}, " \
               f"metrics http://{self.settings.host}:{self.settings.port('ingest_metrics')}/metrics"

    def service_env(self) -> dict[str, str]:
        h = self.settings.host
        return {"INGEST_KAFKA_BOOTSTRAP": f"{h}:{self.settings.port('kafka')}",
                "INGEST_TRITON_URL": f"{h}:{self.settings.port('triton_grpc')}",
                "INGEST_FEAST_LOCATION": str(self.feast_config),
                # Written by the models step beside the served model (training.export.qanchor.export_normalisation).
                "INGEST_NORMALISATION": str(self.settings.layout.model_repository / QANCHOR_MODEL
                                            / "normalisation.json")}

    def healthy(self) -> bool:
        # /metrics is served once the worker is built (Triton encoder ready, Feast open, consumer subscribed).
        return http_ok(f"http://{self.settings.host}:{self.settings.port('ingest_metrics')}/metrics")


class EventLog(AppComponent):
    name, module = "eventlog", "services.eventlog"

    def ports(self) -> list[int]:
        return [self.settings.port("eventlog_metrics")]

    def log_root(self) -> Path:
        # The default Feast's `event_log` FileSource was applied with (services.common.feast_store).
        return Path(os.environ.get("QANCHOR_EVENT_LOG_DIR") or self.layout.root / "eventlog")

    def address(self) -> str:
        return f"log {self.log_root()}, metrics http://{self.settings.host}:{self.settings.port('eventlog_metrics')}" \
               "/metrics"

    def service_env(self) -> dict[str, str]:
        return {"EVENTLOG_KAFKA_BOOTSTRAP": f"{self.settings.host}:{self.settings.port('kafka')}",
                "EVENTLOG_ROOT": str(self.log_root())}

    def healthy(self) -> bool:
        # /healthz answers once the consumer is built; 503 if its poll loop stalls.
        return http_ok(f"http://{self.settings.host}:{self.settings.port('eventlog_metrics')}/healthz")


class Gateway(AppComponent):
    name, module = "gateway", "services.gateway"

    def ports(self) -> list[int]:
        return [self.settings.port("gateway_grpc"), self.settings.port("gateway_metrics")]

    def address(self) -> str:
        return f"grpc {self.settings.host}:{self.settings.port('gateway_grpc')}"

    def service_env(self) -> dict[str, str]:
        h, tokens = self.settings.host, read_tokens(self.settings)
        return {"GATEWAY_HOST": h, "GATEWAY_TOKEN": tokens.client, "GATEWAY_REGISTRY_TOKEN": tokens.client,
                "GATEWAY_AB_CONFIG": str(self.settings.resolved_ab_config()),
                "GATEWAY_TRITON_URL": f"{h}:{self.settings.port('triton_grpc')}",
                "GATEWAY_REGISTRY_TARGET": f"{h}:{self.settings.port('registry_grpc')}",
                "GATEWAY_FEAST_LOCATION": str(self.feast_config)}

    def prepare(self) -> None:
        super().prepare()
        ab = self.settings.resolved_ab_config()
        if self.settings.ab_config is None and not ab.exists():
            ab.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(repo_root() / "config" / "ab.yaml", ab)

    def healthy(self) -> bool:
        return grpc_serving(f"{self.settings.host}:{self.settings.port('gateway_grpc')}", GATEWAY_SERVICE)


def tuning_broker(settings: StackSettings) -> str:
    """The Celery broker shared by the registry (producer) and the tuning worker: the stack's Redis, db 1."""
    return f"redis://{settings.host}:{settings.port('redis')}/1"


class TuningWorker(AppComponent):
    """`python -m services.tuning` from the *model* env (torch): consumes the registry's tuning jobs."""

    name, module = "tuning", "services.tuning"
    hints = [(r"No module named 'torch'|numpy", "the model env is missing or broken: run scripts/setup_env.sh model")]

    def command(self) -> list[str]:
        python = Path(self.settings.model_python)
        if not python.exists():
            raise StackError(self.name, f"model env interpreter {python} does not exist",
                             hint="run scripts/setup_env.sh model")
        return [str(python), "-m", self.module]

    def ports(self) -> list[int]:
        return [self.settings.port("tuning_metrics")]

    def address(self) -> str:
        return f"celery worker on {tuning_broker(self.settings)}, " \
               f"metrics http://{self.settings.host}:{self.settings.port('tuning_metrics')}/metrics"

    def service_env(self) -> dict[str, str]:
        return {"TUNING_BROKER_URL": tuning_broker(self.settings),
                "TUNING_FEAST_CONFIG": str(self.feast_config),
                "TUNING_FEATURES_PYTHON": str(self.settings.services_python),
                "TUNING_METRICS_HOST": self.settings.host,
                # Two cores are shared with Triton and ingest: one intra-op thread keeps serving responsive.
                "TUNING_TORCH_THREADS": str(self.settings.tuning_torch_threads)}

    def healthy(self) -> bool:
        # /metrics is served once the worker has imported torch and the model code (worker_init).
        return http_ok(f"http://{self.settings.host}:{self.settings.port('tuning_metrics')}/metrics")


# --- the models step -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelSource:
    """What gets exported: a trained checkpoint, or an untrained preset (fresh adapters)."""

    checkpoint: Path | None
    preset: str
    key: str  # changes whenever the exported bytes would: checkpoint manifest or preset YAML, + exporter code

    @property
    def trained(self) -> bool:
        return self.checkpoint is not None

    def label(self) -> str:
        return f"checkpoint {self.checkpoint}" if self.checkpoint else f"preset {self.preset} (UNTRAINED adapters)"


@dataclass(frozen=True)
class ModelsRecord:
    key: str
    source: str
    trained: bool
    model_version: str
    exported_at: float


def find_checkpoint(root: Path) -> Path | None:
    """Newest training checkpoint (a folder whose manifest.json has the checkpoint format) under `root`."""
    found = []
    for manifest in root.rglob("manifest.json") if root.is_dir() else []:
        try:
            if json.loads(manifest.read_text()).get("format") == CHECKPOINT_FORMAT:
                found.append(manifest)
        except (ValueError, OSError):
            continue
    return max(found, key=lambda m: m.stat().st_mtime).parent if found else None


def _digest(paths: list[Path], extra: str = "") -> str:
    h = hashlib.sha256(extra.encode())
    for p in paths:
        h.update(str(p.name).encode())
        h.update(p.read_bytes() if p.is_file() else b"")
    return h.hexdigest()[:16]


def resolve_model_source(settings: StackSettings) -> ModelSource:
    root = repo_root()
    exporter = sorted((root / "training" / "export").rglob("*.py"))
    checkpoint = settings.model_checkpoint or find_checkpoint(root / "artifacts")
    if checkpoint is not None:
        checkpoint = Path(checkpoint).resolve()
        if not (checkpoint / "manifest.json").is_file():
            raise StackError("models", f"{checkpoint} is not a training checkpoint (no manifest.json)",
                             hint="point QANCHOR_STACK_MODEL_CHECKPOINT at a folder written by "
                                  "training.artifacts.save_checkpoint, or unset it to serve the preset")
        return ModelSource(checkpoint, "", _digest([checkpoint / "manifest.json", *exporter], str(checkpoint)))
    preset_file = root / "training" / "configs" / f"{settings.model_preset}.yaml"
    return ModelSource(None, settings.model_preset, _digest([preset_file, *exporter], settings.model_preset))


class ModelsStep:
    """Export into the model repository when missing or stale, then make Triton serve it. Not a process."""

    name = "models"

    def __init__(self, settings: StackSettings) -> None:
        self.settings = settings
        self.repo = settings.layout.model_repository
        self.record_path = settings.layout.pid_file(self.name)
        self.log_path = settings.layout.log_file(self.name)
        self.triton_grpc = f"{settings.host}:{settings.port('triton_grpc')}"

    def load_record(self) -> ModelsRecord | None:
        try:
            return ModelsRecord(**json.loads(self.record_path.read_text()))
        except (FileNotFoundError, ValueError, TypeError):
            return None

    def exported(self, source: ModelSource) -> bool:
        record = self.load_record()
        return (record is not None and record.key == source.key
                and all((self.repo / m / "config.pbtxt").is_file() for m in (QANCHOR_MODEL, TEXT_ENCODER_MODEL)))

    def ready(self) -> bool:
        base = f"http://{self.settings.host}:{self.settings.port('triton_http')}/v2/models"
        return all(http_ok(f"{base}/{m}/ready") for m in (QANCHOR_MODEL, TEXT_ENCODER_MODEL))

    def up(self) -> tuple[str, ModelsRecord]:
        source = resolve_model_source(self.settings)
        outcome = "unchanged"
        if not self.exported(source):
            self.export(source)
            outcome = "exported"
        record = self.load_record()
        assert record is not None
        if outcome == "exported" or not self.ready():
            self.load()
            outcome += ", loaded"
        return f"{outcome} ({record.model_version}{'' if record.trained else ', untrained'})", record

    def export(self, source: ModelSource) -> None:
        cmd = [str(self.settings.model_python), "-m", "training.export", "--out", str(self.repo), "--only",
               "--text-encoder", "--torch-threads", str(self.settings.model_torch_threads)]
        if source.checkpoint:
            cmd += ["--checkpoint", str(source.checkpoint)]
        else:
            cmd += ["--preset", source.preset, "--model-version", f"{source.preset}-untrained"]
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
        env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", QANCHOR_STATE_DIR=str(self.settings.layout.root),
                   PYTHONPATH=project_pythonpath())
        log.info("models export starting", extra={"source": source.label(), "out": str(self.repo)})
        t0 = time.monotonic()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as out:
            out.write(f"\n===== {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} export: {' '.join(cmd)}\n"
                      .encode())
            out.flush()
            try:
                proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=out, cwd=repo_root(), env=env,
                                      timeout=self.settings.model_export_timeout_s)
            except subprocess.TimeoutExpired:
                raise StackError(self.name, f"export took over {self.settings.model_export_timeout_s:.0f} s",
                                 log_path=self.log_path, hint="raise QANCHOR_STACK_MODEL_EXPORT_TIMEOUT_S on a "
                                 "busy machine") from None
            out.write(proc.stdout)
        lines = proc.stdout.decode(errors="replace").strip().splitlines()
        if proc.returncode != 0 or not lines:
            raise StackError(self.name, f"export failed (exit {proc.returncode}) for {source.label()}",
                             log_path=self.log_path, log_tail=_tail(self.log_path, 20),
                             hint="fix the checkpoint or the model env (scripts/setup_env.sh model); "
                                  "the full output is in the log above")
        version = Path(lines[-1]).name  # the exporter prints REPO/qanchor/1/models/<model version>
        record = ModelsRecord(source.key, source.label(), source.trained, version, time.time())
        self.record_path.parent.mkdir(parents=True, exist_ok=True)
        self.record_path.write_text(json.dumps(asdict(record), indent=1))
        log.info("models exported", extra={"model_version": version, "trained": source.trained,
                                           "seconds": round(time.monotonic() - t0, 1)})

    def load(self) -> None:
        import tritonclient.grpc as tgrpc
        from tritonclient.utils import InferenceServerException

        client = tgrpc.InferenceServerClient(self.triton_grpc)
        try:
            for model in (TEXT_ENCODER_MODEL, QANCHOR_MODEL):
                t0 = time.monotonic()
                # load_model on a loaded model reloads it: the new version list is served once it is ready.
                client.load_model(model, client_timeout=self.settings.model_export_timeout_s)
                log.info("model loaded", extra={"model": model, "seconds": round(time.monotonic() - t0, 1)})
        except InferenceServerException as exc:
            raise StackError(self.name, f"Triton could not load the exported models: {exc}",
                             hint="see `qanchor stack logs triton -n 100`; re-export by deleting "
                                  f"{self.record_path}") from None
        finally:
            client.close()


def _tail(path: Path, n: int) -> list[str]:
    from services.stack.procs import tail

    return tail(path, n)
