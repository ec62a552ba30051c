"""A client that sets no deadline and knows the API only through server reflection: grpcurl (built from the Go
module proxy by scripts/ensure_grpcurl.sh), against every RPC of the gateway and the registry on the real stack.

Before the gateway read "no deadline" as ~9e18 seconds left, every such call failed with DEADLINE_EXCEEDED (and a
batch with INTERNAL): grpcurl and most client libraries send no deadline by default.
"""
from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest

from conftest import grpcurl_call as call
from services.gateway.ab_config import load_config
from services.gateway.routing import assign
from test_gateway_stack import ADMIN, AB, SHA, TOKEN, reference, world  # noqa: F401  (world is a fixture)

pytestmark = pytest.mark.integration


def test_reflection_lists_every_service(world, grpcurl) -> None:  # type: ignore[no-untyped-def]
    for target, service in ((world["client"].target, "qanchor.v1.EmbeddingService"),
                            (world["registry_target"], "qanchor.v1.ScenarioRegistry")):
        listed = subprocess.run([grpcurl, "-plaintext", target, "list"], capture_output=True, text=True,
                                timeout=60).stdout.split()
        assert service in listed and "grpc.health.v1.Health" in listed


def test_every_gateway_rpc_without_a_deadline(world, grpcurl) -> None:  # type: ignore[no-untyped-def]
    target, users, queries = world["client"].target, world["users"], world["queries"]
    cfg = load_config(AB)
    arm = assign(cfg, "concert", "alice").arm
    prompt, sha = ("2", SHA) if arm == "tuned" else ("zero-shot", "")
    want = reference(users["alice"], queries["concert"], prompt, sha)

    one = call(grpcurl, target, "qanchor.v1.EmbeddingService/GetEmbedding",
               {"user_id": "alice", "scenario": "concert"}, TOKEN)
    np.testing.assert_allclose(one["embedding"]["values"], want, atol=1e-5)

    batch = call(grpcurl, target, "qanchor.v1.EmbeddingService/BatchGetEmbeddings",
                 {"items": [{"user_id": "alice", "scenario": "concert"}, {"user_id": "alice", "scenario": "ghost"},
                            {"user_id": "u:bob@example", "scenario": "churn"}]}, TOKEN)
    results = batch["results"]
    np.testing.assert_allclose(results[0]["embedding"]["values"], want, atol=1e-5)
    assert results[1]["error"]["code"] == 5  # NOT_FOUND for that item only
    np.testing.assert_allclose(results[2]["embedding"]["values"],
                               reference(users["u:bob@example"], queries["churn"], "zero-shot"), atol=1e-5)

    many = call(grpcurl, target, "qanchor.v1.EmbeddingService/GetUserEmbeddings",
                {"user_id": "alice", "scenarios": ["churn", "promo"]}, TOKEN)
    for r, name in zip(many["results"], ("churn", "promo")):
        np.testing.assert_allclose(r["embedding"]["values"], reference(users["alice"], queries[name], "zero-shot"),
                                   atol=1e-5)
    health = call(grpcurl, target, "grpc.health.v1.Health/Check", {"service": "qanchor.v1.EmbeddingService"}, TOKEN)
    assert health["status"] == "SERVING"


