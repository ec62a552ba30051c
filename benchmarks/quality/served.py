"""The quality table's model rows as an outsider gets them: through the public API of a running stack.

run.py embeds its users by loading the checkpoint; a team that adopts qanchor gets its embeddings from the gateway,
behind Kafka, ingest, Feast and Triton. This fetches the same users' embeddings that way, for run.py to probe
beside its own rows (`run.py --served FILE`: rows "served: ...", their paired differences, and the cosine between
each served embedding and the checkpoint's own):

    # 1. (model env) the run's users' history as events, for the same population flags run.py will get
    .venv-model/bin/python benchmarks/quality/served.py events --train-users 1000 --val-users 300 --eval-users 625 \\
        --out var/served/events.jsonl
    # 2. (services env, a running stack: scripts/run.sh or `.venv/bin/qanchor stack up`) replay them through Kafka,
    #    wait for ingest, register the scenarios by query text, fetch every user x scenario over gRPC
    .venv/bin/python benchmarks/quality/served.py fetch --events var/served/events.jsonl \\
        --scenarios training/data/scenarios.yaml benchmarks/quality/scenarios_unseen.yaml --out var/served/ml-1m.npz
    # 3. (model env) the table, with the served rows next to the checkpoint's
    .venv-model/bin/python benchmarks/quality/run.py --checkpoint artifacts/default --train-users 1000 \\
        --val-users 300 --eval-users 625 --served var/served/ml-1m.npz ...

The replay must be the only source of these users' features: users are replayed as `--user-prefix` + user id
(default "quality-"), so the demo's events of the same MovieLens users stay in rows of their own, and a fetch refuses
a stack that already holds features for any of them (an earlier fetch), where the new events would merge with the
old row; `--no-replay` fetches again from a stack fed exactly this file.

Every scenario is registered under a name of its own (`--name-prefix`, default "quality-"), so no A/B split or
promoted prompt of the stack's scenarios can answer for it: each response must be the zero-shot embedding (prompt
version "zero-shot"), not a cold-start fallback, and of one model version; anything else stops the fetch with what
it saw.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

ZERO_SHOT = "zero-shot"  # the prompt_version of the query alone (protos/qanchor/v1/embedding.proto)
STATIC_NAME = "static"  # run.py's ("static", "static") row: STATIC_QUERY for every scenario
FORMAT = 1


def spec_names(scenarios: list[dict]) -> list[str]:
    """The file's row names, as run.py's query_specs keys them: "static::static", "zero_shot::<scenario>"."""
    return [f"static::{STATIC_NAME}"] + [f"zero_shot::{s['name']}" for s in scenarios]


def load_served(path: Path) -> tuple[list[str], list[str], np.ndarray, dict]:
    """-> (user ids as the API knows them, row names, embeddings [users, rows, dim] float32, meta)."""
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path}: format {meta.get('format')!r}, this reader knows {FORMAT}; fetch it again")
        return [str(u) for u in z["user_ids"]], [str(n) for n in z["names"]], z["emb"].astype(np.float32), meta


def save_served(path: Path, user_ids: list[str], names: list[str], emb: np.ndarray, meta: dict) -> None:
    """The fetch's file, written whole or not at all (load_served reads it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, user_ids=np.asarray(user_ids), names=np.asarray(names), emb=emb.astype(np.float32),
             meta=np.asarray(json.dumps({"format": FORMAT, **meta})))
    tmp.replace(path)


def cmd_events(args: argparse.Namespace) -> int:
    """The run's users (run.py's model_users for these population flags) as event-contract JSONL: their history
    window, what the prefix reads (training.data.export_events)."""
    from benchmarks.quality.run import build_context, full_world, model_users
    from training.data.export_events import export_records

    if args.dataset == "offline":
        raise SystemExit("served.py events replays a MovieLens dataset's users; an event log's users are in the "
                         "stack already: measure the log with run.py --dataset offline (docs/own-data.md)")
    ctx = build_context(args)
    users = model_users(ctx)
    records = export_records(full_world(ctx.world), users, "history")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    tmp.replace(out)
    print(f"{len(records)} events of {len(users)} users -> {out}")
    return 0


