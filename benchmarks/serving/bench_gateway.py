"""Serving benchmark: the gateway process over real gRPC, real Feast (SQLite), real Triton.

    QANCHOR_STATE_DIR=/tmp/qa QANCHOR_PORT_BASE=19000 python benchmarks/serving/bench_gateway.py [--model qanchor]

Starts what is missing of the local stack (Triton + Feast apply), the registry in-process, and the gateway as
its own process (`python -m services.gateway`, so load generation does not share its GIL), then measures:

  1. GetEmbedding latency, prefix-cache miss (a fresh user each call) vs hit (the same users again);
  2. one GetUserEmbeddings(10 scenarios) on a cold prefix (fresh user) and again on the cached prefix, vs 10
     GetEmbedding calls, per fresh user;
  3. gateway overhead at a fixed open-loop rate (default 100 req/s): client latency through the gateway vs the same
     request sent straight to Triton from this process.

The default model is `qanchor_contract` (services/gateway/contract_model: ~0 compute), so (1)-(3) measure the
gateway + transport, not the LLM; pass `--model qanchor` once training's exporter has installed the real model.
Absolute times count only from the machine they ran on (printed). Prints a table last; full results as JSON.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere: the repository's packages first
from benchmarks.machine import describe  # noqa: E402

from services.common.feast_store import get_store  # noqa: E402
from services.common.features import SourceEvents, UserFeatures, load_feature_spec  # noqa: E402
from services.common.features_online import FeatureReader, FeatureWriter  # noqa: E402
from services.common.proto.qanchor.v1 import embedding_pb2 as pb  # noqa: E402
from services.common.settings import repo_root  # noqa: E402
from services.gateway import contract_model  # noqa: E402
from services.gateway.embedding_client import EmbeddingClient  # noqa: E402
from services.gateway.clients.triton import TritonModelClient  # noqa: E402
from services.gateway.core import ModelRequest  # noqa: E402
from services.registry.client import RegistryClient  # noqa: E402
from services.registry.server import create_registry_server  # noqa: E402
from services.registry.settings import RegistrySettings  # noqa: E402
from services.stack import Stack, StackSettings  # noqa: E402

SCENARIOS = [f"scenario_{i:02d}" for i in range(10)]
ADMIN = "bench-admin"
TOKEN = "bench-token"  # the gateway refuses to start without one (secure by default); clients send it as a bearer


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q)) if xs else float("nan")


def summary(xs_ms: list[float]) -> dict[str, float]:
    return {"n": len(xs_ms), "p50_ms": pct(xs_ms, 50), "p99_ms": pct(xs_ms, 99), "mean_ms": float(np.mean(xs_ms))}


def make_users(prefix: str, n: int, version: int = 1) -> list[UserFeatures]:
    spec = load_feature_spec()
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        sources = {s.name: SourceEvents([f"e{j}" for j in range(s.k)],
                                        rng.standard_normal((s.k, spec.encoder_dim)).astype(np.float16),
                                        np.arange(s.k, dtype=np.int64)) for s in spec.sources}
        out.append(UserFeatures(f"{prefix}{i}", sources, rng.standard_normal(spec.tabular_dim).astype(np.float32),
                                version, time.time()))
    return out


def stage_buckets(metrics_url: str) -> dict[str, list[tuple[float, float]]]:
    """Cumulative (upper bound s, count) buckets of qanchor_gateway_stage_seconds per stage, from /metrics."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(metrics_url, timeout=5).read().decode()
    out: dict[str, list[tuple[float, float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "qanchor_gateway_stage_seconds_bucket":
                out.setdefault(sample.labels["stage"], []).append((float(sample.labels["le"]), sample.value))
    return {k: sorted(v) for k, v in out.items()}


def histogram_quantile(q: float, before: list[tuple[float, float]], after: list[tuple[float, float]]) -> float:
    """Prometheus-style quantile (linear inside the bucket) of the observations made between two scrapes, in ms."""
    b = dict(before)
    delta = [(le, n - b.get(le, 0.0)) for le, n in after]
    total = delta[-1][1]
    if total <= 0:
        return float("nan")
    rank, prev_le, prev_n = q * total, 0.0, 0.0
    for le, n in delta:
        if n >= rank:
            if le == float("inf"):
                return prev_le * 1000
            return (prev_le + (le - prev_le) * (rank - prev_n) / max(n - prev_n, 1e-12)) * 1000
        prev_le, prev_n = le, n
    return float("nan")


def start_gateway(env_extra: dict[str, str], log_path: Path) -> tuple[subprocess.Popen, str, str]:
    port, metrics_port = free_port(), free_port()
    env = dict(os.environ, GATEWAY_GRPC_PORT=str(port), GATEWAY_METRICS_PORT=str(metrics_port),
               GATEWAY_LOG_LEVEL="WARNING", **env_extra)
    proc = subprocess.Popen([sys.executable, "-m", "services.gateway"], env=env, cwd=repo_root(),
                            stdout=log_path.open("w"), stderr=subprocess.STDOUT)
    target = f"127.0.0.1:{port}"
    deadline = time.time() + 300  # importing Feast alone took ~60 s on a loaded 2-core machine
    with grpc.insecure_channel(target) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        while time.time() < deadline:
            if proc.poll() is not None:
                raise SystemExit(f"gateway exited with {proc.returncode}; log: {log_path}")
            try:
                if stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status == 1:
                    return proc, target, f"http://127.0.0.1:{metrics_port}/metrics"
            except grpc.RpcError:
                time.sleep(0.2)
    proc.terminate()
    raise SystemExit(f"gateway did not become healthy in 300 s; log: {log_path}")


def timed(fn) -> float:  # type: ignore[no-untyped-def]
    t = time.perf_counter()
    fn()
    return (time.perf_counter() - t) * 1000


def open_loop(stub, rate: float, seconds: float,  # type: ignore[no-untyped-def]
              user_ids: list[str]) -> tuple[list[float], int]:
    """Fire GetEmbedding at a fixed rate regardless of completions (no coordinated omission)."""
    lat: list[float] = []
    errors = [0]
    lock = threading.Lock()
    pending = []
    n = int(rate * seconds)
    t0 = time.perf_counter()
    for i in range(n):
        target_t = t0 + i / rate
        delay = target_t - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        sent = time.perf_counter()
        fut = stub.GetEmbedding.future(pb.GetEmbeddingRequest(user_id=user_ids[i % len(user_ids)],
                                                              scenario=SCENARIOS[0]), timeout=5.0,
                                      metadata=(("authorization", f"Bearer {TOKEN}"),))

        def done(f, sent=sent):  # type: ignore[no-untyped-def]
            with lock:
                if f.exception() is None:
                    lat.append((time.perf_counter() - sent) * 1000)
                else:
                    errors[0] += 1
        fut.add_done_callback(done)
        pending.append(fut)
    for f in pending:
        try:
            f.result()
        except grpc.RpcError:
            pass
    return lat, errors[0]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=contract_model.NAME, help="Triton model name (qanchor_contract | qanchor)")
    ap.add_argument("--users", type=int, default=200, help="users per measurement (cache-miss runs need fresh ones)")
    ap.add_argument("--rate", type=float, default=100.0, help="open-loop request rate for the overhead run")
    ap.add_argument("--seconds", type=float, default=10.0, help="duration of the open-loop run")
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("results") / "serving.json")
    args = ap.parse_args()

    settings = StackSettings()
    stack = Stack(settings)
    if args.model == contract_model.NAME:
        contract_model.install(settings.layout.model_repository)
    stack.up(["triton", "feast"])
    ep = stack.endpoints()
    import tritonclient.grpc as tgrpc

    tc = tgrpc.InferenceServerClient(ep.triton_grpc)
    tc.load_model(args.model)
    spec = load_feature_spec()
    store = get_store(ep.feast_config)
    writer = FeatureWriter(store, spec)
    run_id = f"b{int(time.time())}-"
    groups = {name: make_users(f"{run_id}{name}-", args.users) for name in ("miss", "multi", "single", "rate")}
    writer.write([u for g in groups.values() for u in g])

    tmp = Path(tempfile.mkdtemp(prefix="qanchor-bench-"))
    reg_server, reg_port, _ = create_registry_server(RegistrySettings(
        grpc_port=0, database_url=f"sqlite:///{tmp / 'registry.db'}", admin_token=ADMIN))
    reg_server.start()
    with RegistryClient(f"127.0.0.1:{reg_port}", token=ADMIN) as admin:
        for s in SCENARIOS:
            admin.register_scenario(s, f"Will this user respond to campaign {s}?")
    ab = tmp / "ab.yaml"
    ab.write_text("salt: bench\n")
    gw, target, metrics_url = start_gateway({"GATEWAY_AB_CONFIG": str(ab), "GATEWAY_TRITON_URL": ep.triton_grpc,
                                "GATEWAY_TRITON_MODEL": args.model,
                                "GATEWAY_REGISTRY_TARGET": f"127.0.0.1:{reg_port}",
                                "GATEWAY_FEAST_LOCATION": str(ep.feast_config), "GATEWAY_TOKEN": TOKEN},
                               tmp / "gateway.log")
    results: dict[str, object] = {}
    try:
        with EmbeddingClient(target, token=TOKEN, timeout_s=30.0) as client:
            for _ in range(20):  # warm up channels, registry cache, Feast registry cache
                client.get_embedding(groups["rate"][0].user_id, SCENARIOS[0])
            miss = [timed(lambda u=u: client.get_embedding(u.user_id, SCENARIOS[0])) for u in groups["miss"]]
            hit = [timed(lambda u=u: client.get_embedding(u.user_id, SCENARIOS[0])) for u in groups["miss"]]
            multi = [timed(lambda u=u: client.get_user_embeddings(u.user_id, SCENARIOS)) for u in groups["multi"]]
            multi_hit = [timed(lambda u=u: client.get_user_embeddings(u.user_id, SCENARIOS)) for u in groups["multi"]]
            single10 = [timed(lambda u=u: [client.get_embedding(u.user_id, s) for s in SCENARIOS])
                        for u in groups["single"]]
            results["get_embedding_miss"] = summary(miss)
            results["get_embedding_hit"] = summary(hit)
            results["user_embeddings_10"] = summary(multi)  # a cold prefix: fresh users
            results["user_embeddings_10_cached"] = summary(multi_hit)  # the same users again: prefix from the LRU
            results["ten_get_embedding"] = summary(single10)

            # Direct Triton baseline for the same request shape (one user, one scenario, warm prefix cache).
            reader = FeatureReader(store, spec)
            model = TritonModelClient(ep.triton_grpc, spec, args.model)
            rate_users = [u.user_id for u in groups["rate"]]
            feats = reader.get(rate_users)
            reqs = [ModelRequest(f, "", [SCENARIOS[0]], [f"Will this user respond to campaign {SCENARIOS[0]}?"],
                                 [None]) for f in feats]
            for r in reqs:  # warm the prefix cache for these users
                model.infer([r], 5.0)
            direct = [timed(lambda r=r: model.infer([r], 5.0)) for r in reqs]
            feast_ms = [timed(lambda u=u: reader.get([u])) for u in rate_users[:100]]
            results["direct_triton_hit"] = summary(direct)
            results["feast_lookup_1_user"] = summary(feast_ms)
            # The load generator is Python in this process too: keep its collector off the measured window.
            gc.collect()
            gc.freeze()
            before = stage_buckets(metrics_url)
            lat, errors = open_loop(client.stub, args.rate, args.seconds, rate_users)
            after = stage_buckets(metrics_url)
            results[f"gateway_open_loop_{int(args.rate)}rps"] = {**summary(lat), "errors": errors,
                                                                  "achieved_rps": len(lat) / args.seconds}
            # Server side, from the gateway's own histogram over the same window: its share of each call
            # (total - model client call) and the whole call inside the gateway.
            results[f"gateway_server_side_{int(args.rate)}rps"] = {
                f"{stage}_{name}_ms": histogram_quantile(q, before.get(stage, []), after[stage])
                for stage in ("overhead", "total", "model") if stage in after
                for name, q in (("p50", 0.5), ("p99", 0.99))}
            model.close()
    finally:
        gw.terminate()
        gw.wait(15)
        reg_server.stop(0)
        tc.unload_model(args.model)
        tc.close()
    meta = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "model": args.model,
            "loadavg": os.getloadavg(), "machine": describe(),
            "users": args.users, "scenarios": len(SCENARIOS)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "results": results}, indent=2))

    r: dict = results
    loop = r[f"gateway_open_loop_{int(args.rate)}rps"]
    # Same request shape (one user, one scenario, warm prefix): what the gateway adds on top of the model call.
    overhead_seq = r["get_embedding_hit"]["p50_ms"] - r["direct_triton_hit"]["p50_ms"]
    overhead_rate = loop["p50_ms"] - r["direct_triton_hit"]["p50_ms"]
    results["gateway_overhead_ms"] = {"sequential_p50": overhead_seq, f"at_{int(args.rate)}rps_p50": overhead_rate}
    args.out.write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    print(f"\nmodel={args.model} machine={summary(meta['machine'])!r} date={meta['date']}")
    print(f"{'measurement':<34}{'n':>6}{'p50 ms':>10}{'p99 ms':>10}")
    for name, s in results.items():
        if "p50_ms" not in s:
            continue
        print(f"{name:<34}{s['n']:>6}{s['p50_ms']:>10.2f}{s['p99_ms']:>10.2f}")  # type: ignore[index]
    print(f"GetUserEmbeddings(10) vs 10 x GetEmbedding (p50): "
          f"{r['ten_get_embedding']['p50_ms'] / r['user_embeddings_10']['p50_ms']:.2f}x faster")
    print(f"gateway overhead (p50, gateway GetEmbedding minus direct Triton): sequential {overhead_seq:.2f} ms; "
          f"at {args.rate:g} req/s offered ({loop['achieved_rps']:.0f} completed/s, {loop['errors']} errors) "
          f"{overhead_rate:.2f} ms")
    side = r.get(f"gateway_server_side_{int(args.rate)}rps", {})
    if side:
        print(f"inside the gateway at {args.rate:g} req/s (its stage histogram, bucket-interpolated): own share "
              f"(total - model call) p50 {side.get('overhead_p50_ms', float('nan')):.2f} / p99 "
              f"{side.get('overhead_p99_ms', float('nan')):.2f} ms; whole call p50 "
              f"{side.get('total_p50_ms', float('nan')):.2f} / p99 {side.get('total_p99_ms', float('nan')):.2f} ms")
    print(f"full results: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
