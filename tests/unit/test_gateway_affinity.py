"""User-affinity routing across Triton replicas, the pure logic: the hash ring (stable, balanced, minimal movement),
bounded loads, and the pool's failover and discovery with stand-in endpoints. The same pool against two real Triton
processes: tests/integration/test_triton_affinity.py."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from services.common.errors import DeadlineExceeded, Unavailable
from services.gateway.clients.affinity import HashRing, capacity, choose, stable_hash
from services.gateway.clients.triton_pool import Discovery, TritonPool
from services.gateway.core import ModelRequest, ModelResult
from tests.unit.test_gateway_fakes import user

USERS = [f"user-{i}" for i in range(3000)]


def test_hash_is_stable_across_processes():
    import subprocess
    import sys

    code = "from services.gateway.clients.affinity import stable_hash; print(stable_hash('alice'))"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert int(other) == stable_hash("alice")  # a salted hash() would differ between gateway replicas


def test_ring_spreads_users_and_moves_only_the_leavers_share():
    three = HashRing(["a:1", "b:1", "c:1"])
    homes = {u: three.walk(u)[0] for u in USERS}
    share = Counter(homes.values())
    assert all(abs(n / len(USERS) - 1 / 3) < 0.08 for n in share.values()), share
    two = HashRing(["a:1", "b:1"])
    moved = [u for u in USERS if homes[u] != "c:1" and two.walk(u)[0] != homes[u]]
    assert not moved  # users of the survivors stay where their prefixes are
    for u in USERS[:50]:
        walk = three.walk(u)
        assert sorted(walk) == ["a:1", "b:1", "c:1"]
        if homes[u] == "c:1":
            assert two.walk(u)[0] == walk[1]  # c's users go to their next replica on the ring


def test_bounded_load_sends_new_calls_elsewhere_only_above_the_bound():
    live = {"a", "b"}
    assert capacity({"a": 0, "b": 0}, live, 1.25) == 1
    assert choose(["a", "b"], {"a": 0, "b": 0}, live, 1.25) == "a"
    assert choose(["a", "b"], {"a": 1, "b": 0}, live, 1.25) == "a"  # cap = ceil(1.25 * 2 / 2) = 2: still home
    assert choose(["a", "b"], {"a": 4, "b": 4}, live, 1.25) == "a"  # balanced: home wins (cap 6)
    assert choose(["a", "b"], {"a": 6, "b": 2}, live, 1.25) == "b"  # a is above 1.25x the mean
    assert choose(["a", "b"], {"a": 9, "b": 9}, {"b"}, 1.25) == "b"  # only live endpoints count
    assert choose(["a"], {}, set(), 1.25) is None


class Endpoint:
    """A stand-in replica: answers with its name in model_version, or Unavailable while `down`."""

    instances: dict[str, "Endpoint"] = {}

    def __init__(self, url, spec, model_name):
        self.url, self.down, self.calls, self.closed = url, False, [], False
        Endpoint.instances[url] = self

    def infer(self, requests, timeout_s):
        self.calls += [r.user.user_id for r in requests]
        if self.down:
            return [Unavailable(f"{self.url} is unreachable")] * len(requests)
        return [ModelResult(np.zeros((1, 4), np.float32), False, [0], [""], self.url) for _ in requests]

    def ready(self):
        return not self.down

    def known_model_versions(self):
        if self.down:
            raise Unavailable("down")
        return {"m1"}

    def close(self):
        self.closed = True


def _req(uid: str) -> ModelRequest:
    return ModelRequest(user=user(uid), model_version="m1", scenarios=["s"], query_texts=["q"], prompts=[None])


@pytest.fixture()
def clock():
    t = [0.0]
    return t


def _pool(clock, urls=("a:1", "b:1", "c:1"), **kw) -> TritonPool:
    Endpoint.instances.clear()
    return TritonPool(Discovery(list(urls)), spec=None, model_name="qanchor", client_factory=Endpoint,
                      clock=lambda: clock[0], **kw)


def test_affinity_keeps_each_user_on_one_replica_and_round_robin_does_not(clock):
    pool = _pool(clock)
    served = {u: {pool.infer([_req(u)], 1.0)[0].model_version for _ in range(4)} for u in USERS[:60]}
    assert all(len(eps) == 1 for eps in served.values())
    assert len({next(iter(e)) for e in served.values()}) == 3  # and users are spread over every replica
    rr = _pool(clock, routing="round_robin")
    spread = {u: {rr.infer([_req(u)], 1.0)[0].model_version for _ in range(3)} for u in USERS[:20]}
    assert all(len(eps) == 3 for eps in spread.values())


def test_a_down_replica_fails_over_within_the_call_and_cools_down(clock):
    pool = _pool(clock, cooldown_s=5.0)
    victims = [u for u in USERS[:60] if pool.infer([_req(u)], 1.0)[0].model_version == "b:1"]
    Endpoint.instances["b:1"].down = True
    first = pool.infer([_req(victims[0])], 1.0)[0]  # b fails inside this call; the user's next replica answers
    assert isinstance(first, ModelResult) and first.model_version != "b:1" and pool.stats["failover"] == 1
    outs = pool.infer([_req(u) for u in victims], 1.0)  # one call, several users homed on b
    assert all(isinstance(o, ModelResult) and o.model_version != "b:1" for o in outs)
    calls = len(Endpoint.instances["b:1"].calls)
    pool.infer([_req(victims[0])], 1.0)
    assert len(Endpoint.instances["b:1"].calls) == calls  # cooling down: not asked again
    Endpoint.instances["b:1"].down = False
    clock[0] += 6.0
    assert pool.infer([_req(victims[0])], 1.0)[0].model_version == "b:1"  # back home after the cooldown


def test_all_replicas_down_is_unavailable_and_a_spent_deadline_is_not_retried(clock):
    pool = _pool(clock, urls=("a:1", "b:1"))
    pool.infer([_req("x")], 1.0)
    for e in Endpoint.instances.values():
        e.down = True
    out = pool.infer([_req("x")], 1.0)[0]
    assert isinstance(out, Unavailable) and sum(len(e.calls) for e in Endpoint.instances.values()) == 3
    assert not pool.ready()
    out = pool.infer([_req("x")], 0.0)[0]
    assert isinstance(out, DeadlineExceeded)


def test_dns_discovery_follows_the_records_and_keeps_them_on_failure(clock):
    records = {"triton-headless": ["10.0.0.1:19001", "10.0.0.2:19001"]}

    def resolve(host, port):
        if host not in records:
            raise OSError("NXDOMAIN")
        return records[host]

    d = Discovery(["triton-headless:19001"], dns=True, refresh_s=10, resolve=resolve, clock=lambda: clock[0])
    pool = TritonPool(d, spec=None, client_factory=Endpoint, clock=lambda: clock[0])
    pool.infer([_req("u")], 1.0)
    assert pool.endpoints() == ["10.0.0.1:19001", "10.0.0.2:19001"]
    records["triton-headless"] = ["10.0.0.2:19001", "10.0.0.3:19001"]  # a pod replaced
    clock[0] += 11
    pool.infer([_req("u")], 1.0)
    assert pool.endpoints() == ["10.0.0.2:19001", "10.0.0.3:19001"] and Endpoint.instances["10.0.0.1:19001"].closed
    del records["triton-headless"]
    clock[0] += 11
    pool.infer([_req("u")], 1.0)
    assert pool.endpoints() == ["10.0.0.2:19001", "10.0.0.3:19001"]  # a DNS failure keeps the last good list


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="host:port"):
        Discovery(["no-port"])
    with pytest.raises(ValueError, match="GATEWAY_TRITON_URL"):
        Discovery([" "])
    with pytest.raises(ValueError, match="routing"):
        TritonPool(Discovery(["a:1"]), spec=None, routing="random")
    with pytest.raises(ValueError, match="load factor"):
        TritonPool(Discovery(["a:1"]), spec=None, load_factor=0.5)
