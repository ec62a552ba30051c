"""The README's first command, end to end: `python -m services.demo` on its own state dir and port base.

Runs the real demo as a subprocess (stack up with every component, the models step, MovieLens replay through
Kafka and ingest, registry gRPC, gateway gRPC, a tuning job on the stack's Celery worker and an A/B split on its
prompt version) and checks the facts of its JSON report; then runs it again to
prove it is idempotent (scenarios reused, stack already healthy). Slow: the first model export alone takes
minutes on 2 cores.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from services.common.settings import repo_root

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# Clear of the session stack (QANCHOR_TEST_PORT_BASE, default 29000) and of the lifecycle test's shift.
PORT_SHIFT = 700
USERS = 20


@pytest.fixture(scope="module")
def demo_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    base = int(os.environ.get("QANCHOR_TEST_PORT_BASE", 29000)) + PORT_SHIFT
    state = tmp_path_factory.mktemp("demo") / "state"
    env = {**os.environ, "QANCHOR_STATE_DIR": str(state), "QANCHOR_PORT_BASE": str(base),
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    yield env
    down = subprocess.run([sys.executable, "-m", "services.stack", "down"], env=env, capture_output=True,
                          text=True, timeout=300, cwd=repo_root())
    assert down.returncode == 0, down.stdout + down.stderr


def run_demo(env: dict[str, str], out: Path, *extra: str) -> tuple[dict, str]:
    proc = subprocess.run([sys.executable, "-m", "services.demo", "--users", str(USERS), "--tune-steps", "5",
                           "--json", str(out), *extra],
                          env=env, capture_output=True, text=True, timeout=1800, cwd=repo_root())
    assert proc.returncode == 0, f"demo exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return json.loads(out.read_text()), proc.stdout


def served_width() -> int:
    """What the stack serves from artifacts/default (services.stack.apps): the head's width, or SmolLM2-135M's hidden
    size (576) when the checkpoint serves the <USER_EMB> state (head.embedding, docs/model.md)."""
    head = json.loads((repo_root() / "artifacts" / "default" / "config.json").read_text())["head"]
    return 576 if head.get("embedding") == "hidden" else int(head["out"])


def test_demo_end_to_end_then_again(demo_env: dict[str, str], tmp_path: Path) -> None:
    report, stdout = run_demo(demo_env, tmp_path / "first.json")
    assert report["users_replayed"] == USERS and report["users_with_features"] == USERS
    assert report["events_sent"] > USERS * 10  # MovieLens-1M users have >= 20 ratings each
    counted = report["ingest_outcomes"]  # a fresh stack: every replayed event applied once, none dead-lettered
    assert (counted["applied"], counted.get("duplicate", 0), counted.get("dlq", 0)) == (report["events_sent"], 0, 0)
    assert f"ingest: {report['events_sent']} applied, 0 duplicates, 0 dead-lettered" in stdout
    n = len(report["scenarios"])
    assert n == 10 and report["scenarios_registered"] + report["scenarios_reused"] == n

    single = report["single"]
    assert len(single) == 3
    for e in single:
        assert e["dim"] == served_width() and e["feature_version"] > 0 and not e["fallback"]
        assert e["model_version"] == report["model_version"]
    assert report["cold"]["fallback"] and report["cold"]["feature_version"] == 0
    assert report["cold"]["dim"] == served_width()
    assert report["batch_ok"] == report["batch_items"] == 8 and report["batch_errors"] == []

    first, second = report["multi"]
    assert first["ok"] == second["ok"] == n
    assert second["cache_hit"], "the second GetUserEmbeddings of the same user must reuse its prefix KV"
    sim = np.asarray(report["similarity"])
    np.testing.assert_allclose(np.diag(sim), 1.0, atol=1e-4)
    assert sim[~np.eye(n, dtype=bool)].max() < 0.9999, "a user's scenario embeddings must differ per scenario"

    assert "UNTRAINED" in stdout if not report["model_trained"] else "UNTRAINED" not in stdout
    assert "qanchor stack down" in stdout and report["endpoints"]["gateway"].endswith(
        str(int(demo_env["QANCHOR_PORT_BASE"]) + 51))

    # register -> tune on labelled users -> A/B arm on the tuned version, both arms served.
    tuning = report["tuning"]
    assert tuning["scenario"] == "gender_female" and tuning["version"] >= 2 and tuning["steps"] == 5
    assert {"auc", "auc_zero_shot", "ks", "probe_auc", "probe_auc_zero_shot", "n_train", "n_val"} <= \
        set(tuning["metrics"])
    assert tuning["metrics"]["n_train"] + tuning["metrics"]["n_val"] == USERS
    arms = {a["arm"]: a for a in tuning["arms"]}
    assert set(arms) == {"zero-shot", "tuned"} and sum(a["users"] for a in arms.values()) == 12
    assert arms["tuned"]["prompt_version"] != arms["zero-shot"]["prompt_version"]
    assert str(tuning["version"]) in arms["tuned"]["prompt_version"]
    assert "held-out AUC" in stdout and "zero-shot" in stdout and "linear-probe AUC" in stdout

    again, again_stdout = run_demo(demo_env, tmp_path / "second.json")
    # The same events again: nothing applied twice; each is a duplicate or (older than the ids a row remembers)
    # a dead letter, and the report says which.
    counted = again["ingest_outcomes"]
    assert counted["applied"] == 0 and counted["duplicate"] + counted["dlq"] == again["events_sent"]
    assert counted["dlq"] == counted.get("dlq:beyond_dedup_memory", 0)
    assert "applies an event once" in again_stdout
    assert again["tuning"]["version"] == tuning["version"] + 1  # a new job, a new version; the split follows it
    assert again["scenarios_reused"] == n and again["scenarios_registered"] == 0
    assert again["model_version"] == report["model_version"]
    assert again["multi"][1]["cache_hit"]


def test_the_quality_harness_probes_what_the_public_api_serves(demo_env: dict[str, str], tmp_path: Path) -> None:
    """benchmarks/quality/served.py on the demo's stack (up from the test above, or started here): the run's users
    replayed through Kafka, scenarios registered by query text, embeddings fetched over gRPC; run.py --served then
    probes them beside the checkpoint's own rows and finds them the same embeddings."""
    root = repo_root()
    model_python = root / ".venv-model" / "bin" / "python"
    if not model_python.exists():
        pytest.skip("no model env (.venv-model) for the harness")
    model_env = {k: v for k, v in demo_env.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    population = ["--dataset", "ml-1m", "--train-users", "60", "--val-users", "20", "--eval-users", "40"]
    served, events = tmp_path / "served.npz", tmp_path / "events.jsonl"
    steps = [
        [sys.executable, "-m", "services.stack", "up"],  # idempotent: up already after the demo test
        [str(model_python), "benchmarks/quality/served.py", "events", *population, "--out", str(events)],
        [sys.executable, "benchmarks/quality/served.py", "fetch", "--events", str(events), "--out", str(served)],
        [str(model_python), "benchmarks/quality/run.py", *population, "--checkpoint", "artifacts/default",
         "--no-same-question", "--draws", "200", "--served", str(served), "--out", str(tmp_path / "quality"),
         "--rows", "Q-Anchor static query", "Q-Anchor zero-shot"],
    ]
    for cmd in steps:
        proc = subprocess.run(cmd, env=model_env if cmd[0] == str(model_python) else demo_env, capture_output=True,
                              text=True, timeout=1800, cwd=root)
        assert proc.returncode == 0, f"{cmd[1:3]} exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    table = json.loads((tmp_path / "quality.json").read_text())
    meta = table["meta"]["served"]
    assert meta["users"] == 120 and meta["model_trained"] is True
    parity = meta["cosine_to_checkpoint"]
    assert parity["pairs"] == 40 * 11 and parity["min"] > 0.99, parity  # the API serves what the artifact computes
    rows = {r["row"]: r for r in table["rows"]}
    assert {"served: static query", "served: zero-shot"} <= set(rows)
    assert abs(rows["served: zero-shot"]["auc_avg"] - rows["Q-Anchor zero-shot"]["auc_avg"]) < 0.02
    claims = {(c["better"], c["worse"]) for c in table["meta"]["claims"]}
    assert ("served: zero-shot", "served: static query") in claims
    assert "Cosine between the served and the checkpoint's own embeddings" in (tmp_path / "quality.md").read_text()
