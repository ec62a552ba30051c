"""User-affinity routing against two REAL Triton processes (each started by the stack manager on its own port base,
each serving the reference `qanchor_contract` model with its own prefix cache), through the gateway's model client
(services/gateway/clients/triton_pool.py):

- affinity keeps each user's calls on one replica: every user misses once, then always hits; round robin over the
  same replicas makes every user miss on both;
- a replica stopped mid-run (SIGTERM, as Kubernetes stops a pod) costs no failed request: the calls it would have
  served fail over to the user's next replica within their deadline, and every later call goes there.
"""
from __future__ import annotations

import os
import threading
from collections import Counter

import numpy as np
import pytest
import tritonclient.grpc as tgrpc

from services.common.features import SourceEvents, UserFeatures, load_feature_spec
from services.gateway import contract_model
from services.gateway.clients.triton import served_counts
from services.gateway.clients.triton_pool import Discovery, TritonPool
from services.gateway.core import ModelRequest
from services.stack import Stack
from tests.integration.conftest import integration_settings
from tests.integration.triton_stats import quiet, settled

pytestmark = pytest.mark.integration
SHIFTS = (100, 200)  # port bases of the two replicas, relative to QANCHOR_TEST_PORT_BASE
SPEC = load_feature_spec()
DEADLINE_S = 10.0


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory):
    base = int(os.environ.get("QANCHOR_TEST_PORT_BASE", "29000"))
    stacks = []
    try:
        for shift in SHIFTS:
            settings = integration_settings(tmp_path_factory.mktemp(f"replica{shift}") / "state",
                                            port_base=base + shift)
            contract_model.install(settings.layout.model_repository)  # loaded at start (--load-model=*)
            stack = Stack(settings)
            stacks.append(stack)
            stack.up(["triton"])
        yield stacks
    finally:
        for stack in stacks:
            stack.down(["triton"])


def _urls(stacks: list[Stack]) -> list[str]:
    return [s.endpoints().triton_grpc for s in stacks]


def _request(uid: str, version: int) -> ModelRequest:
    rng = np.random.default_rng(abs(hash(uid)) % 2**32)
    sources = {s.name: SourceEvents([f"{s.name} {j}" for j in range(3)],
                                    rng.standard_normal((3, SPEC.encoder_dim)).astype(np.float16),
                                    np.arange(3, dtype=np.int64)) for s in SPEC.sources}
    user = UserFeatures(uid, sources, np.zeros(SPEC.tabular_dim, np.float32), version, 1.7e9)
    return ModelRequest(user=user, model_version="", scenarios=["a", "b"], query_texts=["Q1", "Q2"],
                        prompts=[None, None])


def _pool(stacks: list[Stack], routing: str = "affinity") -> TritonPool:
    return TritonPool(Discovery(_urls(stacks)), SPEC, contract_model.NAME, routing=routing, cooldown_s=30.0)


def _inferences(url: str) -> int:
    with tgrpc.InferenceServerClient(url) as c:
        return served_counts(c, contract_model.NAME).inferences


def test_affinity_keeps_a_users_calls_on_one_replica(replicas):
    users = [f"aff-{i}" for i in range(24)]
    before = quiet(lambda: [_inferences(u) for u in _urls(replicas)])  # earlier requests have all landed
    pool = _pool(replicas)
    try:
        hits = Counter()
        for _ in range(3):
            for uid in users:
                out = pool.infer([_request(uid, 1)], DEADLINE_S)[0]
                assert out.embeddings.shape == (2, 128), out
                hits[out.cache_hit] += 1
        assert hits[False] == len(users) and hits[True] == 2 * len(users)  # one miss per user, then hits
        served = settled(lambda: [_inferences(u) - b for u, b in zip(_urls(replicas), before)],
                         lambda counts: sum(counts) >= 3 * len(users))
        assert sum(served) == 3 * len(users) and min(served) > 0, served  # both replicas have users
    finally:
        pool.close()
    rr = _pool(replicas, routing="round_robin")
    try:
        # a new feature version (fresh cache keys), each user's three calls in a row: a miss on each replica
        misses = sum(not rr.infer([_request(uid, 2)], DEADLINE_S)[0].cache_hit for uid in users for _ in range(3))
        assert misses == 2 * len(users)
    finally:
        rr.close()


def test_a_replica_stopped_mid_run_costs_no_failed_request(replicas):
    users = [f"fo-{i}" for i in range(16)]
    pool = _pool(replicas)
    url_a, url_b = _urls(replicas)
    errors: list = []
    done = [0]
    lock = threading.Lock()

    def client(k: int) -> None:
        for j in range(40):
            out = pool.infer([_request(users[(k * 7 + j) % len(users)], 1)], DEADLINE_S)[0]
            with lock:
                done[0] += 1
                if not hasattr(out, "embeddings"):
                    errors.append(out)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
    try:
        for t in threads:
            t.start()
        while True:  # let both replicas serve for a while, then stop one under traffic
            with lock:
                if done[0] >= 60:
                    break
            threading.Event().wait(0.05)
        assert pool.stats[f"served:{url_b}"] > 0
        replicas[1].down(["triton"])  # SIGTERM, as Kubernetes stops a pod; four threads keep calling
        for t in threads:
            t.join(300)
        assert done[0] == 160 and not errors, errors[:3]  # no call failed, before, during or after the stop
        assert pool.stats["failover"] >= 1  # b's users were moved within their calls
        on_b = pool.stats[f"served:{url_b}"]
        after = pool.infer([_request(u, 1) for u in users], DEADLINE_S)
        assert all(hasattr(o, "embeddings") for o in after)
        assert pool.stats[f"served:{url_b}"] == on_b  # every later call goes to the survivor
    finally:
        pool.close()
