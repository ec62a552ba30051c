"""`qanchor scenario ...` against a real in-process registry; command discovery and missing-module tolerance."""
from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.cli import __main__ as cli
from services.common.grpc_server import create_server
from services.registry.server import build_app
from services.registry.servicer import AUTH_POLICY
from services.registry.settings import RegistrySettings


@pytest.fixture()
def registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    settings = RegistrySettings(grpc_port=0, admin_token="adm", database_url=f"sqlite:///{tmp_path / 'r.db'}")
    app = build_app(settings)
    server, port = create_server(settings, app.grpc_servicer(), service="registry", auth_policy=AUTH_POLICY)
    server.start()
    monkeypatch.setenv("QANCHOR_REGISTRY_TARGET", f"127.0.0.1:{port}")
    monkeypatch.setenv("QANCHOR_REGISTRY_TOKEN", "adm")
    yield f"127.0.0.1:{port}"
    server.stop(0).wait()
    app.db.dispose()


def test_scenario_commands(registry: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["scenario", "register", "promo", "--query", "Is this user sensitive to promotions?",
                     "--json"]) == 0
    created = json.loads(capsys.readouterr().out)
    assert created["name"] == "promo" and created["active_version"] == 1
    assert created["versions"][0]["status"] == "PROMPT_STATUS_ACTIVE"

    assert cli.main(["scenario", "get", "promo", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["query_text"] == "Is this user sensitive to promotions?"

    assert cli.main(["scenario", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["name", "active", "versions"] and lines[1].startswith("promo")

    assert cli.main(["scenario", "promote", "promo", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "PROMPT_STATUS_ACTIVE"

    assert cli.main(["scenario", "get", "ghost"]) == 1
    assert "NOT_FOUND" in capsys.readouterr().err
    assert cli.main(["scenario", "register", "other", "--query", "q", "--token", "wrong"]) == 1
    assert "UNAUTHENTICATED" in capsys.readouterr().err
    assert cli.main(["scenario", "tune", "promo", "--labels", "file:///l.csv"]) == 1
    assert "REGISTRY_CELERY_BROKER" in capsys.readouterr().err


def test_commands_are_discovered_and_placeholders_explain(capsys: pytest.CaptureFixture[str]) -> None:
    parser = cli.build_parser()
    choices = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert {"scenario", "embed", "events", "stack"} <= set(choices)
    assert not any(name.startswith("_") for name in choices)
    assert cli.main([]) == 2


def test_missing_external_module_is_tolerated(monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(cli.EXTERNAL_COMMANDS, "ghost", ("services.does_not_exist.cli", "ghost things"))
    assert cli.main(["ghost", "up"]) == 2
    err = capsys.readouterr().err
    assert "cannot import services.does_not_exist.cli" in err
