"""A new model version reaches serving without a Triton restart or a model-control call, on the real stack.

Triton serves the real `qanchor` (tiny preset, on Feast's schema) with one model version. A second version is
exported elsewhere, then `qanchor model register` / `publish` (the CLI, against the real registry service) put it
into the model repository Triton serves; the running Triton (same process, same loaded model: its inference
statistics keep counting) serves it by MODEL_VERSION; an A/B arm that names it is rejected before the publish and
accepted after; the gateway's responses report the version per arm; `qanchor model promote` makes it the default.
"""
from __future__ import annotations

import numpy as np
import pytest

from services.cli import __main__ as cli
from services.common.errors import NotFound
from services.common.features import UserFeatures
from services.gateway.ab_config import load_config
from services.gateway.clients.triton import served_counts
from services.gateway.core import ModelRequest
from services.gateway.routing import assign
from tests.integration.test_gateway_stack import (  # noqa: F401  (world: Feast users, registry, contract model)
    TOKEN, _ensure_real_model, export_real_model, serve_gateway, world,
)
from tests.integration.triton_stats import settled
from training.export.contract import model_versions, read_model_config

pytestmark = pytest.mark.integration

NEW = "tiny-published-v2"
ADMIN = "registry-admin"
AB = """
salt: publish
scenarios:
  promo:
    arms:
      - {{name: old, weight: 50, prompt_version: zero-shot, model_version: {old}}}
      - {{name: new, weight: 50, prompt_version: zero-shot, model_version: {new}}}
"""


def _served_count(triton) -> int:  # type: ignore[no-untyped-def]
    """Successful inferences since `qanchor` was loaded: a reload or restart would reset it."""
    return served_counts(triton, "qanchor").successes


def _cli(*args: str) -> None:
    assert cli.main(list(args)) == 0


def test_publish_serves_a_new_version_without_restart(  # type: ignore[no-untyped-def]
        world, stack_manager, tmp_path) -> None:
    stack, triton = world["stack"], world["triton"]
    repo = stack.model_repository
    _ensure_real_model(repo)
    old = model_versions(read_model_config(repo / "qanchor" / "config.pbtxt"))[0]
    triton.load_model("qanchor")  # what the stack does at start-up; nothing below asks Triton to load again
    pid = stack_manager.record("triton").pid
    ab = tmp_path / "ab.yaml"
    ab.write_text("salt: publish\n")
    settings = world["settings"].model_copy(update={
        "triton_model": "qanchor", "model_versions": [], "ab_config": ab, "models_refresh_s": 0.0,
        "ab_poll_s": 3600.0})  # the test polls by hand
    gateway, server, client = serve_gateway(settings, TOKEN, timeout_s=120.0)
    try:
        first = client.get_embedding("alice", "promo").embedding
        assert first.model_version == old
        served = _served_count(triton)

        # Export a second version (other weights) outside the served repository; the A/B file cannot name it yet.
        art = export_real_model(tmp_path / "exports", "--model-version", NEW, "--set", "backbone.seed=7")
        ab.write_text(AB.format(old=old, new=NEW))
        assert not gateway.watcher.poll()
        assert f"unknown model {NEW!r}" in (gateway.watcher.last_error or "")
        missing = gateway.core.model.infer([ModelRequest(UserFeatures.missing("x"), NEW, ["promo"], ["q"], [None])],
                                           60.0)[0]
        assert isinstance(missing, NotFound) and "qanchor model publish" in missing.message

        reg = ["--registry", world["registry_target"], "--token", ADMIN]
        _cli("model", "register", str(art), *reg)
        _cli("model", "publish", NEW, "--repository", str(repo), *reg)
        assert gateway.watcher.poll()  # the arm may route to the published version now

        users = [f"user-{i}" for i in range(16)] + ["alice"]
        cfg = load_config(ab.read_text())
        arms = {u: assign(cfg, "promo", u).arm for u in users}
        assert set(arms.values()) == {"old", "new"}
        cold: dict[str, np.ndarray] = {}
        for u in users:
            e = client.get_embedding(u, "promo").embedding
            assert e.arm == arms[u] and e.model_version == (NEW if arms[u] == "new" else old), (u, e.arm)
            if e.fallback:
                cold.setdefault(e.model_version, np.asarray(e.values))
        # Cold-start users under both versions: other weights, other embedding.
        assert set(cold) == {old, NEW} and not np.allclose(cold[old], cold[NEW], atol=1e-4)

        # Promote: scenarios the A/B file does not list follow the registry's promoted version.
        assert client.get_embedding("alice", "churn").embedding.model_version == old
        _cli("model", "promote", NEW, *reg)
        gateway.watcher.poll()  # the watcher's poll refreshes the published / promoted versions
        assert client.get_embedding("alice", "churn").embedding.model_version == NEW

        # Same process, same loaded model (its statistics kept counting), never reloaded.
        assert stack_manager.record("triton").pid == pid
        assert settled(lambda: _served_count(triton), lambda n: n > served) > served
        assert triton.is_model_ready("qanchor")
    finally:
        client.close()
        server.stop(0)
        gateway.close()
        triton.unload_model("qanchor")
