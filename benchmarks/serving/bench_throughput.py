"""Throughput of the real `qanchor` model under concurrent clients: served (bf16 + cross-request batching) against the
previous serving (fp32, contract v1: one request per execute), side by side in one run.

    QANCHOR_STATE_DIR=/tmp/qa QANCHOR_PORT_BASE=23000 .venv/bin/python benchmarks/serving/bench_throughput.py \
        MODEL_REPOSITORY/qanchor/1/models/<V> [--clients 1,4,16] [--requests-per-client 2] [--scenarios 10]

One exported model version (`python -m training.export`, e.g. the default checkpoint) is served by two real Triton
processes, started by the stack manager on their own port bases and fed the same model folder:
  baseline  contract v1 (max_batch_size 0), QANCHOR_PRECISION=float32 and QANCHOR_SERVING_ATTENTION=trained (the
            checkpoint's own attention) in Triton's environment: what was served before
  served    contract v2 (dynamic batcher, max_batch_size 16, --queue-delay-us, default 2 ms), precision from the
            model config (auto: bf16 on AMX CPUs), SDPA attention
Clients are threads calling the gateway's model client (services/gateway/clients/triton_pool.py: the same request
building the gateway does) with one user and S scenarios per request; every request is a new user (a prefix miss:
the costly case, and the one batching helps most). For each client count the two arms run back to back. Reported:
embeddings/s (requests x S / wall), request latency p50/p99, and Triton's executions per inference (batching).
Prints a table last; writes benchmarks/results/throughput.json and a PNG.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import tritonclient.grpc as tgrpc

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from benchmarks.machine import describe, summary  # noqa: E402

from services.common.features import SourceEvents, UserFeatures, load_feature_spec  # noqa: E402
from services.gateway.clients.triton import served_counts  # noqa: E402
from services.gateway.clients.triton_pool import Discovery, TritonPool  # noqa: E402
from services.gateway.core import ModelRequest  # noqa: E402
from services.stack import Stack, StackSettings  # noqa: E402
from training.export.contract import MODEL_NAME, Contract, render_model_config  # noqa: E402

MODEL_PY = ROOT / "training" / "export" / "triton_models" / "qanchor" / "model.py"
ARMS = {"baseline": {"max_batch_size": 0, "precision": "float32", "attention": "trained", "cpu_wait": "passive",
                     "shift": 100, "queue_delay_us": 0},
        "served": {"max_batch_size": 16, "precision": None, "attention": "sdpa", "cpu_wait": "passive", "shift": 200,
                   "queue_delay_us": 2000}}


def make_repository(repo: Path, version_dir: Path, max_batch_size: int, queue_delay_us: int = 2000) -> None:
    """A Triton repository serving `version_dir` (linked, not copied) with the contract v1 or v2 config."""
    cfg = json.loads((version_dir / "config.json").read_text())
    i = cfg["input"]
    contract = Contract(tuple((s["name"], s["k"]) for s in i["sources"]), i["d_enc"], i["d_tab"], cfg["head"]["out"])
    model = repo / MODEL_NAME
    shutil.rmtree(model, ignore_errors=True)
    (model / "1" / "models").mkdir(parents=True)
    shutil.copy2(MODEL_PY, model / "1" / "model.py")
    (model / "1" / "models" / version_dir.name).symlink_to(version_dir.resolve(), target_is_directory=True)
    params = {"model_versions": version_dir.name, "cache_bytes": str(1 << 30), "torch_threads": "0"}
    msg = contract.model_config(MODEL_NAME, max_batch_size=max_batch_size, max_queue_delay_us=queue_delay_us,
                                parameters=params, specific_version=1)
    (model / "config.pbtxt").write_text(render_model_config(msg, tool="benchmarks/serving/bench_throughput.py"))


def start_arm(name: str, version_dir: Path, state: Path, base: int) -> Stack:
    arm = ARMS[name]
    settings = StackSettings(state_dir=state / name, port_base=base + arm["shift"])
    make_repository(settings.layout.model_repository, version_dir, arm["max_batch_size"], arm["queue_delay_us"])
    env = {"QANCHOR_PRECISION": arm["precision"], "QANCHOR_SERVING_ATTENTION": arm["attention"],
           "QANCHOR_CPU_WAIT": arm["cpu_wait"], "OMP_WAIT_POLICY": None, "GOMP_SPINCOUNT": None}
    saved = {k: os.environ.pop(k, None) for k in env}
    os.environ.update({k: v for k, v in env.items() if v})  # Triton's Python backend inherits the environment
    try:
        stack = Stack(settings)
        stack.up(["triton"], timeout_s=600)
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None)
            if v is not None:
                os.environ[k] = v
    return stack


def make_request(spec, uid: str, scenarios: int, rng: np.random.Generator) -> ModelRequest:
    sources = {s.name: SourceEvents([f"e{j}" for j in range(s.k)],
                                    rng.standard_normal((s.k, spec.encoder_dim)).astype(np.float16),
                                    np.arange(s.k, dtype=np.int64)) for s in spec.sources}
    user = UserFeatures(uid, sources, rng.standard_normal(spec.tabular_dim).astype(np.float32), 1, time.time())
    queries = [f"Will this user respond to campaign scenario_{i:02d}?" for i in range(scenarios)]
    return ModelRequest(user, "", [f"scenario_{i:02d}" for i in range(scenarios)], queries, [None] * scenarios)


def stats(url: str) -> tuple[int, int]:
    with tgrpc.InferenceServerClient(url) as c:
        counts = served_counts(c, MODEL_NAME)
    return counts.inferences, counts.executions


def run_cell(pool: TritonPool, url: str, reqs: list[ModelRequest], clients: int, timeout_s: float) -> dict:
    lat: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    todo = iter(reqs)

    def worker() -> None:
        while True:
            with lock:
                r = next(todo, None)
            if r is None:
                return
            t = time.perf_counter()
            out = pool.infer([r], timeout_s)[0]
            with lock:
                lat.append((time.perf_counter() - t) * 1000)
                if not hasattr(out, "embeddings"):
                    errors.append(repr(out)[:200])

    before = stats(url)
    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    inf, exe = (a - b for a, b in zip(stats(url), before))
    n_emb = sum(len(r.scenarios) for r in reqs)
    return {"clients": clients, "requests": len(reqs), "errors": len(errors), "error_samples": errors[:3],
            "wall_s": wall, "embeddings_per_s": n_emb / wall, "p50_ms": float(np.percentile(lat, 50)),
            "p99_ms": float(np.percentile(lat, 99)), "executions": exe, "inferences": inf,
            "requests_per_execute": inf / max(exe, 1)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model_dir", type=Path, help="an exported model version folder (.../qanchor/1/models/<V>)")
    ap.add_argument("--clients", default="1,4,16")
    ap.add_argument("--requests-per-client", type=int, default=2)
    ap.add_argument("--scenarios", type=int, default=10)
    ap.add_argument("--timeout-s", type=float, default=600.0)
    ap.add_argument("--queue-delay-us", type=int, default=ARMS["served"]["queue_delay_us"],
                    help="the served arm's dynamic-batcher max_queue_delay_microseconds (training.export's "
                         "--max-queue-delay-us)")
    ap.add_argument("--cpu-wait", choices=("passive", "spin"), default="passive",
                    help="the served arm's QANCHOR_CPU_WAIT (training/export/cpu_wait.py)")
    ap.add_argument("--baseline-cpu-wait", choices=("passive", "spin"), default="passive",
                    help="the baseline arm's (passive: as served before)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "throughput.json")
    args = ap.parse_args(argv)
    ARMS["served"]["queue_delay_us"] = args.queue_delay_us
    ARMS["served"]["cpu_wait"] = args.cpu_wait
    ARMS["baseline"]["cpu_wait"] = args.baseline_cpu_wait
    base = int(os.environ.get("QANCHOR_PORT_BASE", "23000"))
    state = Path(os.environ.get("QANCHOR_STATE_DIR", "/tmp/qanchor-bench")) / "throughput"
    spec = load_feature_spec()
    load_before = os.getloadavg()
    stacks = {name: start_arm(name, args.model_dir, state, base) for name in ARMS}
    urls = {name: s.endpoints().triton_grpc for name, s in stacks.items()}
    pools = {name: TritonPool(Discovery([u]), spec, MODEL_NAME) for name, u in urls.items()}
    rng = np.random.default_rng(0)
    cells: list[dict] = []
    try:
        for name, pool in pools.items():  # warm-up: first calls allocate and load lazily
            for k in range(2):
                out = pool.infer([make_request(spec, f"warm-{name}-{k}", args.scenarios, rng)], args.timeout_s)[0]
                if not hasattr(out, "embeddings"):
                    raise SystemExit(f"{name}: warm-up request failed: {out!r}; see the Triton log under {state}")
        for ci, clients in enumerate(int(c) for c in args.clients.split(",")):
            order = list(ARMS) if ci % 2 == 0 else list(reversed(ARMS))  # alternate which arm goes first
            for name in order:
                reqs = [make_request(spec, f"{name}-{clients}-{j}", args.scenarios, rng)
                        for j in range(clients * args.requests_per_client)]
                cell = {"arm": name, **run_cell(pools[name], urls[name], reqs, clients, args.timeout_s),
                        "loadavg_1m": os.getloadavg()[0]}
                cells.append(cell)
                print(f"{name:<9} clients={clients:<3} {cell['embeddings_per_s']:8.1f} emb/s  p50 "
                      f"{cell['p50_ms']:8.0f} ms  p99 {cell['p99_ms']:8.0f} ms  requests/execute "
                      f"{cell['requests_per_execute']:.1f}  errors {cell['errors']}", flush=True)
    finally:
        for p in pools.values():
            p.close()
        for s in stacks.values():
            s.down(["triton"])
    by = {(c["arm"], c["clients"]): c for c in cells}
    ratios = {str(n): by[("served", n)]["embeddings_per_s"] / by[("baseline", n)]["embeddings_per_s"]
              for n in sorted({c["clients"] for c in cells})}
    result = {"benchmark": "throughput", "date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
              "machine": describe(loadavg_before=load_before, loadavg_after=os.getloadavg()),
              "settings": {"model_dir": str(args.model_dir), "scenarios": args.scenarios,
                           "requests_per_client": args.requests_per_client, "arms": ARMS},
              "cells": cells, "served_over_baseline": ratios, "targets": {"served_over_baseline_at_16_min": 5.0}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    _plot(result, args.out.with_suffix(".png"))
    print(f"\nThroughput, real qanchor model ({args.model_dir.name}), S={args.scenarios}, every request a prefix miss, "
          f"load {load_before[0]:.1f} -> {os.getloadavg()[0]:.1f}, {summary(result['machine'])}")
    print(f"{'clients':>7} {'baseline emb/s':>15} {'served emb/s':>13} {'ratio':>6} {'served p50/p99 ms':>18} "
          f"{'req/execute':>11}")
    for n, r in ratios.items():
        b, s = by[("baseline", int(n))], by[("served", int(n))]
        print(f"{n:>7} {b['embeddings_per_s']:>15.1f} {s['embeddings_per_s']:>13.1f} {r:>5.1f}x "
              f"{s['p50_ms']:>8.0f}/{s['p99_ms']:<9.0f} {s['requests_per_execute']:>11.1f}")
    return 0


def _plot(result: dict, path: Path) -> None:
    from benchmarks.plot import pyplot

    plt = pyplot()
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for arm, label in (("baseline", "fp32, one request per execute"), ("served", "bf16 + cross-request batching")):
        rows = [c for c in result["cells"] if c["arm"] == arm]
        ax.plot([c["clients"] for c in rows], [c["embeddings_per_s"] for c in rows], "o-", label=label)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("concurrent clients")
    ax.set_ylabel("embeddings / s")
    ax.set_title(f"qanchor throughput on {result['machine']['cpus']} CPU cores "
                 f"(load {result['machine']['loadavg_before'][0]:.1f}), S={result['settings']['scenarios']}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    raise SystemExit(main())
