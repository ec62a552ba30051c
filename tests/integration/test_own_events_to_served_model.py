"""Own events to a served model, end to end on the real stack (issue "Your own events, your own cluster").

Raw events (MovieLens-100K users as a producer would send them: no `kind=tabular` record) go to Kafka. Ingest
(a real subprocess) derives the dense statistics vector itself and writes features to Feast; the eventlog service
(a real subprocess, SIGKILLed once between "segments durable" and "offsets committed", then restarted) writes the
Parquet log, which holds each event exactly once and answers point-in-time reads through Feast; the quality harness
reads the log (`run.py --dataset offline`) into the same model inputs the online store serves. A tiny pretraining
run reads that log (`training.pretrain --dataset offline`, model env), its checkpoint is exported, registered and
published with the CLI into the repository the running Triton serves (no restart, no model-control call), and an
A/B arm routes the users to it: the gateway answers with the new version from the features ingest wrote.
"""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import uuid
from pathlib import Path

import numpy as np
import pytest

from ingest_harness import Ctx as IngestCtx
from ingest_harness import committed, new_topic, produce, read_users, start_consumer, stop, wait_at_gate
from ingest_harness import wait_caught_up
from services.cli import __main__ as cli
from services.common.feast_store import apply as feast_apply
from services.common.features import Normalisation, StatsAggregate
from services.common.settings import repo_root
from services.eventlog.history import as_of, read_log
from services.eventlog.segments import SegmentName, segment_files
from services.ingest.encoder import TritonTextEncoder
from services.ingest.gate import open_gate
from services.ingest.transform import load_ingest_spec, load_normalisation
from services.tuning.snapshot import features_before, make_snapshot, make_snapshot_as_of
from test_eventlog import Ctx as LogCtx
from test_eventlog import start_eventlog
from test_gateway_stack import (  # noqa: F401  (world: registry, gateway settings, Triton)
    TOKEN, _ensure_real_model, serve_gateway, world,
)
from training.data.sources import load_feature_spec
from training.export.contract import model_versions, read_model_config

pytestmark = pytest.mark.integration

NEW = "own-events-v1"
ADMIN = "registry-admin"
AB = """
salt: own-events
scenarios:
  promo:
    arms:
      - {{name: own, weight: 100, prompt_version: zero-shot, model_version: {new}}}
"""


def movielens_as_raw_events(n_users: int) -> list[dict]:
    """ML-100K users' whole timelines as event-contract records (training.data.export_events), raw events only."""
    from training.data.export_events import export_records
    from training.data.world import WorldConfig, build_world

    world = build_world(WorldConfig(dataset="ml-100k", max_users=n_users + 10))
    records = export_records(world, world.users()[:n_users], "all")
    assert records and all(r["kind"] == "event" for r in records)
    return records


# `run.py --dataset offline`'s model inputs of each labelled user (the harness's own functions), into an npz:
# argv = log root, scenarios file, output
HARNESS_INPUTS = """
import argparse, sys
import numpy as np
from benchmarks.quality import run as quality
from training.data.collate import user_record
root, scenarios, out = sys.argv[1:4]
p = argparse.ArgumentParser()
quality.add_population_args(p)
quality.add_probe_args(p)
args = p.parse_args(["--dataset", "offline", "--log-root", root, "--scenarios", scenarios,
                     "--checkpoint", "artifacts/default", "--split", "0.5", "0.2", "0.3"])
ctx = quality.build_context(args)
world, users = quality.inputs_world(ctx), quality.model_users(ctx)
records = [user_record(world, ctx.vecs, u) for u in users]
arrays = {"users": np.array([world.user_id(u) for u in users]), "tabular": np.stack([r.tabular for r in records])}
for j, r in enumerate(records):
    for name, vecs in r.event_vecs.items():
        arrays[f"{name}__{j}"] = vecs
np.savez(out, **arrays)
"""


def model_env() -> tuple[Path, dict[str, str]]:
    python = repo_root() / ".venv-model" / "bin" / "python"
    if not python.exists():
        pytest.skip("no model env (.venv-model) to pretrain and export with")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")
    return python, env


