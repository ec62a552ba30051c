"""Dead letters back into the stream once their cause is fixed, through the real broker and the real ingest service.

Ingest runs with a tight text limit (INGEST_MAX_TEXT_CHARS=40): long reviews are dead-lettered as invalid_field.
The limit is raised (ingest restarted) and `qanchor events redrive` (a real subprocess, as an operator runs it)
sends them back: they are applied, the letters that still fail (not JSON) stay and are reported, and a second
re-drive of the same letters changes no row (ingest applies an event_id once).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid

import pytest

from ingest_harness import (  # noqa: F401  (ctx is a fixture)
    ctx, event, new_topic, produce, read_users, running_consumer, wait_caught_up,
)
from services.common.settings import repo_root

pytestmark = pytest.mark.integration


def redrive_cli(bootstrap: str, topic: str, *args: str, max_text: int = 2000) -> tuple[int, dict]:
    env = dict(os.environ, INGEST_MAX_TEXT_CHARS=str(max_text))
    done = subprocess.run([sys.executable, "-m", "services.cli", "events", "redrive", "--topic", topic + ".dlq",
                           "--bootstrap", bootstrap, "--json", *args], capture_output=True, text=True,
                          timeout=180, cwd=repo_root(), env=env)
    assert done.stdout, done.stderr[-3000:]
    return done.returncode, json.loads(done.stdout)


def test_dead_letters_go_back_once_the_limit_is_raised_and_apply_once(ctx):
    topic, group = new_topic(ctx), f"g-redrive-{uuid.uuid4().hex[:6]}"
    run = uuid.uuid4().hex[:6]
    users = [f"{run}-r{i}" for i in range(3)]
    now = time.time()
    short = [(u.encode(), event(u, i, now - 600 + i, text=f"short {i}")) for i, u in enumerate(users)]
    long = [(u.encode(), event(u, 10 + i, now - 500 + i, text="a long review " * 8)) for i, u in enumerate(users * 2)]
    broken = [(users[0].encode(), b"{not json")]
    produce(ctx, topic, short + long + broken)
    tight = {"INGEST_MAX_TEXT_CHARS": "40"}
    with running_consumer(ctx, topic, group, "redrive-tight", extra_env=tight) as c:
        wait_caught_up(ctx, group, topic, [c.proc])
        assert c.metrics()['qanchor_ingest_dlq_total{reason="invalid_field"}'] == len(long)
    before = read_users(ctx.feast_config, users)
    assert all(len(before[u].event_ids) == 1 for u in users)

    shown = subprocess.run([sys.executable, "-m", "services.cli", "events", "dlq", "--topic", topic + ".dlq",
                            "--bootstrap", ctx.bootstrap, "--reason", "invalid_json", "--json"],
                           capture_output=True, text=True, timeout=120, cwd=repo_root())
    assert shown.returncode == 0, shown.stderr[-2000:]
    [letter] = json.loads(shown.stdout)
    assert letter["value"] == "{not json" and letter["headers"]["qanchor.reason"] == "invalid_json"

    # With the old limit the letters would fail again: the dry run says so and sends nothing.
    code, dry = redrive_cli(ctx.bootstrap, topic, "--dry-run", "--reason", "invalid_field", max_text=40)
    assert (code, dry["selected"], dry["sent"], len(dry["refused"])) == (1, len(long), 0, len(long))
    assert all(r["now"].startswith("invalid_field:") for r in dry["refused"])

    with running_consumer(ctx, topic, group, "redrive-fixed") as c:  # the limit raised (the default 2,000)
        code, report = redrive_cli(ctx.bootstrap, topic)  # every letter: the long reviews go back, the broken one stays
        assert code == 1 and report["sent"] == len(long) and report["sent_to"] == {topic: len(long)}
        assert [(r["reason"], r["now"].split(":")[0]) for r in report["refused"]] == [("invalid_json", "invalid_json")]
        wait_caught_up(ctx, group, topic, [c.proc])
        after = read_users(ctx.feast_config, users)
        for u in users:
            assert sorted(after[u].event_ids) == sorted(
                json.loads(v)["event_id"] for k, v in short + long if k == u.encode())
        # Again: the same letters are sent a second time, and ingest applies none of them twice.
        code, again = redrive_cli(ctx.bootstrap, topic, "--reason", "invalid_field", "--user", users[0])
        assert code == 0 and again["selected"] == again["sent"] == 2
        wait_caught_up(ctx, group, topic, [c.proc])
        m = c.metrics()
        assert m['qanchor_ingest_events_total{outcome="duplicate"}'] == 2
        assert m['qanchor_ingest_events_total{outcome="applied"}'] == len(long)
        assert read_users(ctx.feast_config, users)[users[0]].event_ids == after[users[0]].event_ids
