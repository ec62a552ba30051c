"""A model version published while the `qanchor` Triton model runs is served by the next request naming it, with no
re-initialisation: atomic publish (training.export.publish), discovery in the backend (training.export.versions via
model.py), per-request errors for unknown or corrupt versions, and a bounded number of loaded versions."""
import importlib.util
import json
import shutil
import sys
import threading
from pathlib import Path

import pytest

np = pytest.importorskip("numpy")
pytest.importorskip("torch")
from training.export.publish import PublishError, inspect_artifact, publish_artifact  # noqa: E402
from training.export.qanchor import SOURCE_DIR, QAnchorExportConfig, export_qanchor  # noqa: E402

from tests.unit import fake_pb_utils  # noqa: E402

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def repos(tmp_path_factory):
    """The serving repository holds t1; a scratch repository holds t2 and t3 (exported, not yet published)."""
    serving = tmp_path_factory.mktemp("serving")
    export_qanchor(serving, QAnchorExportConfig(preset="tiny", model_version="t1"))
    scratch = tmp_path_factory.mktemp("scratch")
    arts = {}
    for v, seed in (("t2", 7), ("t3", 8)):  # other random weights than t1's
        arts[v] = export_qanchor(scratch, QAnchorExportConfig(preset="tiny", model_version=v,
                                                              overrides=[f"backbone.seed={seed}"]))
    # another feature schema: another tensor contract than the served config.pbtxt declares
    arts["wide"] = export_qanchor(scratch, QAnchorExportConfig(preset="tiny", model_version="wide",
                                                               overrides=["input.d_tab=7"]))
    return serving, arts


