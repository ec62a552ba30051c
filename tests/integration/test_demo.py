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

    again, _ = run_demo(demo_env, tmp_path / "second.json")
    assert again["tuning"]["version"] == tuning["version"] + 1  # a new job, a new version; the split follows it
    assert again["scenarios_reused"] == n and again["scenarios_registered"] == 0
    assert again["model_version"] == report["model_version"]
    assert again["multi"][1]["cache_hit"]
