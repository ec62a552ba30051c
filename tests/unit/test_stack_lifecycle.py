"""Stack lifecycle (launch, idempotent up, failure reporting, down) on tiny stand-in processes.

The stand-ins are plain Python one-liners listening on a free port, so this runs in seconds without Kafka,
Redis or Triton; the real components are exercised by tests/integration/test_stack_*.py.
"""
from __future__ import annotations

import json
import os
import socket
import sys
import time
from dataclasses import replace
from pathlib import Path

import psutil
import pytest

from services.stack.components import Component, StackError
from services.stack.procs import PidRecord, is_alive, port_open, spawn, start_ticks, stop_group, tail
from services.stack.settings import StackSettings
from services.stack.stack import DOWN, UP, Stack, next_action

SERVE = "import socket,time;s=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1);" \
        "s.bind(('127.0.0.1',{port}));time.sleep({delay});s.listen();print('listening',flush=True);time.sleep(600)"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FakeComponent(Component):
    """Listens on one port after `delay` seconds; `script` replaces the whole program when given."""

    name = "redis"  # takes the Redis slot of the stack; the lifecycle code does not care what runs
    default_hint = "fake hint"

    def __init__(self, settings: StackSettings, port: int, delay: float = 0.0, script: str | None = None) -> None:
        super().__init__(settings)
        self.port, self.delay, self.script = port, delay, script

    def ports(self) -> list[int]:
        return [self.port]

    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def prepare(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)

    def command(self) -> list[str]:
        return [sys.executable, "-c", self.script or SERVE.format(port=self.port, delay=self.delay)]

    def healthy(self) -> bool:
        return port_open("127.0.0.1", self.port)


@pytest.fixture
def stack(tmp_path: Path) -> Stack:
    settings = StackSettings(state_dir=tmp_path / "state", port_base=21000, start_timeout_s=10, stop_timeout_s=3)
    st = Stack(settings)
    yield st
    # Never leave a stand-in behind, whatever the test did.
    record = st.record("redis")
    if record:
        stop_group(record, 1)


def use(stack: Stack, comp: FakeComponent) -> FakeComponent:
    stack.components = {"redis": comp}
    return comp


@pytest.mark.parametrize(("alive", "healthy", "action"),
                         [(True, True, "none"), (True, False, "wait"), (False, False, "launch")])
def test_next_action(alive: bool, healthy: bool, action: str) -> None:
    assert next_action(alive, healthy) == action


def test_up_is_idempotent_and_down_closes_the_port(stack: Stack) -> None:
    comp = use(stack, FakeComponent(stack.settings, free_port(), delay=0.3))
    first = stack.up(["redis"])
    assert [r.outcome for r in first] == ["started"]
    record = stack.record("redis")
    assert record is not None and is_alive(record) and record.ports == [comp.port]
    assert stack.status(["redis"])[0].state == UP

    second = stack.up(["redis"])
    assert [r.outcome for r in second] == ["already healthy"]
    assert stack.record("redis").pid == record.pid  # not started twice

    assert stack.down(["redis"]) == {"redis": "stopped"}
    assert not port_open("127.0.0.1", comp.port)
    assert not psutil.pid_exists(record.pid) or not is_alive(record)
    assert stack.record("redis") is None
    status = stack.status(["redis"])[0]
    assert (status.state, status.pid) == (DOWN, None)
    assert stack.down(["redis"]) == {"redis": "not running"}


def test_up_refuses_a_port_held_by_someone_else(stack: Stack) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        use(stack, FakeComponent(stack.settings, holder.getsockname()[1]))
        with pytest.raises(StackError, match="already in use") as info:
            stack.up(["redis"])
        assert "port in use" in str(info.value) and "QANCHOR_PORT_BASE" in str(info.value)
        assert "in use by another process" in stack.status(["redis"])[0].detail
    assert stack.record("redis") is None


def test_crash_during_startup_reports_log_tail(stack: Stack) -> None:
    use(stack, FakeComponent(stack.settings, free_port(),
                             script="import sys; print('boom: config is broken', flush=True); sys.exit(3)"))
    t0 = time.monotonic()
    with pytest.raises(StackError) as info:
        stack.up(["redis"])
    assert time.monotonic() - t0 < 8  # noticed the exit, did not wait for the timeout
    text = str(info.value)
    assert "exited during startup" in text and "boom: config is broken" in text and "hint: fake hint" in text
    assert stack.record("redis") is None


