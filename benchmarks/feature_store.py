"""Feature store read/write latency on both online stores (SQLite, Redis).

    .venv/bin/python benchmarks/feature_store.py [--redis-url redis://127.0.0.1:6379/0] [--out results.json]

Every user is written full (each source at its K, MovieLens default: 32+16+16 events, ~49 KB of vectors), then
`FeatureReader.get` is timed for 1 and 32 users, side by side with the same lookup decoded through Feast's
`OnlineResponse.to_dict()` (the baseline the reader's direct proto decoding replaces). Cases run in interleaved
rounds; wall and client-thread CPU time are both reported. Without --redis-url a
private `redis-server` is started on QANCHOR_PORT_BASE+79 (or a free port) and stopped at the end.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere: this clone first
from benchmarks.machine import describe, summary  # noqa: E402

from services.common.feast_store import apply, get_store  # noqa: E402
from services.common.features import (  # noqa: E402
    FeatureSpec, SourceEvents, UserFeatures, from_feature_dict, load_feature_spec,
)
from services.common.features_online import FeatureReader, FeatureWriter  # noqa: E402


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


def _timed(fn, repeats: int, wall: list[float], cpu: list[float]) -> None:
    # Wall time is what a caller waits; thread CPU time is the client-side cost, far less sensitive to other
    # processes competing for the same cores (shared 2-core machines are noisy).
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.thread_time()
        fn()
        cpu.append((time.thread_time() - c0) * 1000)
        wall.append((time.perf_counter() - w0) * 1000)


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


class Case:
    """One online store with its own state dir, written full once."""

    def __init__(self, tmp: Path, online: str, redis_url: str | None, n_users: int) -> None:
        self.online, self.n_users = online, n_users
        self.spec = load_feature_spec()
        self.store = get_store(apply(tmp / f"state_{online}", online, redis_url))
        self.reader, self.writer = FeatureReader(self.store, self.spec), FeatureWriter(self.store, self.spec)
        self.service = self.store.get_feature_service(self.spec.feature_service)
        self.users = _users(self.spec, n_users)
        for i in range(0, n_users, 32):
            self.writer.write(self.users[i:i + 32])
        self.samples: dict[str, tuple[list[float], list[float]]] = {}
        self.rng = np.random.default_rng(1)

    def _ids(self, b: int) -> list[str]:
        return [f"user-{j}" for j in self.rng.choice(self.n_users, b, replace=False)]

    def _baseline(self, b: int) -> None:
        ids = self._ids(b)
        resp = self.store.get_online_features(features=self.service, entity_rows=[{"user_id": u} for u in ids])
        from_feature_dict(ids, resp.to_dict(), self.spec)

    def round(self, repeats: int) -> None:
        """One block of every measurement; rounds of all cases are interleaved so load drifts hit all alike."""
        jobs = {
            "read_1": lambda: self.reader.get(self._ids(1)),
            "read_32": lambda: self.reader.get(self._ids(32)),
            "read_32_to_dict": lambda: self._baseline(32),
            "write_1": lambda: self.writer.write(self.users[:1]),
            "write_32": lambda: self.writer.write(self.users[32:64]),
        }
        for name, fn in jobs.items():
            wall, cpu = self.samples.setdefault(name, ([], []))
            _timed(fn, repeats if name.startswith("read") else max(2, repeats // 10), wall, cpu)

    def result(self) -> dict:
        out: dict = {"online": self.online}
        for name, (wall, cpu) in self.samples.items():
            out[f"{name}_ms"] = _summary(wall)
            out[f"{name}_cpu_ms"] = _summary(cpu)
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--redis-url", default=None)
    parser.add_argument("--users", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=200, help="reads per measurement (writes: a tenth)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds the repeats are split into")
    parser.add_argument("--out", type=Path, default=Path("feature_store_bench.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="qanchor_featbench_") as tmp_s:
        tmp = Path(tmp_s)
        redis_proc, url = (None, args.redis_url) if args.redis_url else _start_redis(tmp)
        try:
            cases = [Case(tmp, online, url if online == "redis" else None, args.users)
                     for online in ("sqlite", "redis")]
            for case in cases:
                case.round(5)  # warm registry caches and connections; discarded
                case.samples.clear()
            for _ in range(args.rounds):
                for case in cases:
                    case.round(args.repeats // args.rounds)
            results = [c.result() for c in cases]
        finally:
            if redis_proc is not None:
                redis_proc.terminate()
                redis_proc.wait(timeout=10)
    meta = {"machine": describe(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "users": args.users, "repeats": args.repeats}
    args.out.write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    print(f"\n{summary(meta['machine'])}  {meta['date']}  (ms, p50 wall / p50 client CPU; every source at its K)")
    print("| store | read 1 | read 32 | read 32 via to_dict | write 1 | write 32 |")
    print("|---|---|---|---|---|---|")
    for r in results:
        f = lambda k: f"{r[k + '_ms']['p50']:.2f} / {r[k + '_cpu_ms']['p50']:.2f}"  # noqa: E731
        print(f"| {r['online']} | {f('read_1')} | {f('read_32')} | {f('read_32_to_dict')} "
              f"| {f('write_1')} | {f('write_32')} |")
    print(f"full results: {args.out}")


if __name__ == "__main__":
    main()
