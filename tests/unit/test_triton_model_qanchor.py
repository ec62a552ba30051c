"""The `qanchor` Triton adapter (model.py) with a stand-in for `triton_python_backend_utils`: tensor decoding for
contract v1 and v2, one response per request, a malformed request failing alone. The numbers themselves are checked
against PyTorch on the real Triton in tests/integration/test_triton_qanchor.py."""
import importlib.util
import json
import sys
from pathlib import Path

import pytest

np = pytest.importorskip("numpy")
pytest.importorskip("torch")
from training.export.qanchor import SOURCE_DIR, QAnchorExportConfig, export_qanchor  # noqa: E402

from tests.unit import fake_pb_utils  # noqa: E402

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    repo = tmp_path_factory.mktemp("repo")
    version_dir = export_qanchor(repo, QAnchorExportConfig(preset="tiny", model_version="t1"))
    return repo, version_dir, json.loads((version_dir / "reference" / "reference.json").read_text())


def _load(repo: Path, contract: str, monkeypatch):
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", fake_pb_utils.module())
    spec = importlib.util.spec_from_file_location("qanchor_triton_model", SOURCE_DIR / "model.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    model = mod.TritonPythonModel()
    cfg = {"max_batch_size": 8 if contract == "v2" else 0,
           "parameters": {"model_versions": {"string_value": "t1"}, "cache_bytes": {"string_value": "100000000"}}}
    model.initialize({"model_config": json.dumps(cfg), "model_repository": str(repo / "qanchor"),
                      "model_version": "1", "model_instance_kind": "CPU"})
    return model


def _request(ref, user, version_dir, batched: bool) -> dict:
    b = lambda xs: np.array([x.encode() for x in xs], dtype=np.object_)  # noqa: E731
    arts = [str(version_dir / "reference" / a) if a else "" for a in ref["prompt_artifacts"]]
    req = {"USER_ID": b([user["user_id"]]), "FEATURE_VERSION": np.array([user["feature_version"]], np.int64),
           "MODEL_VERSION": b(["t1"]), "TABULAR": np.asarray(user["tabular"], np.float32),
           "SCENARIO": b(["a"] * len(ref["queries"])), "QUERY_TEXT": b(ref["queries"]),
           "PROMPT_VERSION": b(ref["prompt_versions"]), "PROMPT_ARTIFACT": b(arts),
           "PROMPT_SHA256": b(ref["prompt_shas"])}
    for s in user["events"]:
        req[f"EVENTS__{s}"] = np.asarray(user["events"][s], np.float16)
        req[f"MASK__{s}"] = np.asarray(user["mask"][s], bool)
    return {k: v[None] for k, v in req.items()} if batched else req


@pytest.mark.parametrize("contract", ["v1", "v2"])
def test_one_response_per_request_and_bad_request_fails_alone(exported, contract, monkeypatch):
    repo, version_dir, ref = exported
    model = _load(repo, contract, monkeypatch)
    batched = contract == "v2"
    good = [_request(ref, u, version_dir, batched) for u in ref["users"]]
    bad = dict(good[0])
    del bad["TABULAR"]
    responses = model.execute([good[0], bad, good[1], good[0]])
    assert len(responses) == 4
    assert responses[1].error is not None and "TABULAR" in responses[1].error.msg
    for resp, user in zip([responses[0], responses[2]], ref["users"]):
        assert resp.error is None
        emb = resp.outputs["EMBEDDING"][0] if batched else resp.outputs["EMBEDDING"]
        assert np.abs(emb - np.asarray(user["embedding"], np.float32)).max() <= 1e-5
        status = resp.outputs["STATUS"].reshape(-1).tolist()
        assert status == [0] * len(ref["queries"])
    hits = [bool(r.outputs["CACHE_HIT"].reshape(-1)[0]) for r in (responses[0], responses[2], responses[3])]
    assert hits == [False, False, True]  # the same user twice in one execute: encoded once, second is a hit
    assert responses[0].outputs["MODEL_VERSION"].reshape(-1)[0] == b"t1"


def test_hidden_embedding_export_declares_its_width_and_its_own_version(tmp_path):
    """head.embedding=hidden: the Triton config declares the backbone's width, the content-addressed version string
    says which read-out it serves (same weights, other contract)."""
    version_dir = export_qanchor(tmp_path, QAnchorExportConfig(preset="tiny", overrides=["head.embedding=hidden"]))
    version = version_dir.name
    assert version.startswith("tiny-") and version.endswith("-hidden")
    ref = json.loads((version_dir / "reference" / "reference.json").read_text())
    width = len(ref["users"][0]["embedding"][0])
    assert width != 128  # the tiny backbone's hidden size, not the head's
    pbtxt = (tmp_path / "qanchor" / "config.pbtxt").read_text()
    assert f'name: "EMBEDDING"\n  data_type: TYPE_FP32\n  dims: -1\n  dims: {width}\n' in pbtxt
