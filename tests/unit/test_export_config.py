"""Exporter: config.pbtxt rendering (contract v1/v2, instance kind, K per source) and the repository layout."""
import json

import pytest

pytest.importorskip("torch")
from training.config import load_config  # noqa: E402
from training.export.artifact import ServingArtifactError, verify_artifact  # noqa: E402
from training.export.qanchor import QAnchorExportConfig, export_qanchor, render_config  # noqa: E402

pytestmark = pytest.mark.model


def test_v1_config_matches_the_gateway_contract():
    cfg = load_config("smollm2")
    text = render_config(QAnchorExportConfig(preset="smollm2"), cfg.input, ["a", "b"], 128)
    assert "max_batch_size: 0" in text and "dynamic_batching" not in text and "allow_ragged_batch" not in text
    assert '{ name: "EVENTS__liked" data_type: TYPE_FP16 dims: [ 32, 384 ] }' in text
    assert '{ name: "MASK__disliked" data_type: TYPE_BOOL dims: [ 16 ] }' in text
    assert f'{{ name: "TABULAR" data_type: TYPE_FP32 dims: [ {cfg.input.d_tab} ] }}' in text  # = sources.yaml
    assert '{ name: "EMBEDDING" data_type: TYPE_FP32 dims: [ -1, 128 ] }' in text
    assert 'string_value: "a,b"' in text and "KIND_CPU" in text


def test_v2_config_batches_ragged_requests_on_gpu():
    cfg = load_config("tiny")
    text = render_config(QAnchorExportConfig(preset="tiny", contract="v2", instance_kind="gpu", max_batch_size=8),
                         cfg.input, ["a"], 128)
    assert "max_batch_size: 8" in text and "dynamic_batching" in text and "KIND_GPU" in text
    inputs = text.split("input [")[1].split("]\noutput")[0]
    assert inputs.count("allow_ragged_batch: true") == inputs.count("name:")


@pytest.mark.parametrize("bad", [dict(instance_kind="tpu"), dict(contract="v3"), dict(model_version="a,b")])
def test_bad_export_settings_are_rejected(bad):
    with pytest.raises(ValueError):
        QAnchorExportConfig(preset="tiny", **bad)


def test_export_adds_versions_and_detects_tampering(tmp_path):
    first = export_qanchor(tmp_path, QAnchorExportConfig(preset="tiny", model_version="v-a"))
    second = export_qanchor(tmp_path, QAnchorExportConfig(preset="tiny", model_version="v-b"))
    text = (tmp_path / "qanchor" / "config.pbtxt").read_text()
    assert 'string_value: "v-a,v-b"' in text  # the first export stays the default
    assert (tmp_path / "qanchor" / "1" / "model.py").is_file()
    manifest = verify_artifact(second)
    assert manifest["model_version"] == "v-b" and "weights.safetensors" in manifest["files"]
    assert not any(p.suffix in (".pt", ".pkl", ".bin") for p in first.rglob("*"))  # nothing to unpickle
    ref = json.loads((first / "reference" / "reference.json").read_text())
    assert ref["users"][-1]["feature_version"] == 0 and len(ref["users"][0]["embedding"]) == len(ref["queries"])
    (first / "config.json").write_text((first / "config.json").read_text() + " ")
    with pytest.raises(ServingArtifactError, match="sha256 mismatch"):
        verify_artifact(first)
    export_qanchor(tmp_path, QAnchorExportConfig(preset="tiny", model_version="v-b", only=True))
    assert not first.exists()
    assert 'string_value: "v-b"' in (tmp_path / "qanchor" / "config.pbtxt").read_text()
