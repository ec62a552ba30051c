"""Ingest benchmark: sustained events/s with encoding (cold and warm text cache), and freshness at a fixed rate.

    python -m services.stack up                       # same QANCHOR_STATE_DIR / QANCHOR_PORT_BASE as below
    .venv/bin/python benchmarks/ingest/bench_ingest.py [--events 3000] [--warm-events 30000] [--rate 500]

Workload: MovieLens-100K ratings exported as v1 events (training.data.export_events, run in the model env),
user ids prefixed per run, event times rewritten to the send time. Real Kafka, Triton text_encoder, Redis
(the L2 text-vector cache), Feast. Every phase starts a fresh consumer process (`python -m services.ingest`),
so its in-process caches start empty.
  1. encoder baseline: texts/s of the Triton text_encoder alone, distinct texts, one request of 256;
  2. cold: --events preloaded, L2 namespace new to this run (INGEST_ENCODER_ID unique), so every distinct text
     goes to Triton once; events/s from the first to the last commit, stage breakdown and cache counts;
  3. warm: the same texts for new users (the cold events repeated under new user-id prefixes), L2 shared with
     phase 2 and topped up first with the few texts of those events the cold run never had to encode (texts
     cut by last-K inside a batch): the steady state of a stream whose item texts have all been seen before;
  4. freshness: warm cache, events offered at --rate for --seconds with ts = send time; p50/p99 of Kafka record
     time -> row written (the consumer's ingest-latency histogram, interpolated like histogram_quantile).
Prints a table last; writes JSON (and a PNG of the freshness histogram) to --out.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere: the repository's packages first
sys.path.insert(1, str(ROOT / "tests" / "integration"))  # reuse the integration helpers (real stack clients)
from benchmarks.machine import describe, summary  # noqa: E402

from ingest_harness import (  # noqa: E402
    Ctx, committed, end_offsets, metrics, new_topic, start_consumer, stop, wait_caught_up,
)
from services.ingest.metrics import event_outcomes  # noqa: E402
from services.stack import StackSettings  # noqa: E402
from training.export.text_encoder import export_text_encoder  # noqa: E402


def load_events(users: int) -> list[dict]:
    out = Path(tempfile.mkdtemp()) / "events.jsonl"
    subprocess.run([str(ROOT / ".venv-model" / "bin" / "python"), "-m", "training.data.export_events",
                    "--dataset", "ml-100k", "--users", str(users), "--out", str(out)], check=True, cwd=ROOT,
                   capture_output=True)
    return [json.loads(line) for line in out.read_text().splitlines()]


def quantile(buckets: list[tuple[float, float]], q: float) -> float:
    """histogram_quantile over cumulative (le, count) buckets; inf when the rank is past the last finite bucket."""
    total = buckets[-1][1]
    if total == 0:
        return float("nan")
    rank, prev_le, prev_c = q * total, 0.0, 0.0
    for le, c in buckets:
        if c >= rank:
            if le == float("inf"):
                return float("inf")
            return prev_le + (le - prev_le) * (rank - prev_c) / max(c - prev_c, 1e-9)
        prev_le, prev_c = le, c
    return prev_le


def freshness_buckets(m: dict[str, float]) -> list[tuple[float, float]]:
    out = []
    for key, v in m.items():
        if key.startswith("qanchor_ingest_latency_seconds_bucket"):
            le = key.split('le="')[1].split('"')[0]
            out.append((float("inf") if le == "+Inf" else float(le), v))
    return sorted(out)


def encoder_baseline(ctx: Ctx, texts: list[str]) -> float:
    from services.ingest.encoder import TritonTextEncoder

    enc = TritonTextEncoder(ctx.triton)
    enc.encode(texts[:16])  # warm
    t0 = time.perf_counter()
    enc.encode(texts)
    dt = time.perf_counter() - t0
    enc.close()
    return len(texts) / dt


def repeat_for_new_users(events: list[dict], n: int) -> list[dict]:
    """`n` events: `events` again and again, each pass under its own user-id prefix (same texts, new users)."""
    out: list[dict] = []
    rep = 0
    while len(out) < n:
        out.extend(dict(e, user_id=f"r{rep}-{e['user_id']}") for e in events[:n - len(out)])
        rep += 1
    return out


def drain(ctx: Ctx, events: list[dict], encoder_id: str, name: str) -> dict:
    """Preload `events` on a new topic, start a fresh consumer, time it from its first commit to the end."""
    run = uuid.uuid4().hex[:6]
    topic, group = new_topic(ctx), f"bench-{run}"
    send(ctx, topic, events, None, run)
    os.environ["INGEST_ENCODER_ID"] = encoder_id
    load_start = os.getloadavg()[0]
    proc, log, port = start_consumer(ctx, topic, group, name, max_poll_records=500)
    while not committed(ctx, group, topic):
        time.sleep(0.05)
    t_first = time.monotonic()
    first = sum(committed(ctx, group, topic).values())
    wait_caught_up(ctx, group, topic, [proc], timeout=3600)
    drain_s = time.monotonic() - t_first
    m = metrics(port)
    stop(proc)
    drained = sum(end_offsets(ctx, topic).values()) - first
    stages = {k.split('stage="')[1].rstrip('"}'): v for k, v in m.items()
              if k.startswith("qanchor_ingest_stage_seconds_sum")}
    cache = {r: m.get(f'qanchor_ingest_encoder_cache_total{{result="{r}"}}', 0.0) for r in ("hit", "l2_hit", "miss")}
    state = {r: m.get(f'qanchor_ingest_user_state_total{{result="{r}"}}', 0.0) for r in ("hit", "miss")}
    applied = m['qanchor_ingest_events_total{outcome="applied"}']
    outcomes = outcome_counts(m)
    # What the rest of the pipeline (validate, Feast read + write, commit) costs per event, over every batch
    # of the run: the rate ingest would reach if encoding were free (all cache hits, or a GPU encoder).
    non_encode_s = sum(v for k, v in stages.items() if k != "encode")
    total = max(sum(cache.values()), 1.0)
    return {"events": drained, "seconds": drain_s, "events_per_s": drained / drain_s,
            "texts_encoded": cache["miss"], "cache": cache, "cache_hit_rate_l1": cache["hit"] / total,
            "cache_hit_rate_l1_or_l2": (cache["hit"] + cache["l2_hit"]) / total,
            "user_state": state, "user_state_hit_rate": state["hit"] / max(state["hit"] + state["miss"], 1.0),
            "stage_seconds": stages, "encoder_texts_per_s_in_run": cache["miss"] / max(stages.get("encode", 0), 1e-9),
            "events_per_s_excluding_encode": applied / max(non_encode_s, 1e-9),
            "outcomes": outcomes, "loadavg_1m_start": load_start, "loadavg_1m_end": os.getloadavg()[0]}


def outcome_counts(m: dict[str, float]) -> dict[str, float]:
    """What the consumer did with the phase's events: applied / duplicate / dlq, and the DLQ reasons met."""
    got = event_outcomes(m)
    return {**{o: got.get(o, 0.0) for o in ("applied", "duplicate", "dlq")},
            **{k: v for k, v in got.items() if k.startswith("dlq:") and v}}


