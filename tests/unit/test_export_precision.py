"""Serving in bf16 (training.precision through prepare_for_serving): the config switch and its env override, every
weight and the prefix KV cache stored in bf16 (half the bytes per cached user), embeddings close to fp32, and the
prefix-cache rules (cached == full forward, hit == miss, cross-request batching) still holding in the serving dtype."""
import copy

import pytest

torch = pytest.importorskip("torch")
np = pytest.importorskip("numpy")
from training.config import load_config  # noqa: E402
from training.export.artifact import LoadedModel  # noqa: E402
from training.export.runtime import QAnchorRuntime, prepare_for_serving, to_user_batch  # noqa: E402
from training.model.embedder import QAnchorModel  # noqa: E402
from training.model.suffix import ScenarioSpec  # noqa: E402
from training.model.synthetic import activate_lora  # noqa: E402
from training.precision import autocast_for  # noqa: E402

from tests.unit.test_export_runtime import requests_for  # noqa: E402

pytestmark = pytest.mark.model


def _served(compute: str, monkeypatch) -> QAnchorModel:
    monkeypatch.delenv("QANCHOR_PRECISION", raising=False)
    torch.manual_seed(0)
    m = QAnchorModel(load_config("tiny", [f"backbone.compute={compute}"]))
    activate_lora(m)  # non-zero adapters: merging changes the weights
    prepare_for_serving(m.eval())
    return m


def _runtime(m, cache_bytes: int = 1 << 30) -> QAnchorRuntime:
    return QAnchorRuntime([LoadedModel(m, m.cfg, "v", "preset:tiny", {})], cache_bytes=cache_bytes)


def _cos(a, b) -> np.ndarray:
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def test_serving_dtype_follows_backbone_compute_and_the_env_override(monkeypatch):
    served = _served("bfloat16", monkeypatch)
    assert {p.dtype for n, p in served.named_parameters() if not n.startswith("head.")} == {torch.bfloat16}
    assert {p.dtype for p in served.head.parameters()} == {torch.float32}  # the head runs fp32 (keep_fp32)
    assert {p.dtype for p in _served("float32", monkeypatch).parameters()} == {torch.float32}
    monkeypatch.setenv("QANCHOR_PRECISION", "fp32")  # the operator's override wins over the model config
    torch.manual_seed(0)
    m = QAnchorModel(load_config("tiny", ["backbone.compute=bfloat16"]))
    assert prepare_for_serving(m) == torch.float32 and m.dtype == torch.float32


def test_bf16_embeddings_match_fp32_and_the_kv_cache_halves(monkeypatch):
    f32, b16 = _served("float32", monkeypatch), _served("bfloat16", monkeypatch)
    reqs = requests_for(f32, 4, seed=11, cold=[3])
    rt32, rt16 = _runtime(f32), _runtime(b16)
    out32, out16 = rt32.serve(reqs), rt16.serve(reqs)
    for a, b in zip(out32, out16):
        assert b.embedding.dtype == np.float32 and b.status == a.status
        assert _cos(a.embedding, b.embedding).min() > 0.99  # bf16 rounding only
    entry = rt16.cache.get(("v", reqs[0].user_id, 1))
    assert entry.keys[0].dtype == torch.bfloat16
    ratio = rt16.cache.nbytes / rt32.cache.nbytes
    assert 0.5 <= ratio < 0.52, ratio  # K and V halve; the validity mask and positions are a few bytes


def test_prefix_cache_rules_hold_in_bf16(monkeypatch):
    m = _served("bfloat16", monkeypatch)
    reqs = requests_for(m, 5, seed=12, cold=[4])
    rt = _runtime(m)
    miss = rt.serve(reqs)  # one batched prefix forward for all five + one packed suffix forward
    hit = rt.serve(reqs)
    assert [r.cache_hit for r in miss] == [False] * 5 and all(r.cache_hit for r in hit)
    for r, a, b in zip(reqs, miss, hit):
        np.testing.assert_allclose(a.embedding, b.embedding, atol=1e-6)  # the same stored KV either way
        with torch.no_grad(), autocast_for(m):  # cached == one full forward per scenario, in the serving dtype
            full = m.full_forward(to_user_batch([r], m), [ScenarioSpec(q) for q in r.queries])[0].float().numpy()
        assert _cos(a.embedding, full).min() > 0.999
    alone = [_runtime(m).serve([r])[0] for r in reqs]  # each request on its own: batching changes nothing
    for a, b in zip(miss, alone):
        assert _cos(a.embedding, b.embedding).min() > 0.999


def test_bf16_runtime_holds_twice_the_users_per_byte(monkeypatch):
    f32, b16 = _served("float32", monkeypatch), _served("bfloat16", monkeypatch)
    reqs = requests_for(f32, 8, seed=13)
    probe = _runtime(f32)
    probe.serve(reqs[:1])
    budget = 3 * probe.cache.nbytes + probe.cache.nbytes // 2  # room for three fp32 users
    held = {}
    for name, m in (("fp32", f32), ("bf16", b16)):
        rt = _runtime(m, budget)
        rt.serve(reqs)
        held[name] = len(rt.cache)
    assert held == {"fp32": 3, "bf16": 6}, held  # twice the users in the same bytes


def test_prepare_for_serving_is_idempotent(monkeypatch):
    m = _served("bfloat16", monkeypatch)
    again = copy.deepcopy(m)
    assert prepare_for_serving(again) == torch.bfloat16
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), again.state_dict().values()))
