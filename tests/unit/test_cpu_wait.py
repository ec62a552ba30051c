"""QANCHOR_CPU_WAIT -> OpenMP's wait settings (training/export/cpu_wait.py), applied before torch loads."""
from __future__ import annotations

import pytest

from training.export.cpu_wait import apply


def test_passive_by_default_and_spin_on_request():
    env: dict[str, str] = {}
    assert apply(env) == "passive" and env == {"OMP_WAIT_POLICY": "PASSIVE"}
    env = {"QANCHOR_CPU_WAIT": "spin", "OMP_WAIT_POLICY": "PASSIVE"}  # e.g. the stack's default got there first
    assert apply(env) == "spin"
    assert "OMP_WAIT_POLICY" not in env and env["GOMP_SPINCOUNT"] == "20000"
    env = {"QANCHOR_CPU_WAIT": "Spin", "GOMP_SPINCOUNT": "5000", "OMP_WAIT_POLICY": "ACTIVE"}  # operator's own wins
    apply(env)
    assert env["GOMP_SPINCOUNT"] == "5000" and env["OMP_WAIT_POLICY"] == "ACTIVE"
    env = {"OMP_WAIT_POLICY": "ACTIVE"}
    apply(env)
    assert env["OMP_WAIT_POLICY"] == "ACTIVE"


def test_unknown_mode_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="passive .* or spin"):
        apply({"QANCHOR_CPU_WAIT": "fast"})
