"""The committed stubs match the protos, and import in both environments (gencode/runtime versions agree)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from services.common.settings import repo_root

ROOT = repo_root()


def test_committed_stubs_are_up_to_date() -> None:
    proc = subprocess.run([str(ROOT / "scripts" / "check_protos.sh")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "up to date" in proc.stdout


@pytest.mark.parametrize("venv", [".venv", ".venv-model"])
def test_stubs_import_without_version_warnings(venv: str) -> None:
    python = ROOT / venv / "bin" / "python"
    if not python.exists():
        if Path(sys.executable).parent.parent.name == venv:
            python = Path(sys.executable)
        else:
            pytest.skip(f"{venv} not created; run scripts/setup_env.sh")
    code = (
        "from services.common.proto.qanchor.v1 import embedding_pb2, embedding_pb2_grpc, registry_pb2, "
        "registry_pb2_grpc\n"
        "s = registry_pb2.Scenario(name='promo', active_version=1)\n"
        "assert registry_pb2.Scenario.FromString(s.SerializeToString()).name == 'promo'\n"
        "assert embedding_pb2_grpc.EmbeddingServiceStub and registry_pb2_grpc.ScenarioRegistryStub\n"
    )
    proc = subprocess.run([str(python), "-W", "error", "-c", code], capture_output=True, text=True, timeout=60,
                          cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
