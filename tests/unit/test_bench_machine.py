"""benchmarks/machine.py: the one record of the machine a benchmark ran on."""
from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.machine import describe, summary  # noqa: E402

CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8

processor\t: 1
model name\t: some other name the record must not take
flags\t\t: fpu
"""


def _files(tmp_path: Path, cpuinfo: str, mem_kb: int = 24_641_536) -> dict[str, Path]:
    (tmp_path / "cpuinfo").write_text(cpuinfo)
    (tmp_path / "meminfo").write_text(f"MemTotal:       {mem_kb} kB\nMemFree:         1000 kB\n")
    return {"cpuinfo": tmp_path / "cpuinfo", "meminfo": tmp_path / "meminfo"}


def test_describe_reads_the_first_cpu_its_bf16_flags_and_memory(tmp_path):
    m = describe(**_files(tmp_path, CPUINFO))
    assert m["cpu"] == "Intel(R) Xeon(R) Platinum 8480+"
    assert m["cpu_bf16_flags"] == ["amx_bf16", "amx_tile", "avx512_bf16"]
    assert m["memory_gib"] == 23.5
    assert m["cpus"] >= 1 and 1 <= m["usable_cpus"] <= m["cpus"]
    json.dumps(m)  # results are JSON


def test_extras_are_merged_and_win(tmp_path):
    m = describe(**_files(tmp_path, CPUINFO), threads=2, loadavg_before=[1.0, 0.5, 0.2], cpu="named by the caller")
    assert m["threads"] == 2 and m["loadavg_before"] == [1.0, 0.5, 0.2] and m["cpu"] == "named by the caller"


def test_summary_says_whether_bf16_is_worth_it(tmp_path):
    amx = summary(describe(**_files(tmp_path, CPUINFO)))
    assert amx.startswith("Intel(R) Xeon(R) Platinum 8480+, ") and "23.5 GiB" in amx and ", AMX," in amx
    no_amx = summary(describe(**_files(tmp_path, "model name : Xeon\nflags : avx512f avx512_bf16\n")))
    assert "avx512_bf16 (no AMX)" in no_amx
    plain = summary(describe(**_files(tmp_path, "model name : Old CPU\nflags : sse2\n")))
    assert "no bf16 matmul" in plain


def test_summary_without_cpuinfo_still_names_something(tmp_path):
    m = describe(cpuinfo=tmp_path / "absent", meminfo=tmp_path / "absent")
    assert m["cpu"] and m["memory_gib"] is None and m["cpu_bf16_flags"] == []
    assert "GiB" not in summary(m) and summary(m)


def test_summary_names_usable_cpus_and_a_gpu_only_when_they_say_something():
    m = {"cpu": "X", "cpus": 16, "usable_cpus": 2, "memory_gib": 128.0, "cpu_bf16_flags": [], "system": "Linux x86_64"}
    assert summary(m) == "X, 16 CPUs (2 usable), 128 GiB, no bf16 matmul, Linux x86_64"
    assert summary(m | {"usable_cpus": 16, "gpu": "NVIDIA H100"}) == \
        "X, 16 CPUs, 128 GiB, no bf16 matmul, NVIDIA H100, Linux x86_64"


def test_older_results_recorded_a_string_and_it_comes_back_as_it_was():
    assert summary("x86_64 2 cores") == "x86_64 2 cores"


def test_stamp_names_the_machine_the_time_and_the_command():
    from benchmarks.machine import stamp

    line = stamp("benchmarks/quality/x.py", ["--out", "a b"])
    assert line.startswith(summary(describe()) + ", ") and " UTC: " in line
    assert line.endswith("`python benchmarks/quality/x.py --out a b`")
