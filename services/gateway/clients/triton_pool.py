"""The gateway's model client over N Triton replicas: user affinity, bounded load, failover.

    pool = TritonPool(Discovery(["triton-0:8001", "triton-1:8001"]), spec, "qanchor")
    pool = TritonPool(Discovery(["qanchor-triton-headless:19001"], dns=True), spec, "qanchor")   # Kubernetes

Every replica keeps its own prefix-KV LRU, so each user is routed to one home replica by consistent hashing with
bounded loads (services/gateway/clients/affinity.py): their second call finds the prefix the first one computed.
A replica that answers UNAVAILABLE (down, stopping, model not loaded, queue full) is skipped for `cooldown_s` and the
request goes to the user's next replica on the ring, within the same deadline; nothing else is retried (a deadline
that is gone stays gone). With `dns=True` each `host:port` is a headless Service name whose A records (one per ready
pod) are re-resolved every `refresh_s`: replicas joining or leaving move only the users whose arc they own.
`routing="round_robin"` ignores the user (for comparison; every replica then has to hold every user).
"""
from __future__ import annotations

import itertools
import logging
import socket
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence

from services.common.errors import DeadlineExceeded, QAnchorError, Unavailable
from services.common.features import FeatureSpec
from services.gateway.clients.affinity import HashRing, choose
from services.gateway.clients.triton import TritonModelClient
from services.gateway.core import ModelRequest, ModelResult

log = logging.getLogger(__name__)
ROUTINGS = ("affinity", "round_robin")


def _split(target: str) -> tuple[str, int]:
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"model server address {target!r}: write host:port (e.g. triton:19001)")
    return host.strip("[]"), int(port)


