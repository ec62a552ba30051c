"""`qanchor embed USER --scenario NAME [--scenario NAME ...]`: embeddings from a running gateway.

One scenario -> GetEmbedding; several -> GetUserEmbeddings (the user's prefix is computed once). Prints each
embedding's metadata and its first values (all of them with --full), or one JSON document with --json. The local
stack's gateway and client token are found on their own (services/cli/target.py).
"""
from __future__ import annotations

import argparse
from typing import Any

from services.cli.output import add_json_flag, format_table, print_json
from services.cli.target import CliSettings, gateway_target
from services.common.proto.qanchor.v1 import embedding_pb2 as pb


def _as_dict(e: pb.Embedding, brief: bool) -> dict[str, object]:
    out: dict[str, object] = {
        "user_id": e.user_id, "scenario": e.scenario, "dim": e.dim, "model_version": e.model_version,
        "prompt_version": e.prompt_version, "arm": e.arm, "feature_version": e.feature_version,
        "feature_timestamp": e.feature_timestamp.ToJsonString() if e.HasField("feature_timestamp") else None,
        "cache_hit": e.cache_hit, "fallback": e.fallback,
    }
    if not brief:
        out["values"] = [round(v, 6) for v in e.values]
    return out


def _text(rows: list[dict[str, Any]], full: bool) -> str:
    table = [[r["scenario"], r.get("prompt_version", "-"), r.get("arm", "-"), r.get("model_version", "-"),
              "no features (cold start)" if r.get("fallback") else f"version {r.get('feature_version')}",
              "hit" if r.get("cache_hit") else "miss", r.get("dim", "-")]
             if "error" not in r else [r["scenario"], "-", "-", "-", "-", "-", f"error: {r['error']['message']}"]
             for r in rows]
    out = [format_table(table, ["scenario", "prompt", "arm", "model", "features", "prefix cache", "dim"])]
    for r in rows:
        values = r.get("values")
        if values:
            shown = values if full else values[:8]
            out.append(f"{r['scenario']}: [{', '.join(f'{v:.4f}' for v in shown)}"
                       f"{'' if full else f', ... ({len(values)} values; --full or --json for all)'}]")
    return "\n".join(out)


def _run(args: argparse.Namespace) -> int:
    from services.gateway.embedding_client import EmbeddingClient  # grpc channel setup only when the command runs

    settings = CliSettings()
    target = gateway_target(args, settings)
    timeout = args.timeout if args.timeout is not None else settings.gateway_timeout_s
    scenarios = list(dict.fromkeys(args.scenario))  # distinct, order kept
    status = 0
    with EmbeddingClient(target.address, token=target.token, timeout_s=timeout, tls=settings.tls()) as client:
        if len(scenarios) == 1:
            resp = client.get_embedding(args.user, scenarios[0])
            rows: list[dict[str, Any]] = [_as_dict(resp.embedding, args.brief)]
        else:
            resp = client.get_user_embeddings(args.user, scenarios)
            rows = []
            for scenario, r in zip(scenarios, resp.results):
                if r.HasField("error"):
                    status = 1
                    rows.append({"user_id": args.user, "scenario": scenario,
                                 "error": {"code": r.error.code, "message": r.error.message}})
                else:
                    rows.append(_as_dict(r.embedding, args.brief))
    t = resp.timing
    timing = {"total_ms": round(t.total_ms, 2), "features_ms": round(t.features_ms, 2),
              "model_ms": round(t.model_ms, 2)}
    if args.json:
        print_json({"user_id": args.user, "gateway": target.address, "embeddings": rows, "timing": timing})
    else:
        print(f"user {args.user} at {target.address}")
        print(_text(rows, args.full))
        print(f"took {timing['total_ms']:.1f} ms (features {timing['features_ms']:.1f} ms, "
              f"model {timing['model_ms']:.1f} ms)")
    return status


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("embed", help="get a user's scenario embedding(s) from the gateway",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("user", help="user id")
    p.add_argument("--scenario", "-s", action="append", required=True,
                   help="scenario name; repeat for several (one shared-prefix call)")
    p.add_argument("--gateway", help="gateway host:port (env QANCHOR_GATEWAY_TARGET; default: the local stack)")
    p.add_argument("--token", help="bearer token (env QANCHOR_GATEWAY_TOKEN; default: the local stack's client "
                                   "token from $QANCHOR_STATE_DIR/run/tokens.json)")
    p.add_argument("--timeout", type=float, help="deadline in seconds (env QANCHOR_GATEWAY_TIMEOUT_S; default 5)")
    p.add_argument("--brief", action="store_true", help="metadata only, no vector values")
    p.add_argument("--full", action="store_true", help="print every value (text output)")
    add_json_flag(p)
    p.set_defaults(func=_run)