def test_never_healthy_times_out_and_leaves_nothing(stack: Stack) -> None:
    comp = use(stack, FakeComponent(stack.settings, free_port(), delay=600))
    with pytest.raises(StackError, match="not healthy after 1 s"):
        stack.up(["redis"], timeout_s=1)
    assert stack.record("redis") is None
    assert not port_open("127.0.0.1", comp.port)
    assert not any(comp.port in (c.laddr.port for c in p.net_connections()) for p in
                   psutil.Process().children(recursive=True) if p.is_running())


def test_stop_group_kills_children_that_ignore_sigterm(tmp_path: Path) -> None:
    # Leader exits on SIGTERM; its child ignores SIGTERM and must still be gone after stop_group.
    script = ("import os,signal,subprocess,sys,time;"
              "c=subprocess.Popen([sys.executable,'-c','import signal,time;"
              "signal.signal(signal.SIGTERM,signal.SIG_IGN);"
              "print(1,flush=True);time.sleep(600)']);print('child',c.pid,flush=True);time.sleep(600)")
    proc, record = spawn([sys.executable, "-c", script], tmp_path / "x.log")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not any(ln.startswith("child") for ln in tail(tmp_path / "x.log")):
        time.sleep(0.05)
    child_pid = int(next(ln for ln in tail(tmp_path / "x.log") if ln.startswith("child")).split()[1])
    time.sleep(0.3)  # let the child install its SIGTERM handler
    assert stop_group(record, timeout_s=2) == "stopped"
    proc.wait(timeout=5)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and psutil.pid_exists(child_pid) and \
            psutil.Process(child_pid).status() != psutil.STATUS_ZOMBIE:
        time.sleep(0.05)
    assert not psutil.pid_exists(child_pid) or psutil.Process(child_pid).status() == psutil.STATUS_ZOMBIE


def test_leader_ignoring_sigterm_is_killed(tmp_path: Path) -> None:
    script = "import signal,time;signal.signal(signal.SIGTERM,signal.SIG_IGN);print('ready',flush=True);time.sleep(600)"
    proc, record = spawn([sys.executable, "-c", script], tmp_path / "y.log")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and "ready" not in tail(tmp_path / "y.log"):
        time.sleep(0.05)
    assert stop_group(record, timeout_s=0.5) == "killed"
    proc.wait(timeout=5)  # stop_group already reaped it; Popen just learns it is gone
    assert not is_alive(record) and not psutil.pid_exists(record.pid)


def test_pid_record_roundtrip_and_reused_pid_detection(tmp_path: Path) -> None:
    me = psutil.Process()
    ticks = start_ticks(os.getpid())
    assert ticks is not None and ticks > 0
    record = PidRecord(pid=os.getpid(), create_time=me.create_time(), cmd=["x"], ports=[1], start_ticks=ticks)
    record.save(tmp_path / "r.json")
    assert PidRecord.load(tmp_path / "r.json") == record and is_alive(record)
    # Same pid, different start time: a recycled pid must never be taken for our process.
    assert not is_alive(replace(record, start_ticks=ticks - 1))
    assert not is_alive(PidRecord(pid=os.getpid(), create_time=me.create_time() - 100, cmd=[], ports=[]))
    # A record written before start_ticks existed still loads (and is judged by its wall-clock start).
    legacy = {"pid": os.getpid(), "create_time": me.create_time(), "cmd": ["x"], "ports": [1]}
    (tmp_path / "old.json").write_text(json.dumps(legacy))
    assert PidRecord.load(tmp_path / "old.json").start_ticks is None and is_alive(PidRecord.load(tmp_path / "old.json"))


def test_a_wall_clock_change_does_not_disown_the_stacks_process(tmp_path: Path) -> None:
    # psutil's create_time() adds the kernel's btime, whole seconds derived from the wall clock: an NTP slew
    # moves it by 1 s while the stack runs (seen in CI: a session's stack could not stop Kafka, Redis, Triton).
    proc, record = spawn([sys.executable, "-c", "import time; time.sleep(600)"], tmp_path / "z.log")
    shifted = replace(record, create_time=record.create_time - 1.0)
    assert is_alive(shifted)
    assert is_alive(replace(shifted, start_ticks=None))  # older records: a second of slack
    assert stop_group(shifted, timeout_s=5) == "stopped"
    proc.wait(timeout=5)
    assert not psutil.pid_exists(record.pid)
    assert stop_group(shifted, timeout_s=1) == "gone"
    (tmp_path / "bad.json").write_text("{not json")
    assert PidRecord.load(tmp_path / "bad.json") is None
    assert PidRecord.load(tmp_path / "missing.json") is None


def test_tail_returns_last_lines(tmp_path: Path) -> None:
    log = tmp_path / "a.log"
    log.write_text("".join(f"line {i}\n" for i in range(100)))
    assert tail(log, 3) == ["line 97", "line 98", "line 99"]
    assert tail(tmp_path / "none.log") == []
