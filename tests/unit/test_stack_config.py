"""Pure logic of the stack manager: settings, port layout, rendered configs, Triton command and environment."""
from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

from services.common.settings import repo_root
from services.stack.components import COMMON_HINTS, Redis, StackError
from services.stack.kafka import (Kafka, load_topics, min_heap, new_cluster_id, render_server_properties)
from services.stack.settings import COMPONENTS, Endpoints, StackSettings, resolve_components
from services.stack.triton import ModelEnv, render_triton_command, repository_has_models, triton_env


@pytest.fixture
def settings(tmp_path: Path) -> StackSettings:
    return StackSettings(state_dir=tmp_path / "state", port_base=21000, cache_dir=tmp_path / "cache")


def parse_properties(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))


def test_ports_follow_the_contract_offsets(settings: StackSettings) -> None:
    ep = Endpoints.from_settings(settings)
    assert ep.kafka_bootstrap == "127.0.0.1:21092"
    assert ep.redis_url == "redis://127.0.0.1:21079/0"
    assert ep.triton_http == "127.0.0.1:21000"
    assert ep.triton_grpc == "127.0.0.1:21001"
    assert ep.triton_metrics_url == "http://127.0.0.1:21002/metrics"
    assert ep.model_repository == (settings.state_dir / "model_repository").resolve()
    assert ep.feast_config is None


