"""Exporter: config.pbtxt rendering (contract v1/v2, instance kind, K per source) and the repository layout."""
import json

import pytest

pytest.importorskip("torch")
from training.config import load_config  # noqa: E402
from training.export.artifact import ServingArtifactError, verify_artifact  # noqa: E402
from training.export.contract import read_model_config  # noqa: E402
from training.export.qanchor import QAnchorExportConfig, export_qanchor, render_config  # noqa: E402

pytestmark = pytest.mark.model


def _tensors(entries) -> dict:
    """{name: (config datatype, dims, allow_ragged_batch)} of a ModelConfig's inputs or outputs."""
    from tritonclient.grpc import model_config_pb2 as mc

    return {t.name: (mc.DataType.Name(t.data_type), list(t.dims), getattr(t, "allow_ragged_batch", False))
            for t in entries}


def test_v1_config_matches_the_gateway_contract():
    cfg = load_config("smollm2")
    text = render_config(QAnchorExportConfig(preset="smollm2", contract="v1"), cfg.input, ["a", "b"], 128)
    parsed = read_model_config(text)  # config.pbtxt is protobuf text format: Triton reads exactly this
    assert parsed.max_batch_size == 0 and not parsed.HasField("dynamic_batching")
    inputs, outputs = _tensors(parsed.input), _tensors(parsed.output)
    assert not any(ragged for _, _, ragged in inputs.values())
    assert inputs["EVENTS__liked"] == ("TYPE_FP16", [32, 384], False)
    assert inputs["MASK__disliked"] == ("TYPE_BOOL", [16], False)
    assert inputs["TABULAR"] == ("TYPE_FP32", [cfg.input.d_tab], False)  # = sources.yaml tabular_dim
    assert outputs["EMBEDDING"] == ("TYPE_FP32", [-1, 128], False)
    assert 'string_value: "a,b"' in text and parsed.parameters["model_versions"].string_value == "a,b"
    assert "KIND_CPU" in text


def test_v2_is_the_default():
    assert QAnchorExportConfig(preset="tiny").contract == "v2"


def test_v2_config_batches_ragged_requests_on_gpu():
    cfg = load_config("tiny")
    text = render_config(QAnchorExportConfig(preset="tiny", contract="v2", instance_kind="gpu", max_batch_size=8),
                         cfg.input, ["a"], 128)
    parsed = read_model_config(text)
    assert parsed.max_batch_size == 8 and parsed.HasField("dynamic_batching") and "KIND_GPU" in text
    assert all(ragged for _, _, ragged in _tensors(parsed.input).values())


@pytest.mark.parametrize("bad", [dict(instance_kind="tpu"), dict(contract="v3"), dict(model_version="a,b"),
                                 dict(max_batch_size=0), dict(max_queue_delay_us=-1)])
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


def test_only_keeps_published_versions(tmp_path):
    """`--only` (what the stack runs when its default model changes) drops other exports, never what `qanchor model
    publish` put there: A/B arms may name those, and the registry owns them."""
    from training.export.publish import PUBLISHED_MARKER, inspect_artifact, publish_artifact

    other = export_qanchor(tmp_path / "elsewhere", QAnchorExportConfig(preset="tiny", model_version="pub-1"))
    export_qanchor(tmp_path, QAnchorExportConfig(preset="tiny", model_version="v-a"))
    published = publish_artifact(other, tmp_path, "pub-1", inspect_artifact(other).manifest_sha256)
    assert (published / PUBLISHED_MARKER).is_file()
    verify_artifact(published)  # the marker is not part of the artifact: its manifest still verifies
    export_qanchor(tmp_path, QAnchorExportConfig(preset="tiny", model_version="v-b", only=True))
    versions = tmp_path / "qanchor" / "1" / "models"
    assert sorted(p.name for p in versions.iterdir()) == ["pub-1", "v-b"]  # v-a (an export) went
    assert 'string_value: "v-b,pub-1"' in (tmp_path / "qanchor" / "config.pbtxt").read_text()  # the export leads
