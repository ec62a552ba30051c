"""`qanchor model register|publish|promote|list` against a real in-process registry and a model repository folder:
the artifact here is a stand-in folder with a real sha256 manifest (the torch export is covered by
tests/unit/test_model_publish.py and the integration test)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.cli import __main__ as cli
from training.artifact_io import write_manifest
from training.export.publish import manifest_sha256
from training.export.versions import SERVING_FORMAT

from tests.unit.test_cli_front_door import local_stack  # noqa: F401  (a real registry recorded in a state dir)


def _artifact(root: Path, version: str) -> Path:
    d = root / "qanchor" / "1" / "models" / version
    d.mkdir(parents=True)
    (d / "weights.safetensors").write_bytes(b"weights of " + version.encode())
    write_manifest(d, {"format": SERVING_FORMAT, "model_version": version, "source_id": "preset:tiny"})
    return d


def test_register_publish_promote_list(local_stack: Path, tmp_path: Path,  # noqa: F811
                                       capsys: pytest.CaptureFixture[str]) -> None:
    art = _artifact(tmp_path / "exports", "tiny-v2")
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps({"retrieval": 0.61, "note": "ignored"}))
    assert cli.main(["model", "register", str(art), "--metrics", str(metrics), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert (doc["state"], doc["sha256"], doc["metrics"]) == ("MODEL_STATE_REGISTERED", manifest_sha256(art),
                                                             {"retrieval": 0.61})

    assert cli.main(["model", "publish", "tiny-v2"]) == 1  # no model repository yet: one line saying what to do
    assert "not a qanchor model repository" in capsys.readouterr().err
    served = local_stack / "model_repository" / "qanchor" / "1" / "models"
    served.mkdir(parents=True)
    assert cli.main(["model", "publish", "tiny-v2"]) == 0  # the local stack's repository, found on its own
    assert "qanchor model promote tiny-v2" in capsys.readouterr().out
    assert manifest_sha256(served / "tiny-v2") == manifest_sha256(art)

    assert cli.main(["model", "promote", "tiny-v2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["state"] == "MODEL_STATE_PROMOTED"
    assert cli.main(["model", "list"]) == 0
    assert "PROMOTED" in capsys.readouterr().out

    (art / "weights.safetensors").write_bytes(b"edited")  # the registered artifact changed on disk
    other = tmp_path / "other"
    (other / "qanchor" / "1" / "models").mkdir(parents=True)
    assert cli.main(["model", "publish", "tiny-v2", "--repository", str(other)]) == 1
    assert "sha256 mismatch" in capsys.readouterr().err
    assert not list((other / "qanchor" / "1" / "models").iterdir())  # nothing half-published


def test_register_refuses_a_folder_that_is_not_an_export(local_stack: Path, tmp_path: Path,  # noqa: F811
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["model", "register", str(tmp_path)]) == 1
    assert "python -m training.export" in capsys.readouterr().err
    art = _artifact(tmp_path / "exports", "tiny-v3")
    assert cli.main(["model", "register", str(art), "--version", "tiny-v4"]) == 1
    assert "--model-version tiny-v4" in capsys.readouterr().err


def test_retire_removes_only_a_published_folder(local_stack: Path, tmp_path: Path,  # noqa: F811
                                                capsys: pytest.CaptureFixture[str]) -> None:
    served = local_stack / "model_repository" / "qanchor" / "1" / "models"
    served.mkdir(parents=True, exist_ok=True)
    art = _artifact(tmp_path / "exports", "old-v1")
    assert cli.main(["model", "register", str(art)]) == 0
    assert cli.main(["model", "publish", "old-v1"]) == 0
    assert (served / "old-v1" / "PUBLISHED").is_file()
    capsys.readouterr()
    assert cli.main(["model", "retire", "old-v1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["state"] == "MODEL_STATE_RETIRED"
    assert not (served / "old-v1").exists() and not [p for p in served.iterdir() if p.name.startswith(".")]
    # a folder an export put there (no PUBLISHED marker) is not the registry's to delete
    _artifact(local_stack / "model_repository", "exported-v1")
    assert cli.main(["model", "register", str(served / "exported-v1")]) == 0
    assert cli.main(["model", "retire", "exported-v1"]) == 1
    assert "no PUBLISHED marker" in capsys.readouterr().err
    assert (served / "exported-v1").is_dir()
    assert cli.main(["model", "retire", "../x"]) == 1  # refused before anything is asked of the registry
