"""Config presets, typed overrides, validation and JSON round trip."""
import json

import pytest

pytest.importorskip("torch")
from training.config import ConfigError, QAnchorConfig, load_config, parse_readout  # noqa: E402

pytestmark = pytest.mark.model


@pytest.mark.parametrize("name", ["tiny", "smollm2", "qwen2.5-0.5b"])
def test_presets_load_and_round_trip_through_json(name):
    cfg = load_config(name)
    again = QAnchorConfig.from_dict(json.loads(cfg.to_json()))
    assert again == cfg
    assert cfg.input.d_enc == 384 and cfg.head.out == 128


def test_overrides_are_typed_and_validated():
    cfg = load_config("tiny", ["loss.tau=0.05", "lora.r=8", "loss.negative_terms=code", "optim.lr=1"])
    assert cfg.loss.tau == 0.05 and cfg.lora.r == 8
    assert cfg.loss.negative_terms == ["ud", "uu", "du"]
    assert isinstance(cfg.optim.lr, float) and cfg.optim.lr == 1.0
    with pytest.raises(ConfigError, match="unknown key"):
        load_config("tiny", ["loss.temperature=0.1"])
    with pytest.raises(ConfigError, match="expected int"):
        load_config("tiny", ["lora.r=abc"])
    with pytest.raises(ConfigError, match="tau"):
        load_config("tiny", ["loss.tau=-1"])
    with pytest.raises(ConfigError, match="not found"):
        load_config("no-such-preset")


def test_paper_negative_terms_are_the_default_and_unknown_terms_rejected():
    assert load_config("smollm2").loss.negative_terms == ["ud", "uu", "du", "dd"]
    with pytest.raises(ConfigError):
        load_config("tiny", ["loss.negative_terms=[ud, xx]"])


def test_invalid_sources_are_rejected():
    with pytest.raises(ConfigError, match="unique"):
        load_config("tiny", ["input.sources=[{name: a, k: 1}, {name: a, k: 2}]"])
    with pytest.raises(ConfigError, match="k must be"):
        load_config("tiny", ["input.sources=[{name: a, k: 0}]"])


def test_head_embedding_is_validated():
    assert load_config("tiny").head.embedding == "projected"
    assert load_config("tiny", ["head.embedding=hidden"]).head.embedding == "hidden"
    with pytest.raises(ConfigError, match="head.embedding"):
        load_config("tiny", ["head.embedding=last_layer"])


def test_head_layer_and_readout_strings_are_validated():
    cfg = load_config("tiny", ["head.embedding=hidden", "head.layer=2"])
    assert cfg.head.layer == 2 and cfg.head.readout == "hidden@2"
    assert load_config("tiny").head.readout == "projected"
    with pytest.raises(ConfigError, match="needs head.embedding hidden"):
        load_config("tiny", ["head.layer=2"])
    for bad in ("0", "true", "1.5"):
        with pytest.raises(ConfigError, match="head.layer"):
            load_config("tiny", ["head.embedding=hidden", f"head.layer={bad}"])
    assert parse_readout("hidden@24") == ("hidden", 24) and parse_readout("projected") == ("projected", None)
    for bad in ("hidden@", "hidden@x", "projected@3", "last", "hidden@0"):
        with pytest.raises(ConfigError):
            parse_readout(bad)
