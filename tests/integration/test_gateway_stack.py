"""The gateway against the real stack: Feast (SQLite online store), Triton, the registry service over gRPC.

Triton serves `qanchor_contract` (services/gateway/contract_model), a tiny real Python-backend model that speaks
the gateway's tensor contract and whose embeddings have a closed-form reference, so these tests compare numbers:
the features written to Feast must reach Triton intact, per scenario, with the right prompt, and the metadata
(arm, versions, feature freshness, cache hit) must be right. The last test serves the real Q-Anchor model
(`qanchor`, exported untrained from the `tiny` preset unless one is installed) and checks that an embedding from
the cached prefix equals the one computed with it, through the whole path.
"""
from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tgrpc

from services.common.errors import InvalidArgument, NotFound
from services.common.feast_store import get_store
from services.common.features import SourceEvents, UserFeatures, build_user_batch_arrays, load_feature_spec
from services.common.features_online import FeatureWriter
from services.common.grpc_server import mark_serving
from services.common.settings import repo_root
from services.gateway import contract_model
from services.gateway.embedding_client import EmbeddingClient
from services.gateway.contract_model.model import reference_embedding, user_vector
from services.gateway.ab_config import load_config
from services.gateway.clients.triton import served_counts
from services.gateway.routing import assign
from services.gateway.server import build_gateway, create_gateway_server
from services.gateway.servicer import SERVICE_NAME
from services.gateway.settings import GatewaySettings
from services.registry.client import RegistryClient
from services.registry.server import create_registry_server
from services.registry.settings import RegistrySettings
from tests.integration.triton_stats import quiet, settled

pytestmark = pytest.mark.integration

TOKEN, ADMIN = "gw-token", "registry-admin"
SHA = "ab" * 32
AB = """
salt: it
default: {model_version: contract-v1}
scenarios:
  concert:
    arms:
      - {name: control, weight: 50, prompt_version: zero-shot}
      - {name: tuned, weight: 50, prompt_version: 2}
"""


def features(user_id: str, version: int, seed: int, updated_at: float) -> UserFeatures:
    spec = load_feature_spec()
    rng = np.random.default_rng(seed)
    sources = {}
    for s in spec.sources[:2]:  # the last source stays empty: a user need not have every source
        n = min(s.k, 3 + seed % 4)
        vecs = rng.standard_normal((n, spec.encoder_dim)).astype(np.float16)
        sources[s.name] = SourceEvents([f"{s.name} {i}" for i in range(n)], vecs,
                                       np.arange(n, dtype=np.int64) + 1_700_000_000)
    return UserFeatures(user_id, sources, rng.standard_normal(spec.tabular_dim).astype(np.float32), version,
                        updated_at)


def reference(user: UserFeatures | None, query: str, prompt: str, sha: str = "") -> np.ndarray:
    spec = load_feature_spec()
    row = user or UserFeatures.missing("x")
    arrays = build_user_batch_arrays([row], spec)
    u = user_vector([arrays.event_vecs[s.name][0] for s in spec.sources],
                    [arrays.event_mask[s.name][0] for s in spec.sources], arrays.tabular[0])
    return reference_embedding(u, query, prompt, sha)


def serve_gateway(settings: GatewaySettings, token: str, timeout_s: float):  # type: ignore[no-untyped-def]
    """A real gateway (real clients of Triton, the registry and Feast) on a free port: (gateway, server, client)."""
    gateway = build_gateway(settings)
    server, port = create_gateway_server(settings, gateway)
    server.start()
    mark_serving(server, [SERVICE_NAME])
    return gateway, server, EmbeddingClient(f"127.0.0.1:{port}", token=token, timeout_s=timeout_s)


