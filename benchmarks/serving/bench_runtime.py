"""The `qanchor` serving core in one process, as Triton's Python stub runs it: load an exported model version
(training.export.artifact, the same call `model.py` makes) and time `QAnchorRuntime.serve`.

    .venv-model/bin/python benchmarks/serving/bench_runtime.py MODEL_REPOSITORY/qanchor/1/models/<V> \
        [--threads 1] [--repeats 3] [--no-merge]

Per repeat, fresh users: one scenario on a prefix miss, ten scenarios on a miss, ten on a hit, one on a hit.
Separates model cost from Triton / gateway cost (compare with bench_gateway.py --model qanchor). Thread settings
are applied the way the Triton model applies them (training.export.runtime.configure_threads).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from benchmarks.machine import describe  # noqa: E402

QUERIES = [f"Will this user respond to campaign scenario_{i:02d}?" for i in range(10)]  # what bench_gateway sends


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model_dir", type=Path, help="an exported model version folder (…/qanchor/1/models/<V>)")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0 = torch default)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-merge", action="store_true", help="keep LoRA unmerged (the pre-fix serving path)")
    ap.add_argument("--wait-policy", choices=["passive", "active", "unset"], default="passive",
                    help="OMP_WAIT_POLICY (unset = OpenMP's default spin-then-sleep, the pre-fix Triton stub)")
    ap.add_argument("--out", type=Path, default=None, help="write the timings as JSON here")
    args = ap.parse_args()
    if args.wait_policy == "unset":
        os.environ.pop("OMP_WAIT_POLICY", None)
    else:
        os.environ["OMP_WAIT_POLICY"] = args.wait_policy.upper()  # before torch loads OpenMP

    from training.export.runtime import configure_threads

    threads = configure_threads(args.threads)  # before torch runs anything: OpenMP reads its env once
    import numpy as np

    from training.export.artifact import load_model_artifact
    from training.export.runtime import EmbedRequest, QAnchorRuntime, prepare_for_serving

    t0 = time.perf_counter()
    loaded = load_model_artifact(args.model_dir)
    if not args.no_merge:
        prepare_for_serving(loaded.model)
    load_s = time.perf_counter() - t0
    rt = QAnchorRuntime([loaded])
    ref = json.loads((args.model_dir / "reference" / "reference.json").read_text())["users"][0]

    def req(uid: str, s: int) -> EmbedRequest:
        return EmbedRequest(user_id=uid, feature_version=1, model_version="",
                            event_vecs={k: np.asarray(v, np.float16) for k, v in ref["events"].items()},
                            event_mask={k: np.asarray(v, bool) for k, v in ref["mask"].items()},
                            tabular=np.asarray(ref["tabular"], np.float32), queries=QUERIES[:s])

    def timed(r: EmbedRequest) -> float:
        t = time.perf_counter()
        out = rt.serve([r])[0]
        assert not isinstance(out, Exception), out
        return (time.perf_counter() - t) * 1000

    timed(req("warm", 1))  # first call pays lazy init (allocator, tokenizer caches)
    rows: dict[str, list[float]] = {"one_miss": [], "ten_miss": [], "ten_hit": [], "one_hit": []}
    for i in range(args.repeats):
        rows["one_miss"].append(timed(req(f"a{i}", 1)))
        rows["ten_miss"].append(timed(req(f"b{i}", 10)))
        rows["ten_hit"].append(timed(req(f"b{i}", 10)))
        rows["one_hit"].append(timed(req(f"a{i}", 1)))
    med = {k: statistics.median(v) for k, v in rows.items()}
    print(f"threads={threads} merged={not args.no_merge} wait_policy={args.wait_policy} load_s={load_s:.1f} "
          f"loadavg={os.getloadavg()[0]:.1f}")
    for k, v in rows.items():
        print(f"{k:9s} median_ms={med[k]:9.1f} all={[round(x) for x in v]}")
    print(f"ten_miss/one_miss={med['ten_miss'] / med['one_miss']:.2f}")
    if args.out:
        args.out.write_text(json.dumps({"machine": describe(), "threads": threads, "merged": not args.no_merge,
                                        "wait_policy": args.wait_policy, "loadavg": os.getloadavg(), "ms": rows,
                                        "median_ms": med}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
