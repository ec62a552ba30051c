"""The text_encoder Triton model directory and the ingest settings (no server needed)."""
from __future__ import annotations

import pytest

from training.export.text_encoder import SOURCE_DIR, TextEncoderExportConfig, export_text_encoder, render_config


def test_export_writes_config_and_model(tmp_path):
    out = export_text_encoder(tmp_path, TextEncoderExportConfig(dtype="float32", max_batch_size=64))
    assert out == tmp_path / "text_encoder"
    assert (out / "1" / "model.py").read_text() == (SOURCE_DIR / "model.py").read_text()
    cfg = (out / "config.pbtxt").read_text()
    assert 'name: "text_encoder"' in cfg and 'backend: "python"' in cfg and "max_batch_size: 64" in cfg
    assert "TYPE_FP32" in cfg and "dims: [ 384 ]" in cfg and "KIND_CPU" in cfg
    assert not list(tmp_path.rglob("*.tmp"))
    # idempotent: a second export rewrites the same files
    export_text_encoder(tmp_path)
    assert "TYPE_FP16" in (out / "config.pbtxt").read_text()


def test_export_config_validates():
    with pytest.raises(ValueError, match="dtype"):
        TextEncoderExportConfig(dtype="int8")
    with pytest.raises(ValueError, match="device"):
        TextEncoderExportConfig(device="tpu")
    assert "KIND_GPU" in render_config(TextEncoderExportConfig(device="gpu"))


def test_ingest_settings_resolve_stack_ports(monkeypatch):
    pytest.importorskip("kafka", reason="services env only")
    from services.ingest.settings import IngestSettings

    monkeypatch.setenv("QANCHOR_PORT_BASE", "26000")
    monkeypatch.setenv("INGEST_GROUP_ID", "g1")
    s = IngestSettings()
    assert (s.resolved_kafka_bootstrap(), s.resolved_triton_url(), s.resolved_metrics_port(), s.group_id) == \
        ("127.0.0.1:26092", "127.0.0.1:26001", 26061, "g1")
    assert str(s.resolved_feast_location()).endswith("feast/feature_store.yaml")
