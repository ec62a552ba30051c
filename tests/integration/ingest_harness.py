"""What the ingest tests (and benchmarks/ingest) share: a context on the real stack, and the calls they make on it.

    from ingest_harness import ctx, event, new_topic, produce, running_consumer, wait_caught_up  # ctx: a fixture

    topic, group = new_topic(ctx), "g-1"
    produce(ctx, topic, [(b"u1", event("u1", 0, time.time()))])
    with running_consumer(ctx, topic, group, "basic") as c:   # `python -m services.ingest`, a real subprocess
        wait_caught_up(ctx, group, topic, [c.proc])
        applied = c.metrics()['qanchor_ingest_events_total{outcome="applied"}']
    # here the consumer was still running at the block's end and exited 0 on SIGTERM, or the test failed

Every test works on its own topic, DLQ topic and consumer group, with user ids unique to it, so tests do not see
each other's data.
"""
from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from services.common.feast_store import get_store
from services.common.features_online import FeatureReader
from services.common.settings import repo_root
from services.ingest.gate import waiting_at
from services.ingest.metrics import read_metrics
from services.ingest.producer import make_producer
from services.ingest.transform import Position, load_ingest_spec
from training.export.text_encoder import export_text_encoder

SPEC = load_ingest_spec()
VOCAB = [f"Rated '{t} ({1960 + i % 40})' [{g}] {1 + i % 5}/5" for i, (t, g) in enumerate(
    (f"Movie {i}", ["Drama", "Comedy", "Action, Thriller", "Animation", "Sci-Fi"][i % 5]) for i in range(90))]


@dataclass
class Ctx:
    bootstrap: str
    triton: str
    feast_config: Path
    tmp: Path
    # Redis of the L2 text-vector cache the consumers share; "" = off.
    redis_url: str = ""


@pytest.fixture(scope="module")
def ctx(stack, tmp_path_factory) -> Ctx:
    import tritonclient.grpc as grpcclient

    export_text_encoder(stack.model_repository)
    client = grpcclient.InferenceServerClient(stack.triton_grpc)
    client.load_model("text_encoder")  # explicit model control; loading torch + weights takes a while on 2 cores
    assert client.is_model_ready("text_encoder")
    return Ctx(stack.kafka_bootstrap, stack.triton_grpc, Path(stack.feast_config),
               tmp_path_factory.mktemp("ingest"), redis_url=stack.redis_url)


def new_topic(ctx: Ctx, partitions: int = 4) -> str:
    from kafka.admin import KafkaAdminClient, NewTopic

    name = f"test.ingest.{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=ctx.bootstrap)
    try:
        admin.create_topics([NewTopic(name, partitions, 1), NewTopic(name + ".dlq", 1, 1)])
    finally:
        admin.close()
    return name


def start_consumer(ctx: Ctx, topic: str, group: str, name: str, feast_config: Path | None = None,
                   max_poll_records: int = 200, gate: Path | None = None,
                   normalisation: Path | None = None,
                   extra_env: dict[str, str] | None = None) -> tuple[subprocess.Popen, Path, int]:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = ctx.tmp / f"{name}.log"
    env = dict(os.environ, INGEST_TOPIC=topic, INGEST_DLQ_TOPIC=topic + ".dlq", INGEST_GROUP_ID=group,
               INGEST_KAFKA_BOOTSTRAP=ctx.bootstrap, INGEST_TRITON_URL=ctx.triton,
               INGEST_FEAST_CONFIG=str(feast_config or ctx.feast_config), INGEST_METRICS_PORT=str(port),
               INGEST_MAX_POLL_RECORDS=str(max_poll_records), INGEST_RETRY_BACKOFF_S="0.5",
               INGEST_SESSION_TIMEOUT_MS="6000", QANCHOR_STATE_DIR=str(ctx.tmp / "state"),
               INGEST_VECTOR_CACHE_URL=ctx.redis_url)
    if gate is not None:  # the batch-cycle hook (services/ingest/gate.py): the test decides where it stops
        env["INGEST_BATCH_GATE"] = str(gate)
    if normalisation is not None:  # the served model's constants: ingest derives `tabular` from raw events
        env["INGEST_NORMALISATION"] = str(normalisation)
    env.update(extra_env or {})
    with log.open("ab") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "services.ingest"], env=env, stdout=fh,
                                stderr=subprocess.STDOUT, cwd=repo_root())
    return proc, log, port


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 60, log: Path | None = None) -> int:
    """Signal the service and wait for its exit code; one that does not exit in time dumps every thread's stack
    into its log (SIGUSR1, services/common/signals.py), is killed, and the test fails with that log's tail."""
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGUSR1)
        time.sleep(3)
        proc.kill()
        proc.wait()
        pytest.fail(f"no exit {timeout:.0f} s after {signal.Signals(sig).name}; the stacks are at the end of the log\n"
                    + (log_tail(log, 80) if log is not None else "(no log)"))


def metrics(port: int) -> dict[str, float]:
    return read_metrics(f"http://127.0.0.1:{port}/metrics")


_ADMINS: dict[str, object] = {}


