"""bf16 compute (training.precision): the switch, parity with fp32 on the tiny model, finite gradients, and the
prefix cache still equal to the full forward in the serving dtype."""
import pytest

torch = pytest.importorskip("torch")
from training.config import ConfigError, load_config  # noqa: E402
from training.losses import grad_cache_step  # noqa: E402
from training.model.embedder import QAnchorModel  # noqa: E402
from training.model.suffix import ScenarioSpec  # noqa: E402
from training.model.synthetic import activate_lora, random_users  # noqa: E402
from training.precision import (PrecisionError, apply_precision, autocast, autocast_for,  # noqa: E402
                                normalise, resolve_precision)

pytestmark = pytest.mark.model
torch.set_num_threads(1)
QUERIES = ["Will this user click concert ads?", "Likes comedies?", "x"]


def _model(overrides=()) -> QAnchorModel:
    m = QAnchorModel(load_config("tiny", list(overrides)))
    activate_lora(m)
    return m


def test_settings_resolve_and_env_overrides(monkeypatch):
    assert normalise("bf16") == "bfloat16" and normalise("FP32") == "float32" and normalise("") == "auto"
    with pytest.raises(PrecisionError, match="auto, float32"):
        normalise("fp8")
    monkeypatch.delenv("QANCHOR_PRECISION", raising=False)
    assert resolve_precision("float32", "cpu") == torch.float32
    assert resolve_precision("bfloat16", "cpu") == torch.bfloat16  # forced: allowed, with a warning if slow
    monkeypatch.setenv("QANCHOR_PRECISION", "fp32")
    assert resolve_precision("bfloat16", "cpu") == torch.float32  # the operator's override wins
    assert resolve_precision("bfloat16", "cpu", env=False) == torch.bfloat16
    with pytest.raises(ConfigError, match="backbone.compute"):
        load_config("tiny", ["backbone.compute=int8"])


def test_auto_picks_bf16_exactly_when_the_cpu_has_amx(monkeypatch, caplog):
    import training.precision as prec

    monkeypatch.delenv("QANCHOR_PRECISION", raising=False)
    monkeypatch.setattr(prec, "cpu_bf16_support", lambda: None)
    with caplog.at_level("INFO", logger="training.precision"):
        assert resolve_precision("auto", "cpu") == torch.float32
    assert "event=precision_resolved" in caplog.text and "dtype=float32" in caplog.text  # the fallback says so
    monkeypatch.setattr(prec, "cpu_bf16_support", lambda: "amx")
    assert resolve_precision("auto", "cpu") == torch.bfloat16
    # AVX512-BF16 without AMX runs bf16 matmuls slower than fp32 (measured): auto stays fp32 and says why
    monkeypatch.setattr(prec, "cpu_bf16_support", lambda: "avx512_bf16")
    caplog.clear()
    with caplog.at_level("INFO", logger="training.precision"):
        assert resolve_precision("auto", "cpu") == torch.float32
        assert resolve_precision("bf16", "cpu") == torch.bfloat16  # forced: allowed, with the warning
    assert "avx512_bf16 without amx" in caplog.text and "expect it to be slower than fp32" in caplog.text


def test_apply_precision_keeps_trainables_fp32():
    m = apply_precision(_model(), torch.bfloat16)
    for name, p in m.named_parameters():
        assert p.dtype == (torch.float32 if p.requires_grad else torch.bfloat16), name
    assert m.dtype == torch.bfloat16


def test_bf16_embeddings_close_to_fp32_and_cache_equals_full_in_bf16():
    ref = _model().eval()
    users = random_users(ref.cfg.input, 5, seed=3, cold=[4])
    sc = [ScenarioSpec(q) for q in QUERIES]
    with torch.no_grad():
        e32 = ref.embed(ref.encode_prefix(users), sc)
    low = apply_precision(_model().eval(), torch.bfloat16)  # same seeds -> same weights
    with torch.no_grad(), autocast_for(low):
        cached = low.embed(low.encode_prefix(users), sc)
        full = low.full_forward(users, sc)
    assert cached.dtype == torch.float32  # embeddings leave the model in fp32 whatever the compute dtype
    cos = torch.nn.functional.cosine_similarity(cached, e32, dim=-1)
    assert cos.min().item() > 0.99, cos
    # in the serving dtype the cache still equals the full pass, to bf16 resolution
    assert torch.nn.functional.cosine_similarity(cached, full, dim=-1).min().item() > 0.999


def test_bf16_training_step_gives_finite_gradients_close_to_fp32():
    grads = {}
    for dtype in (torch.float32, torch.bfloat16):
        m = apply_precision(_model(["loss.identity_weight=1.0"]), dtype).train()
        users = random_users(m.cfg.input, 4, seed=5)
        ctx = autocast(dtype, "cpu") if dtype != torch.float32 else None
        stats = grad_cache_step(m.pretrain_forward, users, ["q a", "q b", "q a", "q c"], ["x", "yy", "z z", "w"],
                                m.cfg.loss, chunk_size=2, autocast=ctx)
        assert all(v == v and abs(v) < 1e6 for v in stats.values()), stats  # no NaN / inf
        g = torch.cat([p.grad.flatten() for p in m.parameters() if p.requires_grad and p.grad is not None])
        assert torch.isfinite(g).all()
        grads[dtype] = g
    cos = torch.nn.functional.cosine_similarity(grads[torch.float32], grads[torch.bfloat16], dim=0)
    assert cos.item() > 0.9, cos