@pytest.fixture(scope="module")
def world(stack, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    tmp = tmp_path_factory.mktemp("gateway")
    # Triton (explicit model control): install and load the contract model.
    contract_model.install(stack.model_repository)
    triton = tgrpc.InferenceServerClient(stack.triton_grpc)
    triton.load_model(contract_model.NAME)
    assert triton.is_model_ready(contract_model.NAME)

    # Feast: two known users.
    spec = load_feature_spec()
    writer = FeatureWriter(get_store(stack.feast_config), spec)
    users = {"alice": features("alice", 4, 1, 1_763_000_000.25), "u:bob@example": features("u:bob@example", 9, 2,
                                                                                              1_763_000_100.5)}
    writer.write(list(users.values()))

    # Registry service (real gRPC server, SQLite DB): three scenarios, one with a READY tuned version 2.
    reg_settings = RegistrySettings(grpc_port=0, database_url=f"sqlite:///{tmp / 'registry.db'}",
                                    admin_token=ADMIN)
    reg_server, reg_port, reg_app = create_registry_server(reg_settings)
    reg_server.start()
    admin = RegistryClient(f"127.0.0.1:{reg_port}", token=ADMIN)
    queries = {"concert": "Will this user click concert ads?", "churn": "Will this user stop using the app?",
               "promo": "Is this user sensitive to big-sale promotions?"}
    for name, q in queries.items():
        admin.register_scenario(name, q)
    reg_app.repo.add_prompt_version("concert", artifact_uri=str(tmp / "concert-v2.safetensors"), sha256=SHA,
                                    model_version="contract-v1")

    ab = tmp / "ab.yaml"
    ab.write_text(AB)
    settings = GatewaySettings(grpc_port=0, token=TOKEN, ab_config=ab, ab_poll_s=0.1,
                               triton_url=stack.triton_grpc, triton_model=contract_model.NAME,
                               registry_target=f"127.0.0.1:{reg_port}", registry_cache_ttl_s=0.5,
                               feast_location=stack.feast_config)
    gateway, server, client = serve_gateway(settings, TOKEN, timeout_s=10.0)
    yield {"client": client, "gateway": gateway, "users": users, "queries": queries, "writer": writer,
           "triton": triton, "ab": ab, "stack": stack, "tmp": tmp, "settings": settings,
           "registry_target": f"127.0.0.1:{reg_port}"}
    client.close()
    server.stop(0)
    gateway.close()
    admin.close()
    reg_server.stop(0)
    triton.unload_model(contract_model.NAME)
    triton.close()


def _executions(triton: tgrpc.InferenceServerClient) -> int:
    return served_counts(triton, contract_model.NAME).executions


def test_embedding_matches_reference_from_feast_features(world) -> None:  # type: ignore[no-untyped-def]
    client, users, queries = world["client"], world["users"], world["queries"]
    cfg = load_config(AB)
    for uid in users:
        e = client.get_embedding(uid, "concert").embedding
        arm = assign(cfg, "concert", uid).arm
        prompt, sha = ("2", SHA) if arm == "tuned" else ("zero-shot", "")
        np.testing.assert_allclose(e.values, reference(users[uid], queries["concert"], prompt, sha), atol=1e-5)
        assert (e.arm, e.prompt_version) == (arm, "v2" if arm == "tuned" else "zero-shot")
        assert e.model_version == "contract-v1" and e.dim == 128 and not e.fallback
        assert e.feature_version == users[uid].feature_version
        assert e.feature_timestamp.ToMilliseconds() == round(users[uid].updated_at * 1000)


def test_prefix_cache_hit_and_feature_version_invalidates_it(world) -> None:  # type: ignore[no-untyped-def]
    client, writer = world["client"], world["writer"]
    first = client.get_embedding("carol", "churn").embedding  # unknown so far: cold start
    assert first.fallback and first.feature_version == 0
    carol = features("carol", 1, 7, time.time())
    writer.write([carol])
    e1 = client.get_embedding("carol", "churn").embedding
    assert not e1.fallback and e1.feature_version == 1 and not e1.cache_hit
    e2 = client.get_embedding("carol", "churn").embedding
    assert e2.cache_hit and np.allclose(e1.values, e2.values)
    carol2 = features("carol", 2, 8, time.time())
    writer.write([carol2])
    e3 = client.get_embedding("carol", "churn").embedding
    assert e3.feature_version == 2 and not e3.cache_hit  # new features: the old prefix must not be reused
    np.testing.assert_allclose(e3.values, reference(carol2, world["queries"]["churn"], "zero-shot"), atol=1e-5)


def test_unknown_user_gets_cold_start_reference(world) -> None:  # type: ignore[no-untyped-def]
    e = world["client"].get_embedding("never-seen-user", "promo").embedding
    assert e.fallback and e.feature_version == 0 and not e.HasField("feature_timestamp")
    np.testing.assert_allclose(e.values, reference(None, world["queries"]["promo"], "zero-shot"), atol=1e-5)


def test_user_embeddings_is_one_triton_request(world) -> None:  # type: ignore[no-untyped-def]
    client, triton, users, queries = world["client"], world["triton"], world["users"], world["queries"]
    before = quiet(lambda: _executions(triton))  # an earlier test's last request may still be landing
    resp = client.get_user_embeddings("u:bob@example", ["churn", "ghost", "promo", "concert"])
    assert settled(lambda: _executions(triton), lambda n: n > before) - before == 1
    kinds = [r.WhichOneof("result") for r in resp.results]
    assert kinds == ["embedding", "error", "embedding", "embedding"]
    assert resp.results[1].error.code == grpc.StatusCode.NOT_FOUND.value[0]
    np.testing.assert_allclose(resp.results[2].embedding.values,
                               reference(users["u:bob@example"], queries["promo"], "zero-shot"), atol=1e-5)
    single = client.get_embedding("u:bob@example", "promo").embedding
    np.testing.assert_allclose(single.values, resp.results[2].embedding.values, atol=1e-6)


def test_batch_groups_users_and_reports_item_errors(world) -> None:  # type: ignore[no-untyped-def]
    client, triton = world["client"], world["triton"]
    before = quiet(lambda: _executions(triton))  # an earlier test's last request may still be landing
    items = [("alice", "churn"), ("u:bob@example", "churn"), ("alice", "promo"), ("alice", "nope"),
             ("", "churn"), ("newbie", "promo")]
    resp = client.batch_get(items)
    executions = settled(lambda: _executions(triton), lambda n: n - before >= 3) - before
    assert executions == 3  # alice, bob, newbie: one request each
    kinds = [r.WhichOneof("result") for r in resp.results]
    assert kinds == ["embedding", "embedding", "embedding", "error", "error", "embedding"]
    assert resp.results[3].error.code == grpc.StatusCode.NOT_FOUND.value[0]
    assert resp.results[4].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert resp.results[5].embedding.fallback and resp.timing.features_ms > 0
    with pytest.raises(NotFound):
        client.get_embedding("alice", "nope")
    with pytest.raises(InvalidArgument):
        client.get_user_embeddings("alice", ["churn"] * 2)


def test_ab_reload_validated_against_the_live_registry(world) -> None:  # type: ignore[no-untyped-def]
    watcher, ab = world["gateway"].watcher, world["ab"]
    generation = watcher.generation
    ab.write_text(AB.replace("prompt_version: 2", "prompt_version: 5"))  # no such version in the registry
    assert not watcher.poll()
    assert "version 5 is not a servable version" in (watcher.last_error or "")
    assert watcher.generation == generation
    ab.write_text(AB.replace("weight: 50, prompt_version: zero-shot", "weight: 0, prompt_version: zero-shot")
                  .replace("weight: 50, prompt_version: 2", "weight: 100, prompt_version: 2"))
    assert watcher.poll() and watcher.generation == generation + 1
    e = world["client"].get_embedding("alice", "concert").embedding
    assert (e.arm, e.prompt_version) == ("tuned", "v2")
    ab.write_text(AB)
    assert watcher.poll()


def _ensure_real_model(repo: Path) -> None:
    """Export an untrained tiny `qanchor` (training's exporter, model env) on Feast's schema unless installed."""
    from training.export.contract import Contract, read_model_config

    cfg = repo / "qanchor" / "config.pbtxt"
    spec = load_feature_spec()
    if cfg.exists() and Contract.from_model_config(read_model_config(cfg)).sources == \
            Contract.for_feature_spec(spec).sources:
        return  # another test's export on its own schema does not count
    export_real_model(repo, "--only")


def export_real_model(repo: Path, *extra: str) -> Path:
    """`python -m training.export --preset tiny` (model env) on Feast's feature schema into `repo` -> the version
    folder; skips the test when the model env or the exporter is missing."""
    spec = load_feature_spec()
    model_python = repo_root() / ".venv-model" / "bin" / "python"
    if not model_python.exists():
        pytest.skip("no model env (.venv-model) to export the real `qanchor` model with")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    # The tiny preset's own feature schema is smaller; serve the one Feast holds (feature_repo/sources.yaml).
    sources = "[" + ", ".join(f"{{name: {s.name}, k: {s.k}}}" for s in spec.sources) + "]"
    cmd = [str(model_python), "-m", "training.export", "--preset", "tiny", "--out", str(repo),
           "--set", f"input.sources={sources}", "--set", f"input.d_tab={spec.tabular_dim}",
           "--set", f"input.d_enc={spec.encoder_dim}", "--torch-threads", "1", *extra]
    proc = subprocess.run(cmd,
                          capture_output=True, text=True, timeout=300, cwd=repo_root(), env=env)
    if proc.returncode != 0:
        pytest.skip(f"training's exporter could not write the real `qanchor` model (exit {proc.returncode}): "
                    f"{(proc.stderr or proc.stdout)[-500:]}")
    return Path(proc.stdout.strip().splitlines()[-1])


def test_real_qanchor_model_cached_equals_uncached(world) -> None:  # type: ignore[no-untyped-def]
    stack, triton = world["stack"], world["triton"]
    _ensure_real_model(Path(stack.model_repository))
    triton.load_model("qanchor")
    ab = world["tmp"] / "ab-real.yaml"
    ab.write_text("salt: it\n")
    settings = world["settings"].model_copy(update={"triton_model": "qanchor", "model_versions": [],
                                                    "ab_config": ab})
    gateway = build_gateway(settings)
    server, port = create_gateway_server(settings, gateway)
    server.start()
    try:
        with EmbeddingClient(f"127.0.0.1:{port}", token=TOKEN, timeout_s=120.0) as client:
            multi = client.get_user_embeddings("alice", ["churn", "promo"])  # prefix computed once, 2 suffixes
            assert [r.WhichOneof("result") for r in multi.results] == ["embedding", "embedding"], multi
            assert not multi.results[0].embedding.cache_hit
            single = client.get_embedding("alice", "promo").embedding  # prefix from the model's LRU
            assert single.cache_hit and single.feature_version == world["users"]["alice"].feature_version
            got = np.asarray(single.values)
            assert got.shape == (single.dim,) and abs(np.linalg.norm(got) - 1) < 1e-3
            np.testing.assert_allclose(got, multi.results[1].embedding.values, atol=1e-4)
            assert not np.allclose(multi.results[0].embedding.values, got)  # scenarios differ
            cold = client.get_embedding("nobody-knows-me", "promo").embedding
            assert cold.fallback and abs(np.linalg.norm(cold.values) - 1) < 1e-3
    finally:
        server.stop(0)
        gateway.close()
        triton.unload_model("qanchor")
