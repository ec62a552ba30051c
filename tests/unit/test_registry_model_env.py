"""The tuning worker runs in the model environment: the repository must work there (no alembic, no gRPC extras)."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from services.common.settings import repo_root
from services.registry.db import Database
from services.registry.repository import Repository

_WORKER = """
import sys
from services.registry.db import Database
from services.registry.domain import JobState
from services.registry.repository import Repository
repo = Repository(Database(sys.argv[1]))
repo.update_tuning_job(sys.argv[2], state=JobState.RUNNING, progress=0.5, message="halfway")
v = repo.complete_tuning_job(sys.argv[2], artifact_uri="file:///p.safetensors", sha256="0a" * 32,
                             metrics={"auc": 0.66})
print(v.version)
"""


def test_worker_path_in_model_env(tmp_path: Path) -> None:
    python = repo_root() / ".venv-model" / "bin" / "python"
    if not python.exists():
        pytest.skip(".venv-model not created; run scripts/setup_env.sh")
    url = f"sqlite:///{tmp_path / 'r.db'}"
    db = Database(url)
    db.migrate()  # the registry (services env) owns the schema
    repo = Repository(db)
    repo.register_scenario("promo", "q")
    job = repo.create_tuning_job("promo", "file:///labels.csv")
    proc = subprocess.run([str(python), "-c", _WORKER, url, job.job_id], capture_output=True, text=True,
                          timeout=120, cwd=repo_root())
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "2"
    done = repo.get_tuning_job(job.job_id)
    assert (done.state.value, done.prompt_version, done.metrics) == ("SUCCEEDED", 2, {"auc": 0.66})
    db.dispose()
