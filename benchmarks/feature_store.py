"""Feature store read/write latency: layouts (single view vs per source) x online stores (SQLite, Redis).

    .venv/bin/python benchmarks/feature_store.py [--redis-url redis://127.0.0.1:6379/0] [--out results.json]

Every user is written full (each source at its K, MovieLens default: 32+16+16 events, ~49 KB of vectors), then
`FeatureReader.get` is timed for 1 and 32 users, side by side with the same lookup decoded through Feast's
`OnlineResponse.to_dict()` (the baseline the reader's direct proto decoding replaces). Without --redis-url a
private `redis-server` is started on QANCHOR_PORT_BASE+79 (or a free port) and stopped at the end.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

from services.common.feast_store import apply, get_store
from services.common.features import (
    FeatureSpec, SourceEvents, UserFeatures, default_sources_path, from_feature_dict, load_feature_spec,
)
from services.common.features_online import FeatureReader, FeatureWriter


def _users(spec: FeatureSpec, n: int, seed: int = 0) -> list[UserFeatures]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        sources = {s.name: SourceEvents(texts=[f"{s.name} movie title number {j} (1999)" for j in range(s.k)],
                                        vectors=rng.standard_normal((s.k, spec.encoder_dim)).astype(np.float16),
                                        timestamps=np.arange(s.k, dtype=np.int64) + 1_700_000_000)
                   for s in spec.sources}
        out.append(UserFeatures(f"user-{i}", sources, rng.standard_normal(spec.tabular_dim).astype(np.float32),
                                feature_version=i + 1, updated_at=time.time()))
    return out


def _time_ms(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def _summary(ms: list[float]) -> dict[str, float]:
    ms = sorted(ms)
    return {"p50": statistics.median(ms), "p99": ms[min(len(ms) - 1, int(0.99 * len(ms)))], "n": len(ms)}


def _start_redis(workdir: Path) -> tuple[subprocess.Popen, str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server not found; pass --redis-url or install Debian's redis-server")
    port = int(os.environ.get("QANCHOR_PORT_BASE", "19000")) + 79
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(workdir)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, f"redis://127.0.0.1:{port}/0"
        except OSError:
            time.sleep(0.1)
    proc.terminate()
    raise SystemExit(f"redis-server did not start on port {port}")


def run_case(tmp: Path, online: str, layout: str, redis_url: str | None, n_users: int, repeats: int) -> dict:
    raw = yaml.safe_load(default_sources_path().read_text())
    raw["layout"] = layout
    spec_path = tmp / f"sources_{layout}.yaml"
    spec_path.write_text(yaml.safe_dump(raw))
    spec = load_feature_spec(spec_path)
    store = get_store(apply(tmp / f"state_{online}_{layout}", online, redis_url, sources_yaml=spec_path))
    reader, writer = FeatureReader(store, spec), FeatureWriter(store, spec)
    users = _users(spec, n_users)
    write32 = []
    for i in range(0, n_users, 32):
        t0 = time.perf_counter()
        writer.write(users[i:i + 32])
        write32.append((time.perf_counter() - t0) * 1000)
    write1 = _time_ms(lambda: writer.write(users[:1]), max(5, repeats // 10))
    service = store.get_feature_service(spec.feature_service)
    result = {"online": online, "layout": layout, "write_32_ms": _summary(write32), "write_1_ms": _summary(write1)}
    rng = np.random.default_rng(1)
    for b in (1, 32):
        batches = [[f"user-{j}" for j in rng.choice(n_users, b, replace=False)] for _ in range(repeats)]
        it = iter(batches * 3)
        for _ in range(min(20, repeats)):  # warm the registry cache and connections
            reader.get(next(it))
        ours = _time_ms(lambda: reader.get(next(it)), repeats)

        def baseline() -> None:
            ids = next(it)
            resp = store.get_online_features(features=service, entity_rows=[{"user_id": u} for u in ids])
            from_feature_dict(ids, resp.to_dict(), spec)

        base = _time_ms(baseline, repeats)
        result[f"read_{b}_ms"] = _summary(ours)
        result[f"read_{b}_to_dict_ms"] = _summary(base)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--redis-url", default=None)
    parser.add_argument("--users", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--out", type=Path, default=Path("feature_store_bench.json"))
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="qanchor_featbench_") as tmp_s:
        tmp = Path(tmp_s)
        redis_proc, url = (None, args.redis_url) if args.redis_url else _start_redis(tmp)
        try:
            for online in ("sqlite", "redis"):
                for layout in ("single", "per_source"):
                    results.append(run_case(tmp, online, layout, url if online == "redis" else None,
                                            args.users, args.repeats))
        finally:
            if redis_proc is not None:
                redis_proc.terminate()
                redis_proc.wait(timeout=10)
    meta = {"machine": f"{platform.machine()} {os.cpu_count()} cpu, {platform.platform()}",
            "python": sys.version.split()[0], "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "users": args.users, "repeats": args.repeats}
    args.out.write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    print(f"\n{meta['machine']}  {meta['date']}  (p50 / p99 ms; full users: every source at its K)")
    print("| store | layout | read 1 | read 32 | read 32 via to_dict | write 1 | write 32 |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        f = lambda k: f"{r[k]['p50']:.2f} / {r[k]['p99']:.2f}"  # noqa: E731
        print(f"| {r['online']} | {r['layout']} | {f('read_1_ms')} | {f('read_32_ms')} | {f('read_32_to_dict_ms')} "
              f"| {f('write_1_ms')} | {f('write_32_ms')} |")
    print(f"full results: {args.out}")


if __name__ == "__main__":
    main()
