"""Export round trip: the tiny Q-Anchor model exported by `python -m training.export`, served by the REAL Triton of
the session stack, returns what PyTorch's full forward returns (max abs diff <= 1e-5, fp32), reports a cache hit on
a user's second request and a miss after a feature-version bump, and fails only the bad scenario of a request.

The export runs in the model env (subprocess, the interpreter the stack runs Triton with); it writes fixed inputs
and the PyTorch reference embeddings next to the model (reference/reference.json), which this test sends.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from services.stack import Endpoints, Stack
from tests.integration.conftest import export_tiny_qanchor, load_model_and_wait

pytestmark = pytest.mark.integration
VERSION = "tiny-roundtrip"
TOL = 1e-5


@pytest.fixture(scope="module")
def exported(stack_manager: Stack, stack: Endpoints) -> dict:
    version_dir = export_tiny_qanchor(stack_manager.settings.model_python, stack.model_repository, VERSION,
                                      "--contract", "v1")  # v2 (dynamic batching): test_triton_batching.py
    client = grpcclient.InferenceServerClient(stack.triton_grpc)
    load_model_and_wait(client, "qanchor")
    ref = json.loads((version_dir / "reference" / "reference.json").read_text())
    yield {"client": client, "ref": ref, "dir": version_dir}
    client.unload_model("qanchor")
    client.close()


def _bytes(values: list[str]) -> np.ndarray:
    return np.array([v.encode() for v in values], dtype=np.object_)


def _inputs(ref: dict, user: dict, version_dir: Path, feature_version: int | None = None,
            shas: list[str] | None = None, model_version: str = VERSION) -> list[grpcclient.InferInput]:
    arts = [str(version_dir / "reference" / a) if a else "" for a in ref["prompt_artifacts"]]
    tensors = [("USER_ID", _bytes([user["user_id"]]), "BYTES"),
               ("FEATURE_VERSION", np.array([user["feature_version"] if feature_version is None else feature_version],
                                            np.int64), "INT64"),
               ("MODEL_VERSION", _bytes([model_version]), "BYTES")]
    for s in user["events"]:
        tensors.append((f"EVENTS__{s}", np.asarray(user["events"][s], np.float16), "FP16"))
        tensors.append((f"MASK__{s}", np.asarray(user["mask"][s], bool), "BOOL"))
    tensors += [("TABULAR", np.asarray(user["tabular"], np.float32), "FP32"),
                ("SCENARIO", _bytes([f"s{i}" for i in range(len(ref["queries"]))]), "BYTES"),
                ("QUERY_TEXT", _bytes(ref["queries"]), "BYTES"),
                ("PROMPT_VERSION", _bytes(ref["prompt_versions"]), "BYTES"),
                ("PROMPT_ARTIFACT", _bytes(arts), "BYTES"),
                ("PROMPT_SHA256", _bytes(shas or ref["prompt_shas"]), "BYTES")]
    out = []
    for name, arr, dtype in tensors:
        inp = grpcclient.InferInput(name, list(arr.shape), dtype)
        inp.set_data_from_numpy(arr)
        out.append(inp)
    return out


def _infer(exported: dict, user: dict, **kw) -> grpcclient.InferResult:
    return exported["client"].infer("qanchor", _inputs(exported["ref"], user, exported["dir"], **kw),
                                    client_timeout=60)


def test_triton_equals_pytorch_and_second_request_hits(exported):
    for user in exported["ref"]["users"]:  # a warm user and a cold-start user (feature version 0)
        want = np.asarray(user["embedding"], np.float32)  # [S, 128] from PyTorch full_forward
        first = _infer(exported, user)
        got = first.as_numpy("EMBEDDING")
        assert got.shape == want.shape
        assert np.abs(got - want).max() <= TOL, f"{user['user_id']}: max abs diff {np.abs(got - want).max()}"
        assert first.as_numpy("STATUS").tolist() == [0] * want.shape[0]
        assert first.as_numpy("MODEL_VERSION")[0].decode() == VERSION
        assert bool(first.as_numpy("CACHE_HIT")[0]) is False
        second = _infer(exported, user)
        assert bool(second.as_numpy("CACHE_HIT")[0]) is True
        assert np.abs(second.as_numpy("EMBEDDING") - want).max() <= TOL  # the cached prefix gives the same numbers


def test_feature_version_bump_is_a_miss(exported):
    user = exported["ref"]["users"][0]
    _infer(exported, user)  # warm the cache (hit or miss, depending on test order)
    assert bool(_infer(exported, user).as_numpy("CACHE_HIT")[0]) is True
    bumped = _infer(exported, user, feature_version=user["feature_version"] + 1)
    assert bool(bumped.as_numpy("CACHE_HIT")[0]) is False
    assert np.abs(bumped.as_numpy("EMBEDDING") - np.asarray(user["embedding"])).max() <= TOL  # same features


def test_bad_prompt_fails_only_its_scenario_and_bad_version_only_its_request(exported):
    ref, user = exported["ref"], exported["ref"]["users"][0]
    shas = list(ref["prompt_shas"])
    shas[-1] = "0" * 64  # the registry and the file disagree
    res = _infer(exported, user, shas=shas)
    status = res.as_numpy("STATUS").tolist()
    assert status[:-1] == [0] * (len(status) - 1) and status[-1] == 15  # DATA_LOSS, the others still served
    assert "sha256" in res.as_numpy("ERROR")[-1].decode()
    assert not res.as_numpy("EMBEDDING")[-1].any()
    want = np.asarray(user["embedding"], np.float32)
    assert np.abs(res.as_numpy("EMBEDDING")[:-1] - want[:-1]).max() <= TOL
    with pytest.raises(InferenceServerException, match="unknown model version 'no-such-model'") as info:
        _infer(exported, user, model_version="no-such-model")  # not in the repository: NOT_FOUND, says what to do
    assert "NOT_FOUND" in str(info.value.status()) and "qanchor model publish" in info.value.message()
    assert _infer(exported, user).as_numpy("STATUS").tolist() == [0] * want.shape[0]  # the model is still fine


def test_config_declares_served_versions(exported):
    cfg = exported["client"].get_model_config("qanchor", as_json=True)["config"]
    # `--only` served this export alone among exports, as the default; versions other tests of the session published
    # into the same repository stay listed after it (the registry's, never removed by an export)
    listed = cfg["parameters"]["model_versions"]["string_value"].split(",")
    assert listed[0] == VERSION
    from training.export.publish import is_published

    models = exported["dir"].parent
    assert all(is_published(models / v) for v in listed[1:]), listed
    assert cfg["instance_group"][0]["kind"] == "KIND_CPU"
