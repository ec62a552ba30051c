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


def test_tuning_job_commands(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                             capsys: pytest.CaptureFixture[str]) -> None:
    settings = RegistrySettings(grpc_port=0, admin_token="adm", database_url=f"sqlite:///{tmp_path / 'r.db'}")
    app = build_app(settings)

    class Queue:
        def enqueue(self, job_id: str) -> None:
            pass

    app.servicer.jobs = Queue()
    server, port = create_server(settings, app.grpc_servicer(), service="registry", auth_policy=AUTH_POLICY)
    server.start()
    monkeypatch.setenv("QANCHOR_REGISTRY_TARGET", f"127.0.0.1:{port}")
    monkeypatch.setenv("QANCHOR_REGISTRY_TOKEN", "adm")
    monkeypatch.chdir(tmp_path)
    try:
        assert cli.main(["scenario", "register", "promo", "--query", "q"]) == 0
        capsys.readouterr()
        # The README's form: labels as a positional path; a relative path is sent as an absolute file:// URI.
        (tmp_path / "labels.csv").write_text("user_id,label\nu1,1\n")
        assert cli.main(["scenario", "tune", "promo", "labels.csv", "--param", "steps=5", "--json"]) == 0
        first = json.loads(capsys.readouterr().out)
        assert app.repo.get_tuning_job(first["job_id"]).labels_uri == (tmp_path / "labels.csv").as_uri()
        assert cli.main(["scenario", "tune", "promo", "--labels", "file:///x.csv", "--json"]) == 0
        second = json.loads(capsys.readouterr().out)
        assert cli.main(["scenario", "tune", "promo"]) == 1
        assert "LABELS is missing" in capsys.readouterr().err
        assert cli.main(["scenario", "tune", "promo", "nope.csv"]) == 1
        assert "not found" in capsys.readouterr().err

        assert cli.main(["scenario", "jobs"]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert lines[0].split()[:3] == ["job_id", "scenario", "state"]
        assert [ln.split()[0] for ln in lines[1:]] == [second["job_id"], first["job_id"]]
        assert cli.main(["scenario", "cancel", first["job_id"], "--reason", "typo", "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["state"] == "JOB_STATE_CANCELLED"
        assert cli.main(["scenario", "jobs", "--state", "CANCELLED", "--json"]) == 0
        assert [j["job_id"] for j in json.loads(capsys.readouterr().out)] == [first["job_id"]]

        # --watch on a finished job: one look, exit status by outcome (1: it did not succeed).
        assert cli.main(["scenario", "job", first["job_id"], "--watch", "--json"]) == 1
        captured = capsys.readouterr()
        assert json.loads(captured.out)["state"] == "JOB_STATE_CANCELLED" and "CANCELLED" in captured.err
        app.repo.complete_tuning_job(second["job_id"], artifact_uri="file:///p", sha256="ab" * 32, metrics={})
        assert cli.main(["scenario", "job", second["job_id"], "--watch", "--interval", "0.01", "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["prompt_version"] == 2
    finally:
        server.stop(0).wait()
        app.db.dispose()


def test_watch_draws_progress_until_a_terminal_state() -> None:
    import io

    from services.cli.commands._tuning_jobs import watch_job
    from services.common.proto.qanchor.v1 import registry_pb2 as pb

    seq = iter([pb.TuningJob(scenario="s", state=pb.JOB_STATE_QUEUED, message="queued"),
                pb.TuningJob(scenario="s", state=pb.JOB_STATE_RUNNING, progress=0.5, message="step 3/6"),
                pb.TuningJob(scenario="s", state=pb.JOB_STATE_SUCCEEDED, progress=1.0, message="done")])
    out, slept = io.StringIO(), []
    job = watch_job(lambda: next(seq), interval_s=7, out=out, sleep=slept.append)
    assert job.state == pb.JOB_STATE_SUCCEEDED and slept == [7, 7]
    text = out.getvalue()
    assert "RUNNING" in text and "50%" in text and "100%" in text and "step 3/6" in text