def _check(uid: str, names: list[str], resp) -> tuple[np.ndarray, str, int]:
    """One GetUserEmbeddings response -> ([rows, dim], model version, feature version); raises on anything that
    is not the zero-shot embedding of a user with features."""
    vecs, versions = [], set()
    feature_version = 0
    for name, r in zip(names, resp.results):
        if r.WhichOneof("result") != "embedding":
            raise RuntimeError(f"user {uid} scenario {name}: {r.error.code} {r.error.message}")
        e = r.embedding
        if e.fallback:
            raise RuntimeError(f"user {uid} got the cold-start fallback: ingest has no features for them (was the "
                               "replay complete? `qanchor stack logs ingest -n 100`)")
        if e.prompt_version != ZERO_SHOT:
            raise RuntimeError(f"user {uid} scenario {name} was served prompt version {e.prompt_version} (arm "
                               f"{e.arm!r}): a tuned prompt answers for it; fetch with another --name-prefix")
        versions.add(e.model_version)
        feature_version = e.feature_version
        vecs.append(np.asarray(e.values, np.float32))
    if len(vecs) != len(names):
        raise RuntimeError(f"user {uid}: {len(vecs)} results for {len(names)} scenarios")
    if len(versions) != 1:
        raise RuntimeError(f"user {uid}: model versions {sorted(versions)} in one response")
    return np.stack(vecs), versions.pop(), feature_version


