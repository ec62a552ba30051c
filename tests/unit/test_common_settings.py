from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import pytest
from pydantic_settings import SettingsConfigDict

from services.common.settings import PORT_OFFSETS, GrpcServerSettings, port_for, repo_root


class _DemoSettings(GrpcServerSettings):
    model_config = SettingsConfigDict(env_prefix="DEMO_", extra="ignore", frozen=True)
    GRPC_PORT_NAME: ClassVar[str] = "registry_grpc"


def test_defaults_follow_contracts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("QANCHOR_STATE_DIR", raising=False)
    monkeypatch.delenv("QANCHOR_PORT_BASE", raising=False)
    s = _DemoSettings()
    assert s.port_base == 19000
    assert s.state_dir == repo_root() / "var"
    assert s.resolved_grpc_port() == 19052
    assert s.port("kafka") == 19092 and s.port("triton_grpc") == 19001


def test_stack_wide_vars_are_unprefixed_and_service_vars_prefixed(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("QANCHOR_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("QANCHOR_PORT_BASE", "22000")
    monkeypatch.setenv("DEMO_ADMIN_TOKEN", "s3cret")
    monkeypatch.setenv("DEMO_MAX_WORKERS", "3")
    s = _DemoSettings()
    assert s.state_dir == tmp_path and s.port_base == 22000
    assert s.resolved_grpc_port() == 22052
    assert s.admin_token is not None and s.admin_token.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(s)  # secrets never reach logs via repr
    assert s.max_workers == 3


def test_explicit_port_wins_and_unknown_name_is_explained() -> None:
    assert _DemoSettings(grpc_port=0).resolved_grpc_port() == 0
    with pytest.raises(ValueError, match="known names"):
        port_for("nope")
    assert set(PORT_OFFSETS) >= {"gateway_grpc", "registry_grpc", "redis", "kafka"}
