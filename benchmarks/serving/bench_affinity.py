"""Prefix-cache hit rate with two Triton replicas: user affinity vs round robin vs one replica, on the same trace.

    QANCHOR_STATE_DIR=/tmp/qa QANCHOR_PORT_BASE=23000 .venv/bin/python benchmarks/serving/bench_affinity.py \
        [--users 400] [--requests 3000] [--cache-entries 100] [--zipf 1.0]

Two real Triton processes (stack manager, own port bases) serve the reference contract model (its compute is ~0, its
prefix LRU is real and bounded to `--cache-entries` users per replica), called through the gateway's model client
(services/gateway/clients/triton_pool.py). One trace of user calls (Zipf-distributed popularity, as real traffic is)
is replayed four times, with the model reloaded (caches emptied) before each:
  single       one replica
  single_2x    one replica whose LRU holds both replicas' users (the same total cache memory as two)
  affinity     two replicas, consistent hashing with bounded load (the gateway's default)
  round_robin  two replicas, every call to the next replica
Hit rate = calls answered from a cached prefix / calls. Target: affinity >= 95% of a single replica's (both the
same-size and the same-total-memory one). Prints a table last;
writes benchmarks/results/affinity.json.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import tritonclient.grpc as tgrpc

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from benchmarks.machine import describe  # noqa: E402

from services.common.features import SourceEvents, UserFeatures, load_feature_spec  # noqa: E402
from services.gateway import contract_model  # noqa: E402
from services.gateway.clients.triton_pool import Discovery, TritonPool  # noqa: E402
from services.gateway.core import ModelRequest  # noqa: E402
from services.stack import Stack, StackSettings  # noqa: E402

SHIFTS = (100, 200)


def trace(users: int, requests: int, s: float, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, users + 1) ** s
    ids = rng.choice(users, size=requests, p=p / p.sum())
    return [f"user-{i}" for i in ids]


def request(spec, uid: str) -> ModelRequest:
    z = np.zeros((1, spec.encoder_dim), np.float16)
    sources = {s.name: SourceEvents(["e"], z, np.zeros(1, np.int64)) for s in spec.sources}
    user = UserFeatures(uid, sources, np.zeros(spec.tabular_dim, np.float32), 1, time.time())
    return ModelRequest(user, "", ["s"], ["Will this user respond?"], [None])


def replay(pool: TritonPool, spec, calls: list[str]) -> dict:
    hits, errors = 0, 0
    t0 = time.perf_counter()
    for uid in calls:
        out = pool.infer([request(spec, uid)], 10.0)[0]
        if hasattr(out, "cache_hit"):
            hits += bool(out.cache_hit)
        else:
            errors += 1
    served = {k.removeprefix("served:"): v for k, v in pool.stats.items() if k.startswith("served:")}
    return {"calls": len(calls), "hits": hits, "hit_rate": hits / len(calls), "errors": errors,
            "per_replica": served, "seconds": time.perf_counter() - t0}


def reload(urls: list[str]) -> None:
    for url in urls:
        with tgrpc.InferenceServerClient(url) as c:
            c.unload_model(contract_model.NAME)
            c.load_model(contract_model.NAME)  # a fresh instance: an empty prefix cache


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=400)
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--cache-entries", type=int, default=100, help="users each replica's prefix LRU holds")
    ap.add_argument("--zipf", type=float, default=1.0, help="popularity exponent of the trace")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "affinity.json")
    args = ap.parse_args(argv)
    base = int(os.environ.get("QANCHOR_PORT_BASE", "23000"))
    state = Path(os.environ.get("QANCHOR_STATE_DIR", "/tmp/qanchor-bench")) / "affinity"
    spec = load_feature_spec()
    stacks = []
    try:
        for shift in SHIFTS:
            settings = StackSettings(state_dir=state / f"replica-{shift}", port_base=base + shift)
            contract_model.install(settings.layout.model_repository, cache_entries=args.cache_entries)
            stacks.append(Stack(settings))
            stacks[-1].up(["triton"])
        urls = [s.endpoints().triton_grpc for s in stacks]
        calls = trace(args.users, args.requests, args.zipf)
        arms = {"single": (urls[:1], "affinity"), "single_2x": (urls[:1], "affinity"), "affinity": (urls, "affinity"),
                "round_robin": (urls, "round_robin")}
        results = {}
        for name, (eps, routing) in arms.items():
            entries = 2 * args.cache_entries if name == "single_2x" else args.cache_entries
            contract_model.install(stacks[0].settings.layout.model_repository, cache_entries=entries)
            reload(urls)
            pool = TritonPool(Discovery(eps), spec, contract_model.NAME, routing=routing)
            try:
                results[name] = replay(pool, spec, calls)
            finally:
                pool.close()
            print(f"{name:<12} hit rate {results[name]['hit_rate']:.3f}  per replica {results[name]['per_replica']}",
                  flush=True)
    finally:
        for s in stacks:
            s.down(["triton"])
    ratio = {k: results[k]["hit_rate"] / results["single"]["hit_rate"]
             for k in ("single_2x", "affinity", "round_robin")}
    ratio["affinity_over_single_2x"] = results["affinity"]["hit_rate"] / results["single_2x"]["hit_rate"]
    out = {"benchmark": "affinity", "date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
           "machine": describe(),
           "settings": vars(args) | {"out": str(args.out)}, "results": results, "over_single": ratio,
           "targets": {"affinity_over_single_min": 0.95, "affinity_over_single_2x_min": 0.95}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    print(f"\nPrefix hit rate, {args.requests} calls of {args.users} users (Zipf {args.zipf}), "
          f"{args.cache_entries} users cached per replica, two real Triton replicas")
    print(f"{'routing':<22} {'hit rate':>8} {'x single':>9}")
    print(f"{'one replica':<22} {results['single']['hit_rate']:>8.3f} {1.0:>9.2f}")
    for k, label in (("single_2x", "one, twice the cache"), ("affinity", "two, user affinity"),
                     ("round_robin", "two, round robin")):
        print(f"{label:<22} {results[k]['hit_rate']:>8.3f} {ratio[k]:>9.2f}")
    print("two replicas with affinity vs one replica with the same total cache: "
          f"{ratio['affinity_over_single_2x']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