def test_settings_read_stack_wide_variables(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("QANCHOR_STATE_DIR", str(tmp_path / "s"))
    monkeypatch.setenv("QANCHOR_PORT_BASE", "23000")
    monkeypatch.setenv("QANCHOR_CACHE_DIR", str(tmp_path / "c"))
    monkeypatch.setenv("QANCHOR_ONLINE_STORE", "redis")
    monkeypatch.setenv("QANCHOR_STACK_KAFKA_HEAP", "1g")
    s = StackSettings()
    assert (s.layout.root, s.port("kafka"), s.online_store, s.kafka_heap) == (tmp_path / "s", 23092, "redis", "1g")
    assert s.kafka_home == tmp_path / "c" / "kafka-4.1.1"


def test_online_store_is_validated() -> None:
    with pytest.raises(ValueError):
        StackSettings(online_store="cassandra")


def test_state_layout(settings: StackSettings) -> None:
    lay = settings.layout
    assert lay.log_file("kafka") == lay.root / "logs" / "kafka.log"
    assert lay.pid_file("redis") == lay.root / "run" / "redis.json"
    assert lay.component_dir("triton") == lay.root / "triton"


@pytest.mark.parametrize(
    ("names", "store", "expected"),
    [
        (None, "sqlite", list(COMPONENTS)),
        (["feast", "kafka"], "sqlite", ["kafka", "feast"]),
        (["feast"], "redis", ["redis", "feast"]),  # the redis online store needs Redis running
        (["triton", "redis"], "redis", ["redis", "triton"]),
        (["eventlog"], "sqlite", ["kafka", "feast", "eventlog"]),  # no Triton: the log encodes nothing
    ],
)
def test_resolve_components_orders_and_adds_dependencies(names, store, expected) -> None:
    assert resolve_components(names, store) == expected


def test_resolve_components_names_the_valid_choices() -> None:
    with pytest.raises(ValueError, match="unknown component.*zookeeper.*choose from: kafka, redis"):
        resolve_components(["kafka", "zookeeper"])


def test_server_properties_single_node_kraft(settings: StackSettings, tmp_path: Path) -> None:
    props = parse_properties(render_server_properties(settings, tmp_path / "data"))
    assert props["process.roles"] == "broker,controller"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:21093"
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:21092,CONTROLLER://127.0.0.1:21093"
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:21092"
    assert props["log.dirs"] == str(tmp_path / "data")
    assert props["num.partitions"] == "4"
    assert props["group.initial.rebalance.delay.ms"] == "0"
    # Every internal topic must fit on one broker.
    for key in ("offsets.topic.replication.factor", "transaction.state.log.replication.factor",
                "transaction.state.log.min.isr", "share.coordinator.state.topic.replication.factor"):
        assert props[key] == "1", key


def test_project_topics_config() -> None:
    topics = {t.name: t for t in load_topics()}
    assert topics["qanchor.events.v1"].partitions == 4
    assert "qanchor.events.dlq.v1" in topics
    assert all(t.replication == 1 for t in topics.values())
    assert all(isinstance(v, str) for t in topics.values() for v in t.configs.values())


def test_cluster_id_is_16_random_bytes() -> None:
    ids = {new_cluster_id() for _ in range(5)}
    assert len(ids) == 5
    for cid in ids:
        assert len(base64.urlsafe_b64decode(cid + "==")) == 16 and "=" not in cid


def test_cluster_id_never_starts_with_a_dash(monkeypatch: pytest.MonkeyPatch) -> None:
    """An id like "-VVnm..." after `-t` reads as an option and the storage format fails (1 in 64 fresh stacks)."""
    import uuid

    draws = iter([uuid.UUID(bytes=b"\xf8" + bytes(15)), uuid.UUID(bytes=b"\x10" + bytes(15))])
    monkeypatch.setattr(uuid, "uuid4", lambda: next(draws))
    assert base64.urlsafe_b64encode(b"\xf8" + bytes(15)).decode().startswith("-")
    assert new_cluster_id() == base64.urlsafe_b64encode(b"\x10" + bytes(15)).decode().rstrip("=")


@pytest.mark.parametrize(("heap", "xms"), [("512m", "64m"), ("2g", "64m"), ("32m", "32m"), ("weird", "64m")])
def test_min_heap_never_exceeds_max(heap: str, xms: str) -> None:
    assert min_heap(heap) == xms


def test_kafka_command_uses_cached_jars_and_heap(settings: StackSettings) -> None:
    kafka = Kafka(settings.model_copy(update={"java": "/bin/sh"}))
    cmd = kafka.command()
    assert cmd[0] == "/bin/sh" and "-Xmx512m" in cmd
    assert cmd[cmd.index("-cp") + 1] == str(settings.kafka_home / "libs" / "*")
    assert cmd[-2:] == ["kafka.Kafka", str(settings.layout.root / "kafka" / "server.properties")]


def test_missing_java_says_how_to_install(settings: StackSettings) -> None:
    kafka = Kafka(settings.model_copy(update={"java": "no-such-java-binary"}))
    with pytest.raises(StackError, match="no-such-java-binary not found") as info:
        kafka.command()
    assert "scripts/setup_env.sh" in info.value.hint


def test_redis_command_private_port_no_persistence(settings: StackSettings) -> None:
    cmd = Redis(settings.model_copy(update={"redis_server": "/bin/sh"})).command()
    args = dict(zip(cmd[1::2], cmd[2::2]))
    assert args["--port"] == "21079" and args["--bind"] == "127.0.0.1"
    assert args["--daemonize"] == "no" and args["--save"] == "" and args["--appendonly"] == "no"
    assert args["--logfile"] == str(settings.layout.log_file("redis"))


def test_redis_persistence_opt_in(settings: StackSettings) -> None:
    cmd = Redis(settings.model_copy(update={"redis_server": "/bin/sh", "redis_persist": True})).command()
    assert dict(zip(cmd[1::2], cmd[2::2]))["--appendonly"] == "yes"


def _model_env(root: Path) -> ModelEnv:
    return ModelEnv(libdir=root / "pylib", pytriton_dir=root / "venv-model" / "site" / "pytriton",
                    python_version="3.11", numpy="1.26.4", prefix=root / "venv-model")


def test_triton_command_explicit_mode_and_loopback(settings: StackSettings, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    env = _model_env(tmp_path)
    cmd = render_triton_command(settings, env, tmp_path / "backends", repo, tmp_path / "t.log")
    assert cmd[0] == str(env.tritonserver)
    assert "--model-control-mode=explicit" in cmd
    assert {"--http-port=21000", "--grpc-port=21001", "--metrics-port=21002", "--grpc-address=127.0.0.1"} <= set(cmd)
    assert not any(a.startswith("--load-model") for a in cmd)  # empty repository: nothing to load
    (repo / "m" / "1").mkdir(parents=True)
    (repo / "m" / "config.pbtxt").write_text('backend: "python"')
    assert repository_has_models(repo)
    assert "--load-model=*" in render_triton_command(settings, env, tmp_path / "b", repo, tmp_path / "t.log")


def test_triton_env_keeps_services_env_off_the_path(tmp_path: Path) -> None:
    env = _model_env(tmp_path)
    services = tmp_path / "venv-services"
    base = {"PATH": os.pathsep.join([str(services / "bin"), "/usr/bin"]), "PYTHONPATH": str(services / "lib"),
            "VIRTUAL_ENV": str(services), "LD_LIBRARY_PATH": "/opt/lib", "HOME": "/home/x"}
    out = triton_env(env, base, services_prefix=services)
    path = out["PATH"].split(os.pathsep)
    assert path[0] == str(env.prefix / "bin") and str(services / "bin") not in path and "/usr/bin" in path
    # the caller's PYTHONPATH (services env) is dropped; only this checkout's root is on it, so the Python backend
    # imports this clone's `training` even when the shared cached venv's editable install points at another clone
    assert out["PYTHONPATH"] == str(repo_root()) and out["VIRTUAL_ENV"] == str(env.prefix)
    assert out["LD_LIBRARY_PATH"].split(os.pathsep) == [str(env.libdir), str(env.bundled_libs), "/opt/lib"]
    assert out["HOME"] == "/home/x"
    assert env.stub.parts[-2:] == ("3.11", "triton_python_backend_stub")


def test_hints_match_common_failures(settings: StackSettings) -> None:
    kafka = Kafka(settings)
    assert "port in use" in kafka.diagnose(["java.net.BindException: Address already in use"])
    assert "heap" in kafka.diagnose(["java.lang.OutOfMemoryError: Java heap space"])
    assert kafka.diagnose(["nothing to see"]) == kafka.default_hint
    assert "port in use" in Redis(settings).diagnose(["# Warning: Could not create server TCP listening socket"])
    assert all(hint for _, hint in COMMON_HINTS)


def test_stack_error_renders_log_tail_and_hint(tmp_path: Path) -> None:
    err = StackError("kafka", "exited during startup", hint="do X", log_tail=["line 1", "line 2"],
                     log_path=tmp_path / "kafka.log")
    text = str(err)
    assert text.splitlines()[0] == "kafka: exited during startup"
    assert "  line 2" in text and text.splitlines()[-1] == "hint: do X"
    assert str(tmp_path / "kafka.log") in text


def test_kafka_class_data_archive_dumped_once_then_mapped(settings: StackSettings) -> None:
    kafka = Kafka(settings.model_copy(update={"java": "/bin/sh"}))
    first = [a for a in kafka.command() if a.startswith("-XX:") and "Archive" in a]
    assert len(first) == 1 and first[0].startswith("-XX:ArchiveClassesAtExit=")
    pending = Path(first[0].split("=", 1)[1])
    assert pending.parent == settings.kafka_home and pending.name.endswith(".tmp")
    kafka.after_stop()  # the JVM wrote nothing (e.g. it was killed): nothing is published
    assert not kafka.cds_archive("/bin/sh").exists()
    pending.parent.mkdir(parents=True, exist_ok=True)
    pending.write_bytes(b"archive")  # stands in for what the JVM leaves on a clean exit
    kafka.after_stop()  # "java -Xshare:on ... -version" is /bin/sh here, which rejects those flags: discarded
    assert not pending.exists() and not kafka.cds_archive("/bin/sh").exists()
    pending.write_bytes(b"archive")
    Kafka(settings.model_copy(update={"java": "/bin/true"})).after_stop()  # wrong java: other key, untouched
    assert pending.exists()
    kafka.cds_archive("/bin/sh").write_bytes(b"archive")
    assert f"-XX:SharedArchiveFile={kafka.cds_archive('/bin/sh')}" in kafka.command()
    assert kafka.stop_timeout_s(first) > kafka.stop_timeout_s(kafka.command()) == settings.stop_timeout_s
    off = Kafka(settings.model_copy(update={"java": "/bin/sh", "kafka_cds": False}))
    assert not any("Archive" in a for a in off.command())
