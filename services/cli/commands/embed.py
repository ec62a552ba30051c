"""`qanchor embed USER --scenario NAME [--scenario NAME ...]`: embeddings from a running gateway.

One scenario -> GetEmbedding; several -> GetUserEmbeddings (the user's prefix is computed once). Prints one JSON
object per scenario (metadata + values), or a short table with --brief.
"""
from __future__ import annotations

import argparse
import json
import sys

from pydantic import SecretStr
from pydantic_settings import SettingsConfigDict

from services.common.proto.qanchor.v1 import embedding_pb2 as pb
from services.common.settings import ServiceSettings


class CliGatewaySettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="QANCHOR_", extra="ignore", frozen=True)

    # host:port of the gateway; None = 127.0.0.1 at QANCHOR_PORT_BASE + gateway offset.
    gateway_target: str | None = None
    # Bearer token of the gateway (GATEWAY_TOKEN on the server side).
    gateway_token: SecretStr | None = None
    # Per-call deadline in seconds.
    gateway_timeout_s: float = 5.0


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


def _run(args: argparse.Namespace) -> int:
    from services.gateway.embedding_client import EmbeddingClient  # grpc channel setup only when the command runs

    settings = CliGatewaySettings()
    target = args.gateway or settings.gateway_target or f"127.0.0.1:{settings.port('gateway_grpc')}"
    token = args.token or (settings.gateway_token.get_secret_value() if settings.gateway_token else None)
    timeout = args.timeout if args.timeout is not None else settings.gateway_timeout_s
    scenarios = list(dict.fromkeys(args.scenario))  # distinct, order kept
    status = 0
    with EmbeddingClient(target, token=token, timeout_s=timeout) as client:
        if len(scenarios) == 1:
            resp = client.get_embedding(args.user, scenarios[0])
            rows: list[dict[str, object]] = [_as_dict(resp.embedding, args.brief)]
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
    for row in rows:
        print(json.dumps(row))
    t = resp.timing
    print(f"timing total_ms={t.total_ms:.2f} features_ms={t.features_ms:.2f} model_ms={t.model_ms:.2f}",
          file=sys.stderr)
    return status


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("embed", help="get a user's scenario embedding(s) from the gateway",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("user", help="user id")
    p.add_argument("--scenario", "-s", action="append", required=True,
                   help="scenario name; repeat for several (one shared-prefix call)")
    p.add_argument("--gateway", help="gateway host:port (env QANCHOR_GATEWAY_TARGET; default: local stack)")
    p.add_argument("--token", help="bearer token (env QANCHOR_GATEWAY_TOKEN)")
    p.add_argument("--timeout", type=float, help="deadline in seconds (env QANCHOR_GATEWAY_TIMEOUT_S; default 5)")
    p.add_argument("--brief", action="store_true", help="metadata only, no vector values")
    p.set_defaults(func=_run)
