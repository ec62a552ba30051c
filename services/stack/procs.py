"""Process plumbing for the stack: detached launch, pid records, group stop, port probes, log tails.

Each component runs as the leader of its own session/process group, so `down` can signal the whole group
(Triton's Python-backend stubs, the JVM's children) and nothing survives. A pid record stores the process
start time too: a recycled pid belonging to some unrelated process is never signalled.

The start time that identifies a process is the kernel's (clock ticks since boot, `/proc/<pid>/stat`), not
psutil's `create_time()`: that one adds `btime`, which the kernel derives from the wall clock in whole
seconds, so a clock slewed by NTP moves it by a full second while the stack runs, and the stack would then
disown (and never stop) its own processes.
"""
from __future__ import annotations

import json
import logging
import os
import shlex
import signal
import socket
import subprocess
import time
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PidRecord:
    """What `up` writes to `run/<component>.json` and `down`/`status` read back."""

    pid: int
    create_time: float  # wall-clock seconds, for people reading the record; identity uses start_ticks
    cmd: list[str]
    ports: list[int]
    start_ticks: int | None = None  # kernel start time (ticks since boot); None: not Linux, or an older record

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=1))
        tmp.replace(path)  # atomic: a concurrent `status` never reads half a record

    @classmethod
    def load(cls, path: Path) -> PidRecord | None:
        try:
            data = json.loads(path.read_text())
            ticks = data.get("start_ticks")
            return cls(pid=int(data["pid"]), create_time=float(data["create_time"]),
                       cmd=list(data["cmd"]), ports=[int(p) for p in data["ports"]],
                       start_ticks=None if ticks is None else int(ticks))
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring unreadable pid record", extra={"path": str(path), "error": str(exc)})
            return None


# Records without start_ticks fall back to wall-clock start times: `btime` is whole seconds, so a clock
# change moves them by 1 s; a pid recycled to a new process within that slack of the old one's start is not a
# practical risk.
_WALL_CLOCK_SLACK_S = 1.5


def start_ticks(pid: int) -> int | None:
    """The kernel's start time of `pid` in clock ticks since boot (never changes); None where /proc has no stat."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    # Field 22; the command name (field 2) is in parentheses and may itself hold spaces or ')'.
    fields = stat[stat.rindex(b")") + 2:].split()
    return int(fields[19])


def _same_process(proc: psutil.Process, record: PidRecord) -> bool:
    if record.start_ticks is not None:
        ticks = start_ticks(proc.pid)
        if ticks is not None:
            return ticks == record.start_ticks
    return abs(proc.create_time() - record.create_time) < _WALL_CLOCK_SLACK_S


def is_alive(record: PidRecord) -> bool:
    """True when the recorded process still runs (and is the same process, not a reused pid)."""
    try:
        proc = psutil.Process(record.pid)
        return _same_process(proc, record) and proc.status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def spawn(cmd: list[str], log_path: Path, env: dict[str, str] | None = None, cwd: Path | None = None,
          ports: list[int] | None = None) -> tuple[subprocess.Popen, PidRecord]:
    """Start `cmd` detached in its own session, stdout+stderr appended to `log_path`."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as out:
        out.write(f"\n===== {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} start: {shlex.join(cmd)}\n".encode())
        out.flush()
        # start_new_session: the process outlives the CLI that started it and leads its own group.
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, cwd=cwd, start_new_session=True, close_fds=True)
    create_time = psutil.Process(proc.pid).create_time()
    return proc, PidRecord(pid=proc.pid, create_time=create_time, cmd=cmd, ports=list(ports or []),
                           start_ticks=start_ticks(proc.pid))


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def stop_group(record: PidRecord, timeout_s: float) -> str:
    """SIGTERM the record's process group, SIGKILL what is left after `timeout_s`; returns how it ended.

    "stopped" / "killed": the leader was running and ended on SIGTERM / SIGKILL; "orphans killed": the leader
    was gone but children in its group were not; "gone": nothing of it was running.
    """
    pgid = record.pid  # spawn() made the process a session leader, so pid == pgid
    if is_alive(record):
        try:
            os.killpg(pgid, signal.SIGTERM)
        except ProcessLookupError:
            return "gone"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and is_alive(record):
            time.sleep(0.1)
        _reap(record.pid)
        if is_alive(record):
            log.warning("process ignored SIGTERM, killing", extra={"pid": record.pid, "timeout_s": timeout_s})
            _kill_group(pgid)
            return "killed"
        how = "stopped"
    else:
        how = "gone"
    # Children that outlived their leader (e.g. Triton's backend stubs) still carry its pgid.
    if group_alive(pgid) and _group_is_ours(pgid, record):
        _kill_group(pgid)
        how = "orphans killed" if how == "gone" else how
    return how


def _group_is_ours(pgid: int, record: PidRecord) -> bool:
    # Linux never hands out a pid that is still some group's id, so while the group lives its id is either
    # still our leader's pid or belongs to no process at all (leader gone, orphans left): both mean ours.
    try:
        return _same_process(psutil.Process(pgid), record)
    except psutil.NoSuchProcess:
        return True
    except psutil.AccessDenied:
        return False


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and group_alive(pgid):
        time.sleep(0.05)
        _reap(pgid)


def _reap(pid: int) -> None:
    # When this process spawned the child (tests, bench), it must be waited for or it lingers as a zombie.
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def port_open(host: str, port: int, timeout_s: float = 0.3) -> bool:
    """True when something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def wait_ports_closed(host: str, ports: list[int], timeout_s: float) -> list[int]:
    """Wait until none of `ports` accepts connections; returns those still open at the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        still_open = [p for p in ports if port_open(host, p, timeout_s=0.2)]
        if not still_open or time.monotonic() >= deadline:
            return still_open
        time.sleep(0.1)


def listener_pids(port: int) -> list[int]:
    """Pids listening on `port` (any address); empty when unknown (psutil may lack permission)."""
    try:
        conns = psutil.net_connections(kind="tcp")
    except (psutil.AccessDenied, PermissionError):
        return []
    return sorted({c.pid for c in conns if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port
                   and c.pid is not None})


def process_group(pid: int) -> int | None:
    """The process group id of `pid`; None when it is gone."""
    try:
        return os.getpgid(pid)
    except (ProcessLookupError, PermissionError):
        return None


def describe_pid(pid: int) -> str:
    try:
        proc = psutil.Process(pid)
        return f"pid {pid} ({proc.name()})"
    except psutil.Error:
        return f"pid {pid}"


def tail(path: Path, n: int = 40) -> list[str]:
    """Last `n` lines of a text file (empty when it does not exist)."""
    try:
        with open(path, "rb") as fh:
            return [ln.decode("utf-8", "replace").rstrip("\n") for ln in deque(fh, maxlen=n)]
    except FileNotFoundError:
        return []
