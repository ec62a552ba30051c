"""Start-up cost of the local stack: cold (fresh state dir, caches present) vs warm (up after down, state kept).

    .venv/bin/python benchmarks/stack/bench_stack.py [--repeats 3] [--port-base 29600]

Per repeat, from a fresh state dir each time:
  - each component alone, cold then warm (Feast's warm step is the "definitions unchanged" check);
  - the whole stack cold, then down, then warm: `up` starts processes side by side, so its total is compared
    with the sum of the components alone.
Caches (Kafka JARs, the model env) are filled before timing starts: a first-ever run adds the Maven download.
Also measured: warm Kafka starts with and without the AppCDS archive (interleaved), and `import feast` alone.
Prints a table last and writes benchmarks/results/stack.json. Times are medians over repeats, in seconds.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
from benchmarks.machine import describe  # noqa: E402

from services.stack import COMPONENTS, Stack, StackSettings  # noqa: E402
from services.stack.kafka import Kafka  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "stack.json"


def timed_up(stack: Stack, names: list[str] | None) -> tuple[float, dict[str, float]]:
    t0 = time.perf_counter()
    results = stack.up(names)
    return time.perf_counter() - t0, {r.component: r.seconds for r in results}


def timed_down(stack: Stack) -> float:
    t0 = time.perf_counter()
    stack.down()
    return time.perf_counter() - t0


def one_repeat(base_settings: StackSettings, workdir: Path) -> dict:
    out: dict = {"alone": {}, "together": {}}
    for name in COMPONENTS:
        state = workdir / f"alone-{name}"
        stack = Stack(base_settings.model_copy(update={"state_dir": state}))
        try:
            cold, _ = timed_up(stack, [name])
            down_s = timed_down(stack)
            warm, _ = timed_up(stack, [name])
            out["alone"][name] = {"cold": cold, "warm": warm, "down": down_s}
        finally:
            stack.down()
            shutil.rmtree(state, ignore_errors=True)
        print(f"  alone {name:7s} cold {cold:6.2f}s  warm {warm:6.2f}s  down {down_s:5.2f}s", flush=True)

    state = workdir / "together"
    stack = Stack(base_settings.model_copy(update={"state_dir": state}))
    try:
        cold_total, cold_parts = timed_up(stack, None)
        down_s = timed_down(stack)
        warm_total, warm_parts = timed_up(stack, None)
        out["together"] = {"cold_total": cold_total, "warm_total": warm_total, "down": down_s,
                           "cold_parts": cold_parts, "warm_parts": warm_parts}
    finally:
        stack.down()
        shutil.rmtree(state, ignore_errors=True)
    print(f"  together cold {cold_total:6.2f}s  warm {warm_total:6.2f}s  down {down_s:5.2f}s", flush=True)
    return out


def kafka_cds_ab(base_settings: StackSettings, workdir: Path, rounds: int) -> dict:
    """Warm Kafka starts with and without the class-data archive, interleaved so load drifts hit both."""
    times: dict[str, list[float]] = {"cds": [], "no_cds": []}
    state = workdir / "cds-ab"
    for i in range(rounds):
        for variant in ("cds", "no_cds"):
            stack = Stack(base_settings.model_copy(update={"state_dir": state, "kafka_cds": variant == "cds"}))
            try:
                elapsed, _ = timed_up(stack, ["kafka"])
            finally:
                stack.down()
            if i > 0 or variant == "no_cds":  # round 0 with cds may be the one that dumps the archive
                times[variant].append(elapsed)
            print(f"  kafka warm {variant:6s} {elapsed:6.2f}s", flush=True)
    shutil.rmtree(state, ignore_errors=True)
    return {k: {"runs_s": v, "median_s": median(v)} for k, v in times.items()}


def feast_import_seconds() -> float:
    """`import feast` in a fresh interpreter: paid once by every process that applies or reads features."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import feast"], check=True)
    return time.perf_counter() - t0


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def summarize(repeats: list[dict]) -> dict:
    summary: dict = {"components": {}}
    for name in COMPONENTS:
        summary["components"][name] = {
            "cold_alone_s": median([r["alone"][name]["cold"] for r in repeats]),
            "warm_alone_s": median([r["alone"][name]["warm"] for r in repeats]),
            "down_alone_s": median([r["alone"][name]["down"] for r in repeats]),
            "cold_in_stack_s": median([r["together"]["cold_parts"].get(name, float("nan")) for r in repeats]),
            "warm_in_stack_s": median([r["together"]["warm_parts"].get(name, float("nan")) for r in repeats]),
        }
    comps = summary["components"]
    summary["total"] = {
        "cold_s": median([r["together"]["cold_total"] for r in repeats]),
        "warm_s": median([r["together"]["warm_total"] for r in repeats]),
        "down_s": median([r["together"]["down"] for r in repeats]),
        "cold_sum_alone_s": sum(c["cold_alone_s"] for c in comps.values()),
        "warm_sum_alone_s": sum(c["warm_alone_s"] for c in comps.values()),
    }
    return summary


