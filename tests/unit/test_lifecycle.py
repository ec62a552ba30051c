"""services.common.lifecycle: a service's parts close in order, each timed; one that fails does not keep the rest
open. services.common.signals: SIGUSR1 dumps the stacks and leaves the service running."""
from __future__ import annotations

import logging
import signal
import subprocess
import sys
import textwrap

import pytest

from services.common.lifecycle import WorkerService
from services.common.settings import repo_root


def test_every_part_closes_in_order_and_a_failing_one_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    done: list[str] = []

    def broken() -> None:
        done.append("b")
        raise RuntimeError("broker gone")

    with caplog.at_level(logging.INFO, logger="services.common.lifecycle"):
        closers = [("a", lambda: done.append("a")), ("b", broken), ("c", lambda: done.append("c"))]
        service = WorkerService("ingest", worker=object(), closers=closers)
        service.close()
    assert done == ["a", "b", "c"]
    lines = [(r.getMessage(), r.part) for r in caplog.records]
    assert lines == [("ingest closed", "a"), ("ingest close failed", "b"), ("ingest closed", "c")]
    assert caplog.records[1].error == "RuntimeError" and caplog.records[0].seconds >= 0


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_sigusr1_dumps_every_threads_stack_and_sigterm_still_stops() -> None:
    code = textwrap.dedent("""
        import logging, os, signal, sys, threading
        from services.common.signals import stop_on_signals
        stop = stop_on_signals(logging.getLogger("t"), "stopping")
        threading.Thread(target=stop.wait, name="worker-thread", daemon=True).start()
        os.kill(os.getpid(), signal.SIGUSR1)
        os.kill(os.getpid(), signal.SIGTERM)
        sys.exit(0 if stop.wait(10) else 3)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=repo_root())
    assert out.returncode == 0, out.stderr
    assert "Current thread" in out.stderr and out.stderr.count("File ") >= 2  # the main thread and the worker
