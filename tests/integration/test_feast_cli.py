"""The Feast CLI sees the same repository `feast_store.apply` applies (operators run `feast plan` to debug)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from services.common.feast_store import FEATURE_REPO, apply

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_feast_cli_plan_after_apply_has_no_changes(tmp_path: Path) -> None:
    config = apply(tmp_path / "state")
    feast = Path(sys.executable).parent / "feast"
    env = dict(os.environ, QANCHOR_FEAST_DATA_DIR=str(tmp_path / "state" / "feast" / "data"), FEAST_USAGE="False")
    env.pop("QANCHOR_SOURCES_YAML", None)
    proc = subprocess.run([str(feast), "-c", str(FEATURE_REPO), "-f", str(config), "plan"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "No changes to registry" in proc.stdout, proc.stdout[-2000:]
    assert "No changes to infrastructure" in proc.stdout, proc.stdout[-2000:]