def top_up(ctx: Ctx, events: list[dict], encoder_id: str) -> int:
    """Put every distinct text of `events` into the L2 namespace `encoder_id`; returns how many were missing.

    Batch boundaries decide which texts survive last-K at a batch's end, so a replay with other boundaries can
    need a text the first pass skipped; without this, "warm" would still encode a few percent of its texts.
    """
    from services.ingest.encoder import CachedEncoder, RedisVectorCache, TritonTextEncoder

    triton = TritonTextEncoder(ctx.triton)
    enc = CachedEncoder(triton, 0, RedisVectorCache.from_url(ctx.redis_url, encoder_id))
    enc.encode_many([e["text"] for e in events if e["kind"] == "event"])
    triton.close()
    return enc.misses


def send(ctx: Ctx, topic: str, events: list[dict], rate: float | None, run: str) -> float:
    from services.ingest.producer import make_producer

    producer = make_producer(ctx.bootstrap)
    t0 = time.time()
    for i, e in enumerate(events):
        if rate:
            wait = t0 + i / rate - time.time()
            if wait > 0:
                time.sleep(wait)
        e = dict(e, user_id=f"{run}-{e['user_id']}", ts=time.time())
        producer.send(topic, key=e["user_id"].encode(), value=json.dumps(e).encode())
    producer.flush()
    producer.close()
    return time.time() - t0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=3000, help="events preloaded for the cold-cache phase")
    p.add_argument("--warm-events", type=int, default=30000, help="events preloaded for the warm-cache phase")
    p.add_argument("--rate", type=float, default=500.0, help="offered events/s in the freshness phase")
    p.add_argument("--seconds", type=float, default=10.0, help="length of the freshness phase")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "ingest" / "results")
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    st = StackSettings()
    feast_cfg = Path(st.state_dir) / "feast" / "feature_store.yaml"
    ctx = Ctx(bootstrap=f"127.0.0.1:{st.port('kafka')}", triton=f"127.0.0.1:{st.port('triton_grpc')}",
              feast_config=feast_cfg, tmp=Path(tempfile.mkdtemp(prefix="bench-ingest-")),
              redis_url=f"redis://127.0.0.1:{st.port('redis')}/0")
    import tritonclient.grpc as grpcclient

    export_text_encoder(Path(st.state_dir) / "model_repository")
    grpcclient.InferenceServerClient(ctx.triton).load_model("text_encoder")

    events = load_events(users=943)
    cold_events = events[:args.events]
    distinct = sorted({e["text"] for e in events if e["kind"] == "event"})
    load_start = os.getloadavg()
    baseline = encoder_baseline(ctx, distinct[-256:])  # texts the cold phase is unlikely to need first

    # A namespace of the shared L2 cache that is new to this run: cold really is cold, and other runs' vectors
    # in the same Redis are neither used nor touched.
    encoder_id = f"all-MiniLM-L6-v2/ml64/bench-{uuid.uuid4().hex[:6]}"
    cold = drain(ctx, cold_events, encoder_id, "cold")
    topped_up = top_up(ctx, cold_events, encoder_id)
    warm = drain(ctx, repeat_for_new_users(cold_events, args.warm_events), encoder_id, "warm")
    warm["texts_topped_up_before"] = topped_up

    # freshness at a fixed offered rate, warm cache (the cold texts again, for new users)
    fresh_events = repeat_for_new_users(cold_events, int(args.rate * args.seconds))
    run = uuid.uuid4().hex[:6]
    topic, group = new_topic(ctx), f"bench-{run}"
    os.environ["INGEST_ENCODER_ID"] = encoder_id
    proc, log, port = start_consumer(ctx, topic, group, "fresh", max_poll_records=500)
    while "partitions assigned" not in log.read_text():
        time.sleep(0.2)
    time.sleep(2.0)
    send_s = send(ctx, topic, fresh_events, args.rate, run)
    wait_caught_up(ctx, group, topic, [proc], timeout=3600)
    m2 = metrics(port)
    stop(proc)
    b = freshness_buckets(m2)
    fresh = {"offered_rate": args.rate, "achieved_send_rate": len(fresh_events) / send_s, "events": len(fresh_events),
             "cache": "warm", "p50_s": quantile(b, 0.5), "p99_s": quantile(b, 0.99), "buckets": b,
             "mean_s": m2["qanchor_ingest_latency_seconds_sum"] / max(m2["qanchor_ingest_latency_seconds_count"], 1),
             "outcomes": outcome_counts(m2)}

    result = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": describe(),
              "loadavg_at_start": load_start, "loadavg_at_end": os.getloadavg(),
              "encoder_texts_per_s": baseline, "sustained_cold_cache": cold, "sustained_warm_cache": warm,
              "freshness": fresh}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ingest.json").write_text(json.dumps(result, indent=2, default=str))
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        les = [le for le, _ in b if le != float("inf")]
        counts = [c for le, c in b if le != float("inf")]
        plt.figure(figsize=(6, 3.5))
        plt.step(les, [c / max(b[-1][1], 1) for c in counts], where="post")
        plt.axvline(2.0, color="grey", linestyle=":", label="goal p99 <= 2 s")
        plt.xscale("log"); plt.xlabel("seconds from the event's send to its features being servable")
        plt.ylabel("share of events")
        plt.title(f"Ingest latency at {args.rate:.0f} events/s offered, warm text cache")
        plt.legend(loc="lower right"); plt.tight_layout(); plt.savefig(args.out / "ingest_freshness.png", dpi=120)
    except Exception as exc:  # the plot is a convenience; the JSON is the result
        print(f"plot skipped: {exc}", file=sys.stderr)

    print(f"\ningest benchmark, {result['date']}, {summary(result['machine'])}, load avg (1 min) "
          f"{load_start[0]:.1f} at start, {result['loadavg_at_end'][0]:.1f} at end")
    print("| metric | cold text cache | warm text cache |\n|---|---|---|")
    print(f"| sustained events/s with encoding | {cold['events_per_s']:.0f} ({cold['events']:.0f} ev) | "
          f"{warm['events_per_s']:.0f} ({warm['events']:.0f} ev) |")
    print(f"| texts encoded / hit rate L1 / L1+L2 | {cold['texts_encoded']:.0f} / {cold['cache_hit_rate_l1']:.0%} / "
          f"{cold['cache_hit_rate_l1_or_l2']:.0%} | {warm['texts_encoded']:.0f} / {warm['cache_hit_rate_l1']:.0%} / "
          f"{warm['cache_hit_rate_l1_or_l2']:.0%} |")
    print(f"| Feast reads skipped (user-state hit rate) | {cold['user_state_hit_rate']:.0%} | "
          f"{warm['user_state_hit_rate']:.0%} |")
    print(f"| events/s if encoding were free | {cold['events_per_s_excluding_encode']:.0f} | "
          f"{warm['events_per_s_excluding_encode']:.0f} |")
    print(f"| load avg 1 min at phase start / end | {cold['loadavg_1m_start']:.1f} / {cold['loadavg_1m_end']:.1f} | "
          f"{warm['loadavg_1m_start']:.1f} / {warm['loadavg_1m_end']:.1f} |")
    print(f"warm phase: {warm['texts_topped_up_before']} texts topped up into the L2 cache before it")
    for name, phase in (("cold", cold), ("warm", warm), ("freshness", fresh)):
        print(f"{name} phase outcomes: " + ", ".join(f"{k} {v:.0f}" for k, v in phase["outcomes"].items()))
    print(f"\nTriton text_encoder alone: {baseline:.0f} distinct texts/s; cold run: "
          f"{cold['encoder_texts_per_s_in_run']:.0f} texts/s inside the consumer")
    print(f"freshness (warm cache) p50 / p99 / mean at {args.rate:.0f} ev/s offered (sent at "
          f"{fresh['achieved_send_rate']:.0f}): {fresh['p50_s']:.2f} s / {fresh['p99_s']:.2f} s / "
          f"{fresh['mean_s']:.2f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
