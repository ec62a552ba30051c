"""The `text_encoder` Triton model (MiniLM) in bf16 and fp32, through its own model.py with a stand-in for
`triton_python_backend_utils`: the `compute` parameter picks the dtype (training.precision), and bf16 vectors stay
within rounding of the fp32 reference encoder (training.data.encoder.TextEncoder)."""
import importlib.util
import json
import sys

import pytest

np = pytest.importorskip("numpy")
torch = pytest.importorskip("torch")
from training.export.text_encoder import SOURCE_DIR, TextEncoderExportConfig, export_text_encoder  # noqa: E402

from tests.unit import fake_pb_utils  # noqa: E402

pytestmark = pytest.mark.model
TEXTS = ["liked: Toy Story (1995) Animation|Children's|Comedy", "disliked: Jaws 2 (1978) Horror|Thriller", "x"]


def _served(tmp_path, compute: str, monkeypatch):
    from training.export.contract import config_json

    monkeypatch.delenv("QANCHOR_PRECISION", raising=False)
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", fake_pb_utils.module())
    folder = export_text_encoder(tmp_path / compute, TextEncoderExportConfig(dtype="float32", compute=compute))
    spec = importlib.util.spec_from_file_location(f"text_encoder_{compute}", SOURCE_DIR / "model.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    model = mod.TritonPythonModel()
    model.initialize({"model_config": json.dumps(config_json(folder / "config.pbtxt"))})
    return model


def test_compute_parameter_picks_the_dtype_and_bf16_matches_fp32(tmp_path, monkeypatch):
    from training.data.encoder import TextEncoder

    torch.set_num_threads(1)
    ref = TextEncoder().encode(TEXTS)
    out = {}
    for compute in ("float32", "bfloat16"):
        model = _served(tmp_path, compute, monkeypatch)
        assert {p.dtype for p in model.model.parameters()} == {getattr(torch, compute)}
        resp = model.execute([{"TEXT": np.array([[t.encode()] for t in TEXTS], dtype=np.object_)}])[0]
        assert resp.error is None
        out[compute] = resp.outputs["EMBEDDING"]
    np.testing.assert_allclose(out["float32"], ref, atol=1e-5)
    cos = (out["bfloat16"] * ref).sum(1) / np.linalg.norm(out["bfloat16"], axis=1)
    assert cos.min() > 0.999, cos
    assert np.abs(out["bfloat16"] - ref).max() < 5e-3


def test_export_rejects_an_unknown_compute_setting():
    with pytest.raises(ValueError, match="compute"):
        TextEncoderExportConfig(compute="int8")
