"""The machine a benchmark ran on, recorded the same way by every benchmark.

BENCHMARKS.md keeps each table with "the machine it came from" (docs: benchmarks). The benchmarks used to record it
eighteen ways, from the hostname ("vm") to "x86_64 2 cores"; none named the CPU, its memory, or whether it
multiplies bf16 in AMX tiles, which is what decides whether a bf16 number means anything (docs/model.md,
"Precision"). `describe()` is that record, `summary()` its one line for tables and plot titles.

Standard library only: the services environment (no torch) records the same fields. torch's own view of the CPU
(`training.precision.cpu_bf16_support`, what `auto` precision follows) is added when the benchmark already
imported torch; the CPU flags are the kernel's, whatever torch makes of them.

    from benchmarks.machine import describe, summary
    meta = {"machine": describe(threads=args.threads), ...}
    print(summary(meta["machine"]))   # Intel(R) Xeon(R) Processor, 2 CPUs, 23.5 GiB, avx512_bf16 (no AMX), Linux x86_64
"""
from __future__ import annotations

import os
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

BF16_FLAGS = ("amx_bf16", "amx_tile", "avx512_bf16")  # the CPU flags that decide bf16 matmul speed


def _cpuinfo(path: Path = Path("/proc/cpuinfo")) -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo; {} where there is none (not Linux)."""
    fields: dict[str, str] = {}
    try:
        text = path.read_text()
    except OSError:
        return fields
    for line in text.splitlines():
        if not line.strip():
            break  # the first processor's block ends at its blank line
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields


def _memory_gib(path: Path = Path("/proc/meminfo")) -> float | None:
    try:
        for line in path.read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)  # kB -> GiB
    except (OSError, ValueError, IndexError):
        pass
    return None


def _usable_cpus() -> int | None:
    try:
        return len(os.sched_getaffinity(0))  # what this process may run on (a container's cpuset), not the host's
    except (AttributeError, OSError):
        return os.cpu_count()


def describe(cpuinfo: Path = Path("/proc/cpuinfo"), meminfo: Path = Path("/proc/meminfo"),
             **extra: Any) -> dict[str, Any]:
    """This machine as a JSON-ready dict; `extra` (threads, a GPU's name, the load before the run...) is merged in."""
    info = _cpuinfo(cpuinfo)
    flags = set(info.get("flags", "").split())
    m: dict[str, Any] = {
        "cpu": info.get("model name") or platform.processor() or platform.machine(),
        "cpus": os.cpu_count(), "usable_cpus": _usable_cpus(), "memory_gib": _memory_gib(meminfo),
        "cpu_bf16_flags": [f for f in BF16_FLAGS if f in flags],
        "system": f"{platform.system()} {platform.machine()}", "platform": platform.platform(),
        "python": platform.python_version(), "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    if "torch" in sys.modules:  # only where the benchmark itself runs torch: importing it costs seconds
        import torch
        from training.precision import cpu_bf16_support

        m["torch"] = torch.__version__
        m["torch_cpu_bf16"] = cpu_bf16_support()
    return m | extra


def summary(m: dict[str, Any] | str) -> str:
    """One line: CPU, CPUs, memory, bf16 support, OS (plus a GPU where recorded). Older results recorded a plain
    string; it comes back as it is."""
    if isinstance(m, str):
        return m
    cpus = f"{m.get('cpus')} CPUs"
    if m.get("usable_cpus") not in (None, m.get("cpus")):
        cpus += f" ({m['usable_cpus']} usable)"
    parts = [str(m.get("cpu", "unknown CPU")), cpus]
    if m.get("memory_gib") is not None:
        parts.append(f"{m['memory_gib']:g} GiB")
    flags = m.get("cpu_bf16_flags")
    if flags is not None:
        parts.append("AMX" if "amx_bf16" in flags else
                     "avx512_bf16 (no AMX)" if "avx512_bf16" in flags else "no bf16 matmul")
    if m.get("gpu"):
        parts.append(str(m["gpu"]))
    parts.append(str(m.get("system", m.get("platform", ""))))
    return ", ".join(p for p in parts if p)


def command_line(script: str, argv: list[str] | None) -> str:
    """The command a result records: `python <script> <args>` (argv None: this process's own arguments)."""
    return f"python {script} " + " ".join(argv if argv is not None else sys.argv[1:])


def utc_now() -> str:
    """The time a result records, to the minute."""
    return f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC"


def footer(machine: dict[str, Any] | str, date: str, command: str) -> str:
    """The line a result's markdown ends with: the machine, the time and the command that wrote it."""
    return f"{summary(machine)}, {date}: `{command}`"


def stamp(script: str, argv: list[str] | None) -> str:
    """`footer` for this machine, now, and this script's command (results that keep no meta of their own)."""
    return footer(describe(), utc_now(), command_line(script, argv))