def run_model_env(*args: str, timeout: float = 600) -> str:
    python, env = model_env()
    proc = subprocess.run([str(python), *args], capture_output=True, text=True, timeout=timeout, cwd=repo_root(),
                          env=env)
    assert proc.returncode == 0, (args, proc.stderr[-3000:])
    return proc.stdout


@pytest.fixture(scope="module")
def text_encoder(stack):  # type: ignore[no-untyped-def]
    import tritonclient.grpc as grpcclient

    from training.export.text_encoder import export_text_encoder

    export_text_encoder(stack.model_repository)
    client = grpcclient.InferenceServerClient(stack.triton_grpc)
    client.load_model("text_encoder")
    assert client.is_model_ready("text_encoder")
    return client


def test_raw_events_to_log_to_pretraining_to_a_served_ab_arm(  # type: ignore[no-untyped-def]
        stack, stack_manager, world, text_encoder, tmp_path) -> None:
    # ---- raw events in: Kafka -------------------------------------------------------------------------------
    ingest_ctx = IngestCtx(stack.kafka_bootstrap, stack.triton_grpc, Path(stack.feast_config), tmp_path / "ingest",
                           redis_url=stack.redis_url)
    (tmp_path / "ingest").mkdir()
    state = tmp_path / "state"
    log_ctx = LogCtx(stack.kafka_bootstrap, tmp_path, feast_apply(state), state / "eventlog")
    topic = new_topic(ingest_ctx, partitions=2)
    run = uuid.uuid4().hex[:6]
    records = movielens_as_raw_events(12)
    for r in records:  # this run's own users and ids: the session's Feast store is shared with other tests
        r["user_id"] = f"{run}-{r['user_id']}"
        r["event_id"] = f"{run}-{r['event_id']}"
    users = sorted({r["user_id"] for r in records})
    events = {r["event_id"]: r for r in records}
    produce(ingest_ctx, topic, [(r["user_id"].encode(), json.dumps(r).encode()) for r in records])

    # ---- ingest derives the statistics itself (no tabular record was sent) -----------------------------------
    constants = repo_root() / "artifacts" / "default" / "normalisation.json"
    ingest, ingest_log, _ = start_consumer(ingest_ctx, topic, f"ing-{run}", "own-ingest", normalisation=constants)

    # ---- the event log, killed once after its segments are durable and before its offsets are committed ------
    group = f"log-{run}"
    gate = tmp_path / "gate"
    proc, log, _ = start_eventlog(log_ctx, topic, group, "own-log-0", log_ctx.root, gate=gate, flush_records=700,
                                  flush_interval_s=600)
    try:
        open_gate(gate, "flush", 1)
        wait_at_gate(gate, "commit", 1, proc, log)
        proc.kill()
        proc.wait()
        done = committed(log_ctx, group, topic)
        beyond = [p for p in segment_files(log_ctx.root)
                  if SegmentName.parse(p.name).last >= done.get(SegmentName.parse(p.name).partition, 0)]
        assert beyond, "the killed flush left no segment beyond the committed offsets: nothing was replayed"
        proc, log, _ = start_eventlog(log_ctx, topic, group, "own-log-1", log_ctx.root, flush_records=500)
        wait_caught_up(log_ctx, group, topic, [proc])
        assert stop(proc) == 0, log.read_text()[-3000:]
        wait_caught_up(ingest_ctx, f"ing-{run}", topic, [ingest])
    finally:
        for p in (proc, ingest):
            if p.poll() is None:
                p.kill()
                p.wait()
    assert "tabular statistics derived from events" in ingest_log.read_text()
    features = read_users(ingest_ctx.feast_config, users)
    norm, spec = Normalisation.load(constants), load_feature_spec().statistics
    for uid in users:
        f = features[uid]
        assert f.tabular.shape == (400,) and np.abs(f.tabular).sum() > 0, uid  # derived by ingest
        assert sum(len(s.texts) for s in f.sources.values()) > 0
        # its statistics are training's formula over every event the user sent, standardised with the constants
        mine = [e for e in records if e["user_id"] == uid]
        vals = [spec.event_values(e["attributes"]) for e in mine]
        agg = StatsAggregate.of_events(spec, [e["ts"] for e in mine], [v[0] for v in vals], [v[1] for v in vals],
                                       [v[2] for v in vals])
        np.testing.assert_allclose(f.tabular[:len(spec.names)], norm.stats(agg.raw_stats(spec)), rtol=1e-5,
                                   atol=1e-5)

    # the log holds exactly the events sent, once each, after the crash and the replay
    logged = read_log(log_ctx.root, user_ids=users)
    assert logged["event_id"].is_unique and set(logged["event_id"]) == set(events)
    for row in logged.to_dict("records"):
        e = events[row["event_id"]]
        assert (row["user_id"], row["source"], row["text"], row["ts"]) == (e["user_id"], e["source"], e["text"],
                                                                           e["ts"])
        assert json.loads(row["attributes"])["rating"] == e["attributes"]["rating"]
    # and a point-in-time read through Feast matches the events sent (MovieLens users rate several movies in one
    # second: at a tie any of that second's events is the right answer)
    for uid in users[:4]:
        mine = sorted(e["ts"] for e in events.values() if e["user_id"] == uid)
        for at in (mine[0] - 1, mine[0], mine[len(mine) // 2] + 0.5, mine[-1] + 86400):
            got = as_of(log_ctx.feast_config, [uid], at, log_root=log_ctx.root)[0]
            seen = [e for e in events.values() if e["user_id"] == uid and e["ts"] <= at]
            assert got.found == bool(seen), (uid, at)
            if seen:
                last = max(e["ts"] for e in seen)
                assert got.ts == last and got.event_id in {e["event_id"] for e in seen if e["ts"] == last}, (uid, at)

    # ---- tuning labels as of a time: the row rebuilt from the log is the row ingest wrote ----------------------
    # at the end of the log, for every user (Triton's text encoder, the constants ingest read); mid-way, only the
    # events before the time (services.tuning.snapshot, what the worker runs for a labels CSV with an as_of column)
    end = max(e["ts"] for e in records) + 1
    (tmp_path / "as_of.csv").write_text("user_id,label,as_of\n" + "".join(f"{u},{i % 2},{end}\n"
                                                                          for i, u in enumerate(users)))
    ingest_spec = load_ingest_spec()
    ingest_spec = dataclasses.replace(ingest_spec, normalisation=load_normalisation(constants, ingest_spec))
    stamps_of = {u: sorted(e["ts"] for e in records if e["user_id"] == u) for u in users}
    mid = {u: ts[len(ts) // 2] + 0.5 for u, ts in stamps_of.items()}
    encoder = TritonTextEncoder(stack.triton_grpc)
    try:
        from_log = make_snapshot_as_of(tmp_path / "as_of.csv", tmp_path / "log.npz", log_root=log_ctx.root,
                                       encoder=encoder, normalisation=constants)
        halfway = features_before(log_ctx.root, mid, ingest_spec, encoder)
    finally:
        encoder.close()
    online = make_snapshot(tmp_path / "as_of.csv", ingest_ctx.feast_config, tmp_path / "online.npz")
    assert from_log.user_ids == online.user_ids == users and from_log.meta["features_from"] == "event_log"
    np.testing.assert_array_equal(from_log.feature_version, online.feature_version)  # the same last log position
    for name in from_log.event_vecs:
        np.testing.assert_array_equal(from_log.event_mask[name], online.event_mask[name])
        # the same texts through the same encoder (batched with other texts: float16 rounding may differ)
        np.testing.assert_allclose(from_log.event_vecs[name], online.event_vecs[name], atol=2e-3)
    n_stats = len(spec.names)  # the statistics exactly; the history-mean part averages those float16 vectors
    np.testing.assert_allclose(from_log.tabular[:, :n_stats], online.tabular[:, :n_stats], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(from_log.tabular, online.tabular, atol=2e-3)
    for uid in users:
        stamps = np.concatenate([halfway[uid].events(n).timestamps for n in ingest_spec.source_names])
        before = [t for t in stamps_of[uid] if t < mid[uid]]
        assert halfway[uid].found and stamps.max() == max(before) and (stamps < mid[uid]).all(), uid

    # ---- the quality harness reads the log as the online store serves it (model env) -------------------------
    # what `run.py --dataset offline` feeds the model for each labelled user: the same events per source, in the same
    # order, and the dense vector ingest wrote (the default's constants, as served)
    (tmp_path / "labels.csv").write_text("user_id,label\n" + "".join(f"{u},{i % 2}\n" for i, u in enumerate(users)))
    (tmp_path / "scenarios.yaml").write_text('scenarios:\n  - {name: any, query: "Is this user any user?", label: '
                                             "given, params: {file: labels.csv}}\n")
    run_model_env("-c", HARNESS_INPUTS, str(log_ctx.root), str(tmp_path / "scenarios.yaml"),
                  str(tmp_path / "harness.npz"))
    with np.load(tmp_path / "harness.npz") as z:
        assert sorted(z["users"].tolist()) == users  # every labelled user, no other
        for j, uid in enumerate(z["users"].tolist()):
            f = features[uid]
            np.testing.assert_allclose(z["tabular"][j][:len(spec.names)], f.tabular[:len(spec.names)], atol=1e-5)
            cos = z["tabular"][j] @ f.tabular / (np.linalg.norm(z["tabular"][j]) * np.linalg.norm(f.tabular))
            assert cos > 0.999, (uid, cos)  # the history-mean part: MiniLM in-process vs the served text encoder
            for name, got in f.sources.items():
                mine = z[f"{name}__{j}"]
                assert mine.shape[0] == len(got), (uid, name)
                if len(got):
                    a, b = mine.astype(np.float32), got.vectors.astype(np.float32)
                    rows = np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
                    assert rows.min() > 0.999, (uid, name, rows.min())  # the same events, in the same order

    # ---- pretraining on the log (model env), then export -----------------------------------------------------
    out = tmp_path / "pretrain"
    run_model_env("-m", "training.pretrain", "--config", "tiny", "--dataset", "offline", "--log-root",
                  str(log_ctx.root), "--steps", "2", "--batch-size", "4", "--top-k", "3", "--eval-every", "0",
                  "--set", "optim.chunk_size=2", "--device", "cpu", "--out", str(out))
    manifest = json.loads((out / "checkpoint" / "manifest.json").read_text())
    assert "offline" in json.dumps(manifest)
    assert (out / "checkpoint" / "normalisation.json").is_file()
    exported = run_model_env("-m", "training.export", "--checkpoint", str(out / "checkpoint"), "--out",
                             str(tmp_path / "exports"), "--model-version", NEW, "--only", "--torch-threads", "1")
    art = Path(exported.strip().splitlines()[-1])
    assert art.is_dir()

    # ---- register, publish into the served repository, route an A/B arm to it: no Triton restart -------------
    triton, repo = world["triton"], Path(stack.model_repository)
    _ensure_real_model(repo)
    old = model_versions(read_model_config(repo / "qanchor" / "config.pbtxt"))[0]
    triton.load_model("qanchor")  # what the stack does at start-up; nothing below asks Triton to load again
    pid = stack_manager.record("triton").pid
    ab = tmp_path / "ab.yaml"
    ab.write_text("salt: own-events\n")
    settings = world["settings"].model_copy(update={
        "triton_model": "qanchor", "model_versions": [], "ab_config": ab, "models_refresh_s": 0.0,
        "ab_poll_s": 3600.0})
    gateway, server, client = serve_gateway(settings, TOKEN, timeout_s=120.0)
    try:
        before = client.get_embedding(users[0], "promo").embedding
        assert before.model_version == old and not before.fallback  # ingest's features, the old version
        ab.write_text(AB.format(new=NEW))
        assert not gateway.watcher.poll()  # an arm cannot name a version nobody published
        reg = ["--registry", world["registry_target"], "--token", ADMIN]
        assert cli.main(["model", "register", str(art), *reg]) == 0
        assert cli.main(["model", "publish", NEW, "--repository", str(repo), *reg]) == 0
        assert gateway.watcher.poll()
        for uid in users[:4]:
            e = client.get_embedding(uid, "promo").embedding
            assert (e.arm, e.model_version) == ("own", NEW) and not e.fallback, uid
            assert abs(np.linalg.norm(e.values) - 1) < 1e-3
        after = client.get_embedding(users[0], "promo").embedding
        assert not np.allclose(after.values, before.values, atol=1e-4)  # other weights, other embedding
        assert stack_manager.record("triton").pid == pid and triton.is_model_ready("qanchor")
    finally:
        client.close()
        server.stop(0)
        gateway.close()
        triton.unload_model("qanchor")
