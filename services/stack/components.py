"""What every stack process has in common, plus the smallest one (Redis).

A component only says how to prepare, launch and probe itself; `services.stack.stack.Stack` owns the
lifecycle (pid records, waiting for health, stopping, reporting), so every component behaves the same.
"""
from __future__ import annotations

import re
import shutil
from abc import ABC, abstractmethod
from pathlib import Path

from services.stack.settings import StackSettings

# Log lines that explain a failed start, most specific first, with what the user should do about them.
COMMON_HINTS: list[tuple[str, str]] = [
    (r"Address already in use|BindException|bind: Address|Could not create server TCP listening socket",
     "port in use: another process (or another stack with the same QANCHOR_PORT_BASE) holds the port; "
     "stop it or pick another QANCHOR_PORT_BASE"),
    (r"No space left on device", "disk full: free space under QANCHOR_STATE_DIR"),
    (r"Permission denied", "permission denied: check ownership of QANCHOR_STATE_DIR"),
]


class StackError(RuntimeError):
    """A component could not be started or stopped; `str()` is the full user-facing explanation."""

    def __init__(self, component: str, message: str, hint: str = "", log_tail: list[str] | None = None,
                 log_path: Path | None = None) -> None:
        self.component = component
        self.message = message
        self.hint = hint
        self.log_tail = log_tail or []
        self.log_path = log_path
        super().__init__(self.render())

    def render(self) -> str:
        lines = [f"{self.component}: {self.message}"]
        if self.log_tail:
            where = f" ({self.log_path})" if self.log_path else ""
            lines.append(f"--- last {len(self.log_tail)} lines of the {self.component} log{where} ---")
            lines.extend("  " + ln for ln in self.log_tail)
            lines.append("---")
        if self.hint:
            lines.append(f"hint: {self.hint}")
        return "\n".join(lines)


def require_executable(component: str, exe: str, hint: str) -> str:
    """Absolute path of `exe` or a StackError saying how to install it."""
    found = shutil.which(exe)
    if not found:
        raise StackError(component, f"{exe} not found on PATH", hint=hint)
    return found


class Component(ABC):
    """One long-running process of the local stack."""

    name: str = ""
    # Component-specific log patterns checked before COMMON_HINTS.
    hints: list[tuple[str, str]] = []
    # What to try when nothing in the log matched.
    default_hint: str = ""

    def __init__(self, settings: StackSettings) -> None:
        self.settings = settings
        self.layout = settings.layout

    @property
    def log_path(self) -> Path:
        return self.layout.log_file(self.name)

    @property
    def workdir(self) -> Path:
        return self.layout.component_dir(self.name)

    @abstractmethod
    def ports(self) -> list[int]:
        """Every port the process listens on; `down` checks they are closed afterwards."""

    @abstractmethod
    def address(self) -> str:
        """What `status` shows in its address column."""

    def prepare(self) -> None:
        """One-time work before launch (download, format, copy); must be idempotent."""

    @abstractmethod
    def command(self) -> list[str]:
        """argv of the long-running process."""

    def env(self) -> dict[str, str] | None:
        """Environment of the process; None inherits ours."""
        return None

    @abstractmethod
    def healthy(self) -> bool:
        """Cheap readiness probe; must not raise and must return within ~3 s."""

    def after_healthy(self) -> None:
        """Idempotent setup that needs the running process (topics, ...)."""

    def stop_timeout_s(self, record_cmd: list[str]) -> float:
        """SIGTERM grace for the process started with `record_cmd`."""
        return self.settings.stop_timeout_s

    def after_stop(self) -> None:
        """Work that needs the process gone (e.g. publishing a file it wrote on exit)."""

    def diagnose(self, log_lines: list[str]) -> str:
        text = "\n".join(log_lines)
        for pattern, hint in [*self.hints, *COMMON_HINTS]:
            if re.search(pattern, text):
                return hint
        return self.default_hint


class Redis(Component):
    """Debian's redis-server on a private port: Celery broker/backend and optional Feast online store."""

    name = "redis"
    hints = [(r"FATAL CONFIG FILE ERROR|Bad directive", "redis-server rejected an option: check its version (>= 6)")]
    default_hint = "run `redis-server --version`; the full log is shown by `python -m services.stack logs redis`"

    def ports(self) -> list[int]:
        return [self.settings.port("redis")]

    def address(self) -> str:
        return f"redis://{self.settings.host}:{self.settings.port('redis')}/0"

    def prepare(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)

    def command(self) -> list[str]:
        exe = require_executable(self.name, self.settings.redis_server,
                                 "redis-server not found: run scripts/setup_env.sh (installs Debian's redis-server)")
        persistence = ["--save", "3600 1 300 100", "--appendonly", "yes"] if self.settings.redis_persist \
            else ["--save", "", "--appendonly", "no"]
        return [
            exe,
            "--bind", self.settings.host,
            "--port", str(self.settings.port("redis")),
            # The stack supervises it; a daemonized Redis would escape our process group.
            "--daemonize", "no",
            "--dir", str(self.workdir),
            "--pidfile", str(self.layout.run / "redis-server.pid"),
            "--logfile", str(self.log_path),
            *persistence,
        ]

    def healthy(self) -> bool:
        import redis  # services env; imported here so `status` of other components never needs it

        try:
            client = redis.Redis.from_url(self.address(), socket_timeout=1.0, socket_connect_timeout=1.0)
            try:
                return bool(client.ping())
            finally:
                client.close()
        except (redis.RedisError, OSError):
            return False