class Discovery:
    """The current endpoint list: static `host:port`s, or (dns=True) every address each name resolves to."""

    def __init__(self, targets: Sequence[str], dns: bool = False, refresh_s: float = 10.0,
                 resolve: Callable[[str, int], list[str]] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.targets = [t.strip() for t in targets if t.strip()]
        if not self.targets:
            raise ValueError("no model server address given: set GATEWAY_TRITON_URL (host:port, comma separated)")
        for t in self.targets:
            _split(t)
        self.dns, self.refresh_s, self._clock = dns, refresh_s, clock
        self._resolve = resolve or _resolve
        self._current: list[str] = [] if dns else list(self.targets)
        self._next = 0.0

    def endpoints(self) -> list[str]:
        if self.dns and self._clock() >= self._next:
            self._next = self._clock() + self.refresh_s
            found: list[str] = []
            for t in self.targets:
                host, port = _split(t)
                try:
                    found += self._resolve(host, port)
                except OSError as exc:  # keep the last good list: a DNS hiccup must not empty the ring
                    log.warning("triton DNS lookup failed",
                                extra={"event": "triton_dns_failed", "host": host, "error": repr(exc)})
                    return self._current
            found = sorted(set(found))
            if found != self._current:
                log.info("triton endpoints changed", extra={"event": "triton_endpoints_changed",
                                                            "before": ",".join(self._current),
                                                            "after": ",".join(found)})
                self._current = found
        return self._current


def _resolve(host: str, port: int) -> list[str]:
    out = []
    for family, _, _, _, addr in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
        ip = addr[0]
        out.append(f"[{ip}]:{port}" if family == socket.AF_INET6 else f"{ip}:{port}")
    return out


class TritonPool:
    """Implements `services.gateway.core.ModelClient` over several Triton endpoints (one TritonModelClient each)."""

    def __init__(self, discovery: Discovery, spec: FeatureSpec, model_name: str = "qanchor", *,
                 routing: str = "affinity", load_factor: float = 1.25, cooldown_s: float = 2.0,
                 client_factory: Callable[[str, FeatureSpec, str], object] = TritonModelClient,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if routing not in ROUTINGS:
            raise ValueError(f"routing {routing!r}: choose one of {ROUTINGS}")
        if load_factor < 1.0:
            raise ValueError(f"load factor {load_factor} must be >= 1 (1.25 = at most 25% above the mean load)")
        self.discovery, self.spec, self.model_name = discovery, spec, model_name
        self.routing, self.load_factor, self.cooldown_s = routing, load_factor, cooldown_s
        self._factory, self._clock = client_factory, clock
        self._lock = threading.Lock()
        self._clients: dict[str, object] = {}
        self._ring = HashRing([])
        self._inflight: Counter[str] = Counter()
        self._down_until: dict[str, float] = {}
        self._rr = itertools.count()
        self._executor = ThreadPoolExecutor(max_workers=8, thread_name_prefix="triton-pool")
        self.stats: Counter[str] = Counter()  # served:<endpoint>, failover, no_endpoint

    # ---- membership ------------------------------------------------------------------------------------------
    def _refresh(self) -> list[str]:
        eps = self.discovery.endpoints()
        with self._lock:
            if tuple(sorted(set(eps))) != self._ring.nodes:
                self._ring = HashRing(eps)
                for gone in set(self._clients) - set(eps):
                    self._clients.pop(gone).close()
                for new in set(eps) - set(self._clients):
                    self._clients[new] = self._factory(new, self.spec, self.model_name)
            return eps

    def _client(self, endpoint: str):
        with self._lock:
            return self._clients[endpoint]

    def _pick(self, user_id: str, exclude: set[str]) -> str | None:
        with self._lock:
            nodes = [n for n in self._ring.nodes if n not in exclude]
            now = self._clock()
            live = {n for n in nodes if self._down_until.get(n, 0.0) <= now}
            if not live:
                live = set(nodes)  # everyone is cooling down: try anyway rather than fail without asking
            if self.routing == "round_robin":
                order = sorted(live)
                k = next(self._rr) % len(order)
                order = order[k:] + order[:k]
            else:
                order = [n for n in self._ring.walk(user_id) if n not in exclude]
            chosen = choose(order, self._inflight, live, self.load_factor)
            if chosen is not None:
                self._inflight[chosen] += 1
            return chosen

    def _release(self, endpoint: str, failed: bool) -> None:
        with self._lock:
            self._inflight[endpoint] -= 1
            if failed:
                self._down_until[endpoint] = self._clock() + self.cooldown_s
            else:
                self._down_until.pop(endpoint, None)

    # ---- ModelClient -----------------------------------------------------------------------------------------
    def infer(self, requests: Sequence[ModelRequest], timeout_s: float) -> list[ModelResult | QAnchorError]:
        deadline = self._clock() + timeout_s
        self._refresh()
        out: list[ModelResult | QAnchorError | None] = [None] * len(requests)
        tried: list[set[str]] = [set() for _ in requests]
        last: list[QAnchorError | None] = [None] * len(requests)
        pending = list(range(len(requests)))
        while pending:
            remaining = deadline - self._clock()
            if remaining <= 0:
                for i in pending:
                    out[i] = last[i] or DeadlineExceeded("the deadline passed while the model servers were tried; "
                                                         "retry with a longer deadline")
                break
            groups: dict[str, list[int]] = {}
            for i in pending:
                ep = self._pick(requests[i].user.user_id, tried[i])
                if ep is None:
                    self._count("no_endpoint")
                    out[i] = last[i] or Unavailable("no model server is reachable (GATEWAY_TRITON_URL lists none "
                                                    "or all failed); retry with backoff")
                    continue
                tried[i].add(ep)
                groups.setdefault(ep, []).append(i)
            pending = []
            for ep, idx, results in self._run(groups, requests, remaining):
                failed = any(isinstance(r, Unavailable) for r in results)
                self._release_many(ep, len(idx), failed)
                for i, r in zip(idx, results):
                    if isinstance(r, Unavailable):  # down, stopping, model unloaded, queue full: next replica
                        last[i] = r
                        pending.append(i)
                        self._count("failover")
                        log.warning("triton replica failed; trying the user's next one",
                                    extra={"event": "triton_failover", "endpoint": ep,
                                           "user": requests[i].user.user_id, "error": r.message})
                    else:
                        out[i] = r
                        self._count(f"served:{ep}")
        return [o if o is not None else Unavailable("no model outcome; retry") for o in out]

    def _count(self, key: str) -> None:
        with self._lock:
            self.stats[key] += 1

    def _release_many(self, ep: str, n: int, failed: bool) -> None:
        for _ in range(n):
            self._release(ep, failed)

    def _run(self, groups: dict[str, list[int]], requests: Sequence[ModelRequest], timeout_s: float):
        def call(ep: str, idx: list[int]):
            try:
                return self._client(ep).infer([requests[i] for i in idx], timeout_s)
            except QAnchorError as exc:
                return [exc] * len(idx)

        if len(groups) == 1:  # the common case (one user per call): no thread hop
            (ep, idx), = groups.items()
            return [(ep, idx, call(ep, idx))]
        futures = {ep: self._executor.submit(call, ep, idx) for ep, idx in groups.items()}
        return [(ep, groups[ep], f.result()) for ep, f in futures.items()]

    def known_model_versions(self) -> set[str]:
        errors = []
        for ep in self._refresh():
            try:
                return self._client(ep).known_model_versions()
            except Exception as exc:  # next replica
                errors.append(exc)
        raise Unavailable(f"no model server answered for its model versions: {errors[:2]}")

    def ready(self) -> bool:
        """Ready while any replica has the model loaded; replicas that are not are skipped until they are."""
        up = False
        for ep in self._refresh():
            ok = bool(self._client(ep).ready())
            with self._lock:
                if ok:
                    self._down_until.pop(ep, None)
                else:
                    self._down_until[ep] = self._clock() + self.cooldown_s
            up = up or ok
        return up

    def endpoints(self) -> list[str]:
        return list(self._ring.nodes)

    def close(self) -> None:
        self._executor.shutdown(wait=False)
        with self._lock:
            for c in self._clients.values():
                c.close()
            self._clients.clear()


def pool_from_settings(settings, spec: FeatureSpec) -> TritonPool:
    """The pool GatewaySettings describe (GATEWAY_TRITON_URL, _DISCOVERY, _ROUTING, ...)."""
    discovery = Discovery(settings.resolved_triton_url().split(","), dns=settings.triton_discovery == "dns",
                          refresh_s=settings.triton_dns_refresh_s)
    return TritonPool(discovery, spec, settings.triton_model, routing=settings.triton_routing,
                      load_factor=settings.triton_load_factor, cooldown_s=settings.triton_retry_cooldown_s)


__all__ = ["Discovery", "ROUTINGS", "TritonPool", "pool_from_settings"]