def test_every_registry_rpc_without_a_deadline(world, grpcurl) -> None:  # type: ignore[no-untyped-def]
    target = world["registry_target"]
    method = "qanchor.v1.ScenarioRegistry/"
    created = call(grpcurl, target, method + "RegisterScenario",
                   {"name": "grpcurl_made", "query_text": "Does this user use grpcurl?"}, ADMIN)
    assert created.get("activeVersion", created.get("active_version")) == 1  # grpcurl prints proto field names
    assert call(grpcurl, target, method + "GetScenario", {"name": "grpcurl_made"}, ADMIN)["name"] == "grpcurl_made"
    names = {s["name"] for s in call(grpcurl, target, method + "ListScenarios", {}, ADMIN)["scenarios"]}
    assert {"concert", "churn", "promo", "grpcurl_made"} <= names
    versions = call(grpcurl, target, method + "ListPromptVersions", {"scenario": "concert"}, ADMIN)["versions"]
    assert [v["version"] for v in versions] == [1, 2]
    promoted = call(grpcurl, target, method + "PromotePromptVersion", {"scenario": "concert", "version": 2}, ADMIN)
    assert promoted["status"] == "PROMPT_STATUS_ACTIVE"
    for rpc, body in ((method + "StartTuningJob", {"scenario": "grpcurl_made", "labels_uri": "file:///l.csv"}),
                      (method + "GetTuningJob", {"job_id": "no-such-job"})):
        proc = subprocess.run([grpcurl, "-plaintext", "-H", f"authorization: Bearer {ADMIN}", "-d", json.dumps(body),
                               target, rpc], capture_output=True, text=True, timeout=120)
        # Answered with a status (no Celery broker in this test; an unknown job), not timed out.
        assert proc.returncode != 0 and "Code:" in proc.stderr and "DeadlineExceeded" not in proc.stderr, proc.stderr


def _status(grpcurl: str, target: str, method: str, body: str, token: str) -> str:
    """The gRPC status grpcurl reports for a call expected to fail (raw JSON body: malformed input too)."""
    proc = subprocess.run([grpcurl, "-plaintext", "-H", f"authorization: Bearer {token}", "-d", body, target, method],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0, f"{method} {body}: expected an error, got {proc.stdout[:300]}"
    return proc.stderr


def test_model_version_rpcs_and_bad_input_from_grpcurl(world, grpcurl) -> None:  # type: ignore[no-untyped-def]
    """The model-version RPCs as an outside client calls them: the lifecycle, and bad input answered with the right
    status (never a hang, never UNKNOWN)."""
    target = world["registry_target"]
    m = "qanchor.v1.ScenarioRegistry/"
    sha = "ef" * 32
    reg = call(grpcurl, target, m + "RegisterModel",
               {"model_version": "grpcurl-v1", "artifact_uri": "/exports/grpcurl-v1", "sha256": sha}, ADMIN)
    assert reg["state"] == "MODEL_STATE_REGISTERED"
    assert call(grpcurl, target, m + "PublishModel", {"model_version": "grpcurl-v1", "published_uri": "/srv/repo"},
                ADMIN)["state"] == "MODEL_STATE_PUBLISHED"
    assert call(grpcurl, target, m + "RetireModel", {"model_version": "grpcurl-v1"}, ADMIN)["state"] == \
        "MODEL_STATE_RETIRED"
    listed = call(grpcurl, target, m + "ListModels", {"states": ["MODEL_STATE_RETIRED"]}, ADMIN)["models"]
    assert "grpcurl-v1" in {x["model_version"] for x in listed}
    for method, body, token, code in (
            ("GetModel", '{"model_version": "../../etc"}', ADMIN, "InvalidArgument"),
            ("GetModel", '{"model_version": "never-registered"}', ADMIN, "NotFound"),
            ("RegisterModel", '{"model_version": "x1", "artifact_uri": "/a", "sha256": "nope"}', ADMIN,
             "InvalidArgument"),
            ("RetireModel", '{"model_version": "grpcurl-v1"}', TOKEN, "Unauthenticated"),  # not a registry token
            ("PromoteModel", '{"model_version": "grpcurl-v1"}', ADMIN, "FailedPrecondition"),  # retired
            ("GetModel", '{"model_version": 7}', ADMIN, ""),  # malformed JSON for the field: grpcurl refuses it
    ):
        err = _status(grpcurl, target, m + method, body, token)
        assert "DeadlineExceeded" not in err and "Unknown" not in err, (method, err)
        if code:
            assert f"Code: {code}" in err, (method, body, err)