def table(summary: dict) -> str:
    rows = [["component", "cold alone", "warm alone", "cold in `up`", "warm in `up`", "down alone"]]
    for name, c in summary["components"].items():
        rows.append([name, f"{c['cold_alone_s']:.2f}", f"{c['warm_alone_s']:.2f}", f"{c['cold_in_stack_s']:.2f}",
                     f"{c['warm_in_stack_s']:.2f}", f"{c['down_alone_s']:.2f}"])
    t = summary["total"]
    rows.append(["total `up` (parallel)", f"{t['cold_sum_alone_s']:.2f} (sum)", f"{t['warm_sum_alone_s']:.2f} (sum)",
                 f"{t['cold_s']:.2f}", f"{t['warm_s']:.2f}", f"{t['down_s']:.2f}"])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [" | ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--port-base", type=int, default=int(os.environ.get("QANCHOR_BENCH_PORT_BASE", 29600)))
    parser.add_argument("--cds-rounds", type=int, default=4, help="interleaved warm Kafka starts, CDS on/off")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="qanchor-bench-stack-"))
    base = StackSettings(state_dir=workdir / "unused", port_base=args.port_base)
    # Fill the JAR cache first: "cold" means a fresh state dir, not a fresh download.
    Kafka(base).ensure_jars()
    load_before = os.getloadavg()
    repeats = []
    try:
        feast_import = feast_import_seconds()
        print(f"import feast (fresh interpreter): {feast_import:.2f}s", flush=True)
        for i in range(args.repeats):
            print(f"repeat {i + 1}/{args.repeats}", flush=True)
            repeats.append(one_repeat(base, workdir))
        print("kafka warm start, class-data archive on/off", flush=True)
        cds = kafka_cds_ab(base, workdir, args.cds_rounds)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    summary = summarize(repeats)
    summary["feast_import_s"] = feast_import
    summary["kafka_cds_ab"] = cds
    result = {
        "benchmark": "stack_startup",
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": describe(loadavg_1m_before=load_before[0], loadavg_1m_after=os.getloadavg()[0]),
        "settings": {"online_store": base.online_store, "kafka_heap": base.kafka_heap,
                     "kafka_jvm_opts": base.kafka_jvm_opts, "repeats": args.repeats},
        "summary": summary,
        "repeats": repeats,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {args.out.relative_to(REPO) if args.out.is_relative_to(REPO) else args.out}")
    print(f"machine: {os.cpu_count()} cpus, load {load_before[0]:.1f} -> {os.getloadavg()[0]:.1f}; "
          f"median of {args.repeats}, seconds\n")
    print(table(summary))
    on, off = cds["cds"]["median_s"], cds["no_cds"]["median_s"]
    print(f"\nkafka warm start: class-data archive {on:.2f}s vs none {off:.2f}s ({off / on:.2f}x), "
          f"median of {len(cds['cds']['runs_s'])}/{len(cds['no_cds']['runs_s'])} interleaved runs")
    print(f"import feast in a fresh interpreter: {feast_import:.2f}s (paid by the first `up` that applies Feast; "
          "the feast rows above exclude it)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