def committed(ctx: Ctx, group: str, topic: str) -> dict[int, int]:
    from kafka.admin import KafkaAdminClient

    admin = _ADMINS.get(ctx.bootstrap)
    if admin is None:  # one admin connection per broker: these are polled several times a second
        admin = _ADMINS[ctx.bootstrap] = KafkaAdminClient(bootstrap_servers=ctx.bootstrap)
    offs = admin.list_group_offsets(group).get(group, {})
    return {tp.partition: om.offset for tp, om in offs.items() if tp.topic == topic and om.offset >= 0}


def end_offsets(ctx: Ctx, topic: str) -> dict[int, int]:
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(bootstrap_servers=ctx.bootstrap)
    try:
        tps = [TopicPartition(topic, p) for p in c.partitions_for_topic(topic)]
        return {tp.partition: off for tp, off in c.end_offsets(tps).items()}
    finally:
        c.close()


def wait_caught_up(ctx: Ctx, group: str, topic: str, procs: list[subprocess.Popen], timeout: float = 240) -> None:
    end = {p: o for p, o in end_offsets(ctx, topic).items() if o > 0}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = committed(ctx, group, topic)
        if all(got.get(p, 0) >= o for p, o in end.items()):
            return
        for proc in procs:
            assert proc.poll() is None, f"consumer exited with {proc.returncode} before catching up"
        time.sleep(0.5)
    raise AssertionError(f"group {group} did not catch up in {timeout}s: committed {got}, end {end}")


def produce(ctx: Ctx, topic: str, records: list[tuple[bytes | None, bytes]]) -> list[Position]:
    producer = make_producer(ctx.bootstrap)
    try:
        futures = [producer.send(topic, key=k, value=v) for k, v in records]
        producer.flush()
        return [Position(m.partition, m.offset) for m in (f.get(timeout=60) for f in futures)]
    finally:
        producer.close()


def event(uid: str, i: int, ts: float, source: str | None = None, text: str | None = None) -> bytes:
    return json.dumps({"schema_version": 1, "event_id": f"{uid}-{i}", "user_id": uid, "kind": "event",
                       "source": source or SPEC.source_names[i % len(SPEC.source_names)], "ts": ts,
                       "text": text or VOCAB[i % len(VOCAB)]}).encode()


def tabular(uid: str, i: int, ts: float, value: float) -> bytes:
    return json.dumps({"schema_version": 1, "event_id": f"{uid}-t{i}", "user_id": uid, "kind": "tabular",
                       "ts": ts, "vector": [value] * SPEC.features.tabular_dim}).encode()


def reference_vectors(texts: list[str]) -> np.ndarray:
    """all-MiniLM-L6-v2 computed in-process by the model env (torch), not through Triton: the reference."""
    code = ("import json,sys,numpy as np; from training.data.encoder import TextEncoder; "
            "v=TextEncoder().encode(json.load(sys.stdin)); np.save(sys.stdout.buffer, v)")
    proc = subprocess.run([str(repo_root() / ".venv-model" / "bin" / "python"), "-c", code],
                          input=json.dumps(texts).encode(), capture_output=True, cwd=repo_root(),
                          env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    return np.load(io.BytesIO(proc.stdout))


def read_users(feast_config: Path, users: list[str]):
    return {u.user_id: u for u in FeatureReader(get_store(feast_config), SPEC.features).get(users)}


def wait_at_gate(gate: Path, stage: str, batch: int, proc: subprocess.Popen, log: Path, timeout: float = 300) -> None:
    """Until the consumer waits at `stage` of batch `batch` (it cannot get past it before the test opens it)."""
    deadline = time.monotonic() + timeout
    while not waiting_at(gate, stage, batch):
        assert proc.poll() is None, f"consumer exited with {proc.returncode}:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"consumer never reached {stage} of batch {batch}"
        time.sleep(0.05)


def last_assignment(log: Path) -> set[int]:
    """Partitions the consumer owns per its log: its last "assigned" line, or nothing after a later "revoked"."""
    lines = re.findall(r'partitions (assigned|revoked)" partitions=([0-9,]*)', log.read_text())
    if not lines or lines[-1][0] == "revoked":
        return set()
    return {int(p) for p in lines[-1][1].split(",") if p}


def log_tail(log: Path, n: int = 25) -> str:
    return f"--- {log.name} ---\n" + "\n".join(log.read_text(errors="replace").splitlines()[-n:])



@dataclass
class Consumer:
    """A running ingest subprocess: its process, its log file and its Prometheus port."""
    proc: subprocess.Popen
    log: Path
    port: int

    def metrics(self) -> dict[str, float]:
        return metrics(self.port)


@contextmanager
def running_consumer(ctx: Ctx, topic: str, group: str, name: str, **kwargs) -> Iterator[Consumer]:
    """`start_consumer` for the length of a with-block. At the block's end the consumer must still be running
    (ingest never stops on bad input) and must exit 0 on SIGTERM; otherwise the test fails with its log's tail. An
    error inside the block still stops the consumer, and is the error the test reports."""
    proc, log, port = start_consumer(ctx, topic, group, name, **kwargs)
    try:
        yield Consumer(proc, log, port)
        assert proc.poll() is None, f"the consumer stopped with exit code {proc.returncode}\n{log_tail(log, 60)}"
    finally:
        code = stop(proc, log=log)
    assert code == 0, f"the consumer exited with {code} on SIGTERM\n{log_tail(log, 60)}"