def _load(repo: Path, monkeypatch, max_loaded: int = 4):
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", fake_pb_utils.module())
    spec = importlib.util.spec_from_file_location("qanchor_triton_model_publish", SOURCE_DIR / "model.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    model = mod.TritonPythonModel()
    cfg = {"max_batch_size": 0, "parameters": {"model_versions": {"string_value": "t1"},
                                               "max_loaded_versions": {"string_value": str(max_loaded)}}}
    model.initialize({"model_config": json.dumps(cfg), "model_repository": str(repo / "qanchor"),
                      "model_version": "1", "model_instance_kind": "CPU"})
    return model


def _request(version_dir: Path, version: str) -> tuple[dict, np.ndarray]:
    ref = json.loads((version_dir / "reference" / "reference.json").read_text())
    user = ref["users"][0]
    n = 3  # the zero-shot reference scenarios
    b = lambda xs: np.array([x.encode() for x in xs], dtype=np.object_)  # noqa: E731
    req = {"USER_ID": b([user["user_id"]]), "FEATURE_VERSION": np.array([user["feature_version"]], np.int64),
           "MODEL_VERSION": b([version]), "TABULAR": np.asarray(user["tabular"], np.float32),
           "SCENARIO": b(["a"] * n), "QUERY_TEXT": b(ref["queries"][:n])}
    for s in user["events"]:
        req[f"EVENTS__{s}"] = np.asarray(user["events"][s], np.float16)
        req[f"MASK__{s}"] = np.asarray(user["mask"][s], bool)
    return req, np.asarray(user["embedding"], np.float32)[:n]


def _served(resp) -> str:
    assert resp.error is None, resp.error.msg
    return resp.outputs["MODEL_VERSION"].reshape(-1)[0].decode()


def test_published_version_is_served_without_reinitialising(repos, monkeypatch):
    serving, arts = repos
    model = _load(serving, monkeypatch)
    req2, ref2 = _request(arts["t2"], "t2")
    unknown = model.execute([req2])[0]
    assert unknown.error is not None and "unknown model version 't2'" in unknown.error.msg
    assert "qanchor model publish t2" in unknown.error.msg

    info = inspect_artifact(arts["t2"])
    target = publish_artifact(arts["t2"], serving, "t2", info.manifest_sha256)
    assert target == serving / "qanchor" / "1" / "models" / "t2"
    assert publish_artifact(arts["t2"], serving, "t2", info.manifest_sha256) == target  # idempotent
    assert not [p for p in target.parent.iterdir() if p.name.startswith(".")]  # no staging left behind

    req1, ref1 = _request(serving / "qanchor" / "1" / "models" / "t1", "t1")
    out = model.execute([req1, req2])  # one execute, two versions
    assert [_served(r) for r in out] == ["t1", "t2"]
    assert np.abs(out[0].outputs["EMBEDDING"] - ref1).max() <= 1e-5
    assert np.abs(out[1].outputs["EMBEDDING"] - ref2).max() <= 1e-5  # t2's own weights, not t1's
    assert np.abs(ref1 - ref2).max() > 1e-3
    assert model.runtime.model_versions == ["t1", "t2"] and model.runtime.loads == 1


def test_publish_refuses_changed_artifact_and_other_weights(repos, tmp_path):
    serving, arts = repos
    t3 = inspect_artifact(arts["t3"])
    with pytest.raises(PublishError, match="changed since it was registered"):
        publish_artifact(arts["t3"], serving, "t3", "0" * 64)
    with pytest.raises(PublishError, match="exported as model version 't3'"):
        publish_artifact(arts["t3"], serving, "t9", t3.manifest_sha256)
    with pytest.raises(PublishError, match="immutable"):
        publish_artifact(arts["t3"], serving, "t1", t3.manifest_sha256)
    with pytest.raises(PublishError, match="not a qanchor model repository"):
        publish_artifact(arts["t3"], tmp_path, "t3", t3.manifest_sha256)


def test_corrupt_version_fails_per_request_and_lru_bounds_loaded_versions(repos, monkeypatch, tmp_path):
    serving, arts = repos
    repo = tmp_path / "repo"
    shutil.copytree(serving, repo)
    models = repo / "qanchor" / "1" / "models"
    shutil.rmtree(models / "t2", ignore_errors=True)
    model = _load(repo, monkeypatch, max_loaded=2)
    broken = models / "t3"
    shutil.copytree(arts["t3"], broken)
    with open(broken / "weights.safetensors", "r+b") as f:  # flip bytes after the header
        f.seek(-8, 2)
        f.write(b"\0" * 8)
    req3, _ = _request(arts["t3"], "t3")
    req1, _ = _request(models / "t1", "t1")
    out = model.execute([req3, req1])
    assert "cannot be loaded" in out[0].error.msg and "sha256" in out[0].error.msg
    assert _served(out[1]) == "t1"  # the good request in the same execute is served

    shutil.rmtree(broken)
    publish_artifact(arts["t3"], repo, "t3", inspect_artifact(arts["t3"]).manifest_sha256)
    publish_artifact(arts["t2"], repo, "t2", inspect_artifact(arts["t2"]).manifest_sha256)
    req2, _ = _request(arts["t2"], "t2")
    assert _served(model.execute([req3])[0]) == "t3"  # the fixed folder is loaded (new inode)
    assert _served(model.execute([req2])[0]) == "t2"
    assert model.runtime.model_versions == ["t1", "t2"]  # t3 unloaded; the default t1 stays
    assert model.runtime.unloads == 1
    assert not any(k[0] == "t3" for k in model.runtime.cache._entries)
    bad = dict(req1, MODEL_VERSION=np.array([b"../t1"], dtype=np.object_))
    assert "not valid" in model.execute([bad])[0].error.msg


def test_version_for_another_tensor_contract_is_refused_once(repos, monkeypatch, tmp_path):
    serving, arts = repos
    repo = tmp_path / "repo"
    shutil.copytree(serving, repo)
    model = _load(repo, monkeypatch)
    publish_artifact(arts["wide"], repo, "wide", inspect_artifact(arts["wide"]).manifest_sha256)
    loads = []
    load = model.versions._load
    model.versions._load = lambda folder: loads.append(folder) or load(folder)
    req, _ = _request(repo / "qanchor" / "1" / "models" / "t1", "wide")
    for _ in range(2):
        err = model.execute([req])[0].error
        assert err is not None and "needs another tensor contract" in err.msg
    assert len(loads) == 1  # remembered until the folder changes: one load, not one per request
    assert model.runtime.model_versions == ["t1"]


def test_concurrent_publishes_of_one_version_both_succeed(repos, tmp_path):
    serving, arts = repos
    repo = tmp_path / "repo"
    shutil.copytree(serving, repo)
    sha = inspect_artifact(arts["t2"]).manifest_sha256
    n = 4
    barrier = threading.Barrier(n)
    results: list[object] = []

    def attempt() -> None:
        barrier.wait()
        try:
            results.append(publish_artifact(arts["t2"], repo, "t2", sha))
        except Exception as exc:  # noqa: BLE001  (the assertion below shows it)
            results.append(exc)

    threads = [threading.Thread(target=attempt) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    models = repo / "qanchor" / "1" / "models"
    assert results == [models / "t2"] * n
    assert sorted(p.name for p in models.iterdir()) == ["t1", "t2"]  # no staging folder left behind
