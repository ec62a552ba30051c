"""Cross-request batching on the REAL Triton of the session stack: the tiny `qanchor` exported with contract v2
(`python -m training.export`'s default: leading batch dimension, ragged inputs, dynamic batcher). Concurrent requests
of different users and scenario counts reach one `execute` together (Triton's statistics: fewer executions than
inferences), every one still gets the PyTorch reference numbers, and a request for an unknown model version fails
alone. Requests are built with the one tensor contract (training.export.contract), as the gateway builds them.
"""
from __future__ import annotations

import json
import threading

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from services.gateway.clients.triton import served_counts
from services.stack import Endpoints, Stack
from tests.integration.conftest import export_tiny_qanchor, load_model_and_wait
from tests.integration.triton_stats import quiet, settled
from training.export.contract import Contract, batched

pytestmark = pytest.mark.integration
VERSION = "tiny-batching"
TOL = 1e-5
N = 10  # concurrent requests: all fit one batch (max_batch_size 16)


@pytest.fixture(scope="module")
def exported(stack_manager: Stack, stack: Endpoints) -> dict:
    # A long queue delay so the requests sent at once are batched however slow this machine is.
    version_dir = export_tiny_qanchor(stack_manager.settings.model_python, stack.model_repository, VERSION,
                                      "--max-queue-delay-us", "1000000")
    client = grpcclient.InferenceServerClient(stack.triton_grpc)
    load_model_and_wait(client, "qanchor")
    cfg = client.get_model_config("qanchor", as_json=True)
    yield {"client": client, "ref": json.loads((version_dir / "reference" / "reference.json").read_text()),
           "dir": version_dir, "contract": Contract.from_model_config(cfg), "batched": batched(cfg)}
    client.unload_model("qanchor")
    client.close()


def _inputs(ex: dict, user: dict, uid: str, n_scen: int, model_version: str = VERSION) -> list:
    ref, c = ex["ref"], ex["contract"]
    arts = [str(ex["dir"] / "reference" / a) if a else "" for a in ref["prompt_artifacts"]]
    values = {"user_id": uid, "feature_version": user["feature_version"], "model_version": model_version,
              "event_vecs": user["events"], "event_mask": user["mask"], "tabular": user["tabular"],
              "scenarios": [f"s{i}" for i in range(n_scen)], "queries": ref["queries"][:n_scen],
              "prompt_versions": ref["prompt_versions"][:n_scen], "prompt_artifacts": arts[:n_scen],
              "prompt_shas": ref["prompt_shas"][:n_scen]}
    out = []
    for t, arr in c.encode(c.inputs, values, batched=ex["batched"]):
        inp = grpcclient.InferInput(t.name, list(arr.shape), t.datatype)
        inp.set_data_from_numpy(arr)
        out.append(inp)
    return out


def _stats(client) -> tuple[int, int]:
    c = served_counts(client, "qanchor")
    return c.inferences, c.executions


def test_concurrent_requests_share_an_execute_and_keep_their_numbers(exported):
    assert exported["batched"], "the exporter's default should be contract v2 (max_batch_size > 0)"
    client, users = exported["client"], exported["ref"]["users"]
    n_all = len(exported["ref"]["queries"])
    plan = [(users[i % len(users)], f"batch-user-{i}", 1 + i % n_all) for i in range(N)]  # different users and S
    plan.append((users[0], "wrong-version", 2))
    results: dict[int, tuple] = {}
    done = threading.Event()
    lock = threading.Lock()
    before = quiet(lambda: _stats(client))  # earlier requests have all landed

    def callback(i: int):
        def cb(result, error):
            with lock:
                results[i] = (result, error)
                if len(results) == len(plan):
                    done.set()
        return cb

    for i, (user, uid, n) in enumerate(plan):
        version = "no-such-model" if uid == "wrong-version" else VERSION
        client.async_infer("qanchor", _inputs(exported, user, uid, n, version), callback(i), client_timeout=120)
    assert done.wait(150), "not every request was answered"
    now = settled(lambda: _stats(client), lambda st: st[0] - before[0] >= len(plan))
    inferences, executions = (a - b for a, b in zip(now, before))
    assert inferences == len(plan) and executions < inferences, (inferences, executions)
    misses = 0
    for i, (user, uid, n) in enumerate(plan):
        result, error = results[i]
        if uid == "wrong-version":
            assert error is not None and "not served" in str(error)
            continue
        assert error is None, error
        c = exported["contract"]
        out = c.decode(c.outputs, result.as_numpy, batched=True)
        want = np.asarray(user["embedding"], np.float32)[:n]
        assert out["embedding"].shape == want.shape and np.abs(out["embedding"] - want).max() <= TOL, uid
        assert out["status"].tolist() == [0] * n
        misses += not out["cache_hit"]
    warm = sum(1 for user, uid, _ in plan if user["feature_version"] and uid != "wrong-version")
    assert misses == warm + 1  # every warm user's prefix, and the one prefix all cold-start users share
