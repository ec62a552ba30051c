"""Model versions in the registry: register -> publish -> promote, over a real in-process gRPC server on a SQLite
file migrated by Alembic (0002_model_versions)."""
from __future__ import annotations

import pytest
from sqlalchemy import inspect

from services.common.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from services.common.proto.qanchor.v1 import registry_pb2 as pb
from services.registry.client import RegistryClient
from services.registry.domain import ModelState

from tests.unit.test_registry_servicer import stack  # noqa: F401  (the registry on a free port, SQLite file)

SHA_A, SHA_B = "ab" * 32, "cd" * 32


def test_migration_creates_the_table(stack) -> None:
    app, _ = stack
    cols = {c["name"] for c in inspect(app.db.engine).get_columns("model_versions")}
    assert {"model_version", "state", "artifact_uri", "sha256", "metrics", "published_uri", "promoted_at"} <= cols


def test_register_publish_promote_over_grpc(stack) -> None:
    _, port = stack
    with RegistryClient(f"127.0.0.1:{port}", token="adm") as admin, \
            RegistryClient(f"127.0.0.1:{port}", token="tok") as reader:
        with pytest.raises(PermissionDenied):
            reader.register_model("tiny-v2", "/exports/tiny-v2", SHA_A)
        m = admin.register_model("tiny-v2", "/exports/tiny-v2", SHA_A, {"retrieval": 0.5}, "preset:tiny", "ops")
        assert (m.state, m.metrics["retrieval"], m.created_by) == (pb.MODEL_STATE_REGISTERED, 0.5, "ops")
        assert admin.register_model("tiny-v2", "/elsewhere", SHA_A).artifact_uri == "/exports/tiny-v2"  # idempotent
        with pytest.raises(AlreadyExists, match="new version"):
            admin.register_model("tiny-v2", "/exports/other", SHA_B)
        with pytest.raises(InvalidArgument, match="not valid"):
            admin.register_model("../etc", "/x", SHA_A)
        with pytest.raises(InvalidArgument, match="sha256"):
            admin.register_model("tiny-v3", "/x", "nope")
        with pytest.raises(FailedPrecondition, match="publish it first"):
            admin.promote_model("tiny-v2")
        with pytest.raises(NotFound, match="qanchor model register"):
            reader.get_model("tiny-v9")

        p = admin.publish_model("tiny-v2", "/srv/model_repository")
        assert (p.state, p.published_uri) == (pb.MODEL_STATE_PUBLISHED, "/srv/model_repository")
        assert p.published_at.seconds > 0
        assert admin.publish_model("tiny-v2", "/srv/model_repository").state == pb.MODEL_STATE_PUBLISHED
        admin.register_model("tiny-v3", "/exports/tiny-v3", SHA_B)
        admin.publish_model("tiny-v3", "/srv/model_repository")

        assert admin.promote_model("tiny-v2").state == pb.MODEL_STATE_PROMOTED
        assert admin.promote_model("tiny-v3").state == pb.MODEL_STATE_PROMOTED
        states = {m.model_version: m.state for m in reader.list_models()}
        assert states == {"tiny-v2": pb.MODEL_STATE_PUBLISHED, "tiny-v3": pb.MODEL_STATE_PROMOTED}  # one promoted
        assert [m.model_version for m in reader.list_models([pb.MODEL_STATE_PROMOTED])] == ["tiny-v3"]


def test_repository_promoted_and_servable(stack) -> None:
    app, _ = stack
    models = app.servicer.models
    assert models.promoted() is None
    models.register("a", artifact_uri="/a", sha256=SHA_A)
    models.publish("a", "/repo")
    models.promote("a")
    assert models.promoted().model_version == "a"
    assert [m.model_version for m in models.list([ModelState.PUBLISHED, ModelState.PROMOTED])] == ["a"]


def test_retire_takes_a_version_out_of_serving(stack) -> None:
    _, port = stack
    with RegistryClient(f"127.0.0.1:{port}", token="adm") as admin, \
            RegistryClient(f"127.0.0.1:{port}", token="tok") as reader:
        for v, sha in (("ret-a", SHA_A), ("ret-b", SHA_B)):
            admin.register_model(v, f"/exports/{v}", sha)
            admin.publish_model(v, "/srv/model_repository")
        admin.promote_model("ret-a")
        with pytest.raises(PermissionDenied):
            reader.retire_model("ret-b")
        with pytest.raises(FailedPrecondition, match="promote another one first"):
            admin.retire_model("ret-a")
        assert admin.retire_model("ret-b").state == pb.MODEL_STATE_RETIRED
        assert admin.retire_model("ret-b").state == pb.MODEL_STATE_RETIRED  # idempotent
        assert [m.model_version for m in reader.list_models([pb.MODEL_STATE_RETIRED])] == ["ret-b"]
        with pytest.raises(FailedPrecondition, match="publish it first"):
            admin.promote_model("ret-b")  # not servable any more
        with pytest.raises(NotFound):
            admin.retire_model("ret-zzz")
        # published again (the CLI copies the files back first): servable again
        assert admin.publish_model("ret-b", "/srv/model_repository").state == pb.MODEL_STATE_PUBLISHED