def cmd_fetch(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from services.common.errors import AlreadyExists
    from services.demo import steps
    from services.demo.settings import DemoSettings
    from services.gateway.embedding_client import EmbeddingClient
    from services.registry.client import RegistryClient
    from services.stack import Stack, StackSettings
    from services.stack.apps import read_tokens

    scenarios = [s for f in args.scenarios for s in yaml.safe_load(Path(f).read_text())["scenarios"]]
    seen: dict[str, str] = {}
    for s in scenarios:
        if seen.setdefault(s["name"], s["query"]) != s["query"]:
            print(f"scenario {s['name']!r} appears twice with other queries in {args.scenarios}", file=sys.stderr)
            return 1
    scenarios = list({s["name"]: s for s in scenarios}.values())
    queries = {STATIC_NAME: args.static_query, **{s["name"]: s["query"] for s in scenarios}}
    names = spec_names(scenarios)
    demo = DemoSettings()  # the stack's location: QANCHOR_STATE_DIR, QANCHOR_PORT_BASE, as the demo reads it
    settings = StackSettings(state_dir=demo.state_dir, port_base=demo.port_base)
    stack = Stack(settings)
    record = stack.models.load_record()
    if record is None:
        print("no exported model recorded for this stack: start it first (scripts/run.sh or "
              "`.venv/bin/qanchor stack up`)", file=sys.stderr)
        return 1
    ep, tokens, host = stack.endpoints(), read_tokens(settings), settings.host

    def progress(msg: str) -> None:
        print(f"[served] {msg}", file=sys.stderr, flush=True)

    feast_yaml = settings.layout.root / "feast" / "feature_store.yaml"
    lines, users = steps.read_events(Path(args.events), args.user_prefix)  # users as the stack knows them
    file_users = [u[len(args.user_prefix):] for u in users]
    held = steps.users_with_features(feast_yaml, users)
    t0 = time.monotonic()
    if args.no_replay:
        if len(held) < len(users):
            print(f"--no-replay: {len(users) - len(held)} of the {len(users)} users have no features in this stack; "
                  "drop --no-replay to replay them", file=sys.stderr)
            return 1
        sent = 0
        progress(f"ingest: not replaying; fetching what the stack holds for {len(users)} users")
    else:
        if held:
            print(f"{len(held)} of the {len(users)} users already have features in this stack (e.g. {held[0]}: an "
                  "earlier fetch replayed their events), so this replay would merge with them and the served rows "
                  "would not be these events' features. Fetch again with --no-replay if this stack was fed exactly "
                  "this file, or with another --user-prefix", file=sys.stderr)
            return 1
        progress(f"kafka: replaying {args.events}")
        sent = steps.publish_events(lines, ep.kafka_bootstrap)
        steps.wait_for_features(feast_yaml, users, ep.kafka_bootstrap, args.ingest_timeout_s, progress)
    replay_s = time.monotonic() - t0
    progress(f"ingest: {sent} events of {len(users)} users in Feast after {replay_s:.0f} s")

    registered = {}
    with RegistryClient(f"{host}:{settings.port('registry_grpc')}", token=tokens.admin) as registry:
        for name, query in queries.items():
            served_name = args.name_prefix + name
            try:
                registry.register_scenario(served_name, query, description="quality benchmark (served.py)")
            except AlreadyExists:
                have = registry.get_scenario(served_name).query_text
                if have != query:
                    print(f"scenario {served_name!r} is registered with another query ({have!r}, not {query!r}); "
                          "fetch with another --name-prefix", file=sys.stderr)
                    return 1
            registered[name] = served_name
    call_names = [registered[STATIC_NAME]] + [registered[s["name"]] for s in scenarios]

    emb = np.zeros((len(users), len(names), 0), np.float32)
    model_versions, feature_versions = set(), []
    t1 = time.monotonic()
    with EmbeddingClient(f"{host}:{settings.port('gateway_grpc')}", token=tokens.client,
                         timeout_s=args.rpc_timeout_s) as client:
        def one(uid: str):
            return _check(uid, call_names, client.get_user_embeddings(uid, call_names))

        with ThreadPoolExecutor(args.concurrency) as pool:
            for i, (vecs, version, fv) in enumerate(tqdm(pool.map(one, users), total=len(users), unit="user",
                                                         desc="GetUserEmbeddings", file=sys.stderr)):
                if emb.shape[2] == 0:
                    emb = np.zeros((len(users), len(names), vecs.shape[1]), np.float32)
                emb[i] = vecs
                model_versions.add(version)
                feature_versions.append(fv)
    if len(model_versions) != 1:
        print(f"the stack served model versions {sorted(model_versions)} during the fetch (a reload mid-run?): "
              "fetch again", file=sys.stderr)
        return 1
    meta = {"model_version": model_versions.pop(), "model_source": record.source,
            "model_trained": record.trained, "scenarios_files": args.scenarios, "static_query": args.static_query,
            "queries": {s["name"]: s["query"] for s in scenarios}, "registered_as": registered,
            "events": sent, "users": len(users), "user_prefix": args.user_prefix, "replay_s": round(replay_s, 1),
            "fetch_s": round(time.monotonic() - t1, 1), "concurrency": args.concurrency,
            "feature_version_median": float(np.median(feature_versions)),
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    out = Path(args.out)
    save_served(out, file_users, names, emb, meta)
    progress(f"{len(users)} users x {len(names)} rows of model {meta['model_version']} in {meta['fetch_s']:.0f} s "
             f"-> {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    ev = sub.add_parser("events", help="(model env) the run's users' history as event JSONL")
    if "events" in (argv if argv is not None else sys.argv[1:])[:1]:  # the model env's flags need training/
        try:
            from benchmarks.quality.run import add_population_args
        except ImportError as exc:
            p.exit(2, f"served.py events runs in the model env (.venv-model/bin/python): {exc}\n")
        add_population_args(ev)
    ev.add_argument("--out", required=True)
    fe = sub.add_parser("fetch", help="(services env, running stack) replay, register, fetch over gRPC")
    fe.add_argument("--events", required=True, help="JSONL from the events step")
    fe.add_argument("--scenarios", nargs="+", default=[str(ROOT / "training" / "data" / "scenarios.yaml")],
                    help="scenario YAMLs (name + query per entry): every file the run.py tables of this fetch get "
                         "(each user's prefix is computed once for all of them)")
    fe.add_argument("--out", required=True, help=".npz for run.py --served")
    fe.add_argument("--static-query", default="Describe this user.",
                    help="the static row's query (run.py's STATIC_QUERY)")
    fe.add_argument("--name-prefix", default="quality-", help="registered names are PREFIX + scenario name")
    fe.add_argument("--user-prefix", default="quality-",
                    help="replayed and fetched as PREFIX + user id, so no other feed of the stack (the demo's "
                         "events of the same MovieLens users) merges into their rows; the file keeps the ids")
    fe.add_argument("--concurrency", type=int, default=2, help="GetUserEmbeddings calls in flight")
    fe.add_argument("--rpc-timeout-s", type=float, default=120.0)
    fe.add_argument("--ingest-timeout-s", type=float, default=1800.0)
    fe.add_argument("--no-replay", action="store_true",
                    help="fetch the features the stack already holds for these users (fed this file before) "
                         "instead of replaying it: a second replay would merge with them")
    args = p.parse_args(argv)
    if args.cmd == "events":
        return cmd_events(args)
    import importlib.util

    if importlib.util.find_spec("kafka") is None:  # the replay's client: only the services env has it
        p.exit(2, "served.py fetch runs in the services env (.venv/bin/python): no kafka-python here\n")
    return cmd_fetch(args)


if __name__ == "__main__":
    raise SystemExit(main())
