"""Warm prefixes on feature change, on the real stack: ingest (a real subprocess) writes a user's new features and
then has the real `qanchor` model on Triton compute that user's prefix (a request with no scenario), so the first
real request for the user is a prefix-cache hit. A user whose features reached the store without ingest's warm-up
misses. (issue "Serving at the hardware limit", stretch item 5; services/ingest/warm.py.)"""
from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from ingest_harness import SPEC, VOCAB, Ctx, log_tail, new_topic, produce, read_users, running_consumer
from ingest_harness import wait_caught_up
from services.common.feast_store import get_store
from services.common.features_online import FeatureWriter
from services.gateway.clients.triton import TritonModelClient
from services.gateway.core import ModelRequest
from test_gateway_stack import _ensure_real_model

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def ctx(stack, tmp_path_factory) -> Ctx:  # type: ignore[no-untyped-def]
    import tritonclient.grpc as grpcclient

    from training.export.text_encoder import export_text_encoder

    export_text_encoder(stack.model_repository)
    _ensure_real_model(Path(stack.model_repository))
    client = grpcclient.InferenceServerClient(stack.triton_grpc)
    for name in ("text_encoder", "qanchor"):
        client.load_model(name)
        assert client.is_model_ready(name)
    yield Ctx(stack.kafka_bootstrap, stack.triton_grpc, Path(stack.feast_config), tmp_path_factory.mktemp("warm"),
              redis_url=stack.redis_url)
    client.unload_model("qanchor")


def _events(uid: str, n: int, t0: int) -> list[tuple[bytes, bytes]]:
    out = []
    for i in range(n):
        rating = 1 + (i * 3) % 5
        out.append((uid.encode(), json.dumps({
            "schema_version": 1, "event_id": f"{uid}-{i}", "user_id": uid, "kind": "event",
            "source": "liked" if rating >= 4 else "disliked" if rating <= 2 else "neutral", "ts": t0 + 60 * i,
            "text": VOCAB[i % len(VOCAB)], "attributes": {"rating": rating}}).encode()))
    return out


def test_features_written_by_ingest_are_warm_on_the_model(ctx) -> None:  # type: ignore[no-untyped-def]
    run = uuid.uuid4().hex[:6]
    users = [f"{run}-w{i}" for i in range(3)]
    topic, group = new_topic(ctx, partitions=2), f"warm-{run}"
    produce(ctx, topic, [r for i, u in enumerate(users) for r in _events(u, 5 + i, 1_700_000_000)])
    # The gateway's A/B file routes every user's "promo" requests to the served version named explicitly: each
    # user is warmed twice, under the default version ("") and under that one.
    served = TritonModelClient(ctx.triton, SPEC.features, "qanchor")
    try:
        version = sorted(served.known_model_versions())[-1]
    finally:
        served.close()
    ab = ctx.tmp / f"ab-{run}.yaml"
    ab.write_text(f"salt: warm\nscenarios:\n  promo:\n    arms:\n"
                  f"      - {{name: pinned, weight: 100, prompt_version: zero-shot, model_version: '{version}'}}\n")
    with running_consumer(ctx, topic, group, f"warm-{run}", extra_env={
            "INGEST_WARM_TRITON_URL": ctx.triton, "INGEST_WARM_RATE_PER_S": "50",
            "INGEST_WARM_AB_CONFIG": str(ab)}) as c:
        wait_caught_up(ctx, group, topic, [c.proc])
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            m = c.metrics()
            if m.get('qanchor_ingest_prefix_warms_total{outcome="sent"}', 0) >= 2 * len(users):
                break
            time.sleep(0.5)
        assert m['qanchor_ingest_prefix_warms_total{outcome="sent"}'] >= 2 * len(users), log_tail(c.log, 60)
        assert m['qanchor_ingest_prefix_warms_total{outcome="failed"}'] == 0
    assert "prefix warming on" in c.log.read_text()

    features = read_users(ctx.feast_config, users)
    model = TritonModelClient(ctx.triton, SPEC.features, "qanchor")
    try:
        def ask(f, model_version: str = ""):  # type: ignore[no-untyped-def]
            [res] = model.infer([ModelRequest(f, model_version, ["promo"],
                                              ["Is this user sensitive to big-sale promotions?"], [None])], 120.0)
            return res

        for uid in users:
            for v in ("", version):  # the default traffic and the A/B arm's pinned version
                res = ask(features[uid], v)
                assert res.cache_hit, f"{uid}: the first request (version {v!r}) after the write missed the cache"
                assert res.embeddings.shape[0] == 1 and abs(np.linalg.norm(res.embeddings[0]) - 1) < 1e-3
        # Control: features that reached the store without ingest (so without a warm-up) miss on first use.
        other = features[users[0]]
        other.user_id = f"{run}-unwarmed"
        FeatureWriter(get_store(ctx.feast_config), SPEC.features).write([other])
        assert not ask(read_users(ctx.feast_config, [other.user_id])[other.user_id]).cache_hit
    finally:
        model.close()
