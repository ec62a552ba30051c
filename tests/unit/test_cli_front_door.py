"""The front door as a new user meets it: README commands as written, the local stack found without token
handling, one-line errors, and one JSON document from every command that prints data."""
from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.cli import __main__ as cli
from services.common.grpc_server import create_server
from services.registry.server import build_app
from services.registry.servicer import AUTH_POLICY
from services.registry.settings import RegistrySettings

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture()
def local_stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A real registry, recorded in a state dir the way `qanchor stack up` records its stack."""
    settings = RegistrySettings(grpc_port=0, admin_token="adm", token="cli",
                                database_url=f"sqlite:///{tmp_path / 'r.db'}")
    app = build_app(settings)
    server, port = create_server(settings, app.grpc_servicer(), service="registry", auth_policy=AUTH_POLICY)
    server.start()
    state = tmp_path / "state"
    (state / "run").mkdir(parents=True)
    (state / "run" / "endpoints.json").write_text(json.dumps({"registry": f"127.0.0.1:{port}"}))
    (state / "run" / "tokens.json").write_text(json.dumps({"admin": "adm", "client": "cli"}))
    for name in ("QANCHOR_REGISTRY_TARGET", "QANCHOR_REGISTRY_TOKEN", "QANCHOR_PORT_BASE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("QANCHOR_STATE_DIR", str(state))
    yield state
    server.stop(0).wait()
    app.db.dispose()


def test_readme_scenario_commands_work_as_written(local_stack: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    # README: qanchor scenario register horror_next "Will this user watch a horror film in the next month?"
    assert cli.main(["scenario", "register", "horror_next",
                     "Will this user watch a horror film in the next month?"]) == 0
    assert "horror_next" in capsys.readouterr().out
    assert cli.main(["scenario", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [s["query_text"] for s in listed] == ["Will this user watch a horror film in the next month?"]
    # README: qanchor scenario tune horror_next labels.csv (this registry has no Celery broker: the refusal
    # proves the call arrived, authorised with the discovered admin token)
    labels = tmp_path / "labels.csv"
    labels.write_text("user_id,label\n1,1\n2,0\n")
    assert cli.main(["scenario", "tune", "horror_next", str(labels)]) == 1
    assert "REGISTRY_CELERY_BROKER" in capsys.readouterr().err
    # a labels file the worker would refuse is refused here, before any job is queued, with the line to fix
    labels.write_text("user_id,label,as_of\n1,1,2026-06-01\n2,0,someday\n")
    assert cli.main(["scenario", "tune", "horror_next", str(labels)]) == 1
    err = capsys.readouterr().err
    assert "labels.csv:3: as_of 'someday' is not a time" in err and "REGISTRY_CELERY_BROKER" not in err
    # the flags still work
    assert cli.main(["scenario", "register", "other", "--query", "Is this user new?"]) == 0
    assert cli.main(["scenario", "register", "third", "Q1", "--query", "Q2"]) == 1
    assert "not both" in capsys.readouterr().err


def test_explicit_tokens_and_targets_win_over_discovery(local_stack: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["scenario", "register", "a1", "q", "--token", "wrong"]) == 1
    assert "UNAUTHENTICATED" in capsys.readouterr().err
    monkeypatch.setenv("QANCHOR_REGISTRY_TOKEN", "wrong")
    assert cli.main(["scenario", "list"]) == 1
    assert "UNAUTHENTICATED" in capsys.readouterr().err
    monkeypatch.delenv("QANCHOR_REGISTRY_TOKEN")
    # A target named on the command line never receives the local stack's token.
    port = json.loads((local_stack / "run" / "endpoints.json").read_text())["registry"].rsplit(":", 1)[1]
    assert cli.main(["scenario", "list", "--registry", f"localhost:{port}"]) == 1
    assert "UNAUTHENTICATED" in capsys.readouterr().err


def test_every_data_command_prints_one_json_document(local_stack: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["scenario", "register", "promo", "Is this user sensitive to promotions?"]) == 0
    capsys.readouterr()
    for argv in (["scenario", "get", "promo"], ["scenario", "list"], ["scenario", "versions", "promo"],
                 ["scenario", "promote", "promo", "1"]):
        assert cli.main([*argv, "--json"]) == 0, argv
        json.loads(capsys.readouterr().out)  # exactly one document, or this raises


def _leaves(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...],
                                                                                          argparse.ArgumentParser]]:
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield path, parser
        return
    for name, sub in subs[0].choices.items():
        yield from _leaves(sub, (*path, name))


def test_json_flag_on_every_command_that_prints_data() -> None:
    text_only = {("stack", "logs"), ("train", "logs")}  # a log tail is text, not data
    missing = [" ".join(path) for path, p in _leaves(cli.build_parser())
               if path not in text_only and "--json" not in p._option_string_actions]
    assert not missing, f"commands without --json: {missing}"


def test_events_produce_fails_fast_in_one_line_when_kafka_is_down(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    events = tmp_path / "events.jsonl"
    events.write_text('{"schema_version": 1}\n')
    proc = subprocess.run([sys.executable, "-m", "services.cli", "events", "produce", str(events),
                           "--bootstrap", f"127.0.0.1:{port}"], capture_output=True, text=True, cwd=REPO,
                          timeout=120)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "not reachable" in lines[0] and "qanchor stack up" in lines[0], proc.stderr
