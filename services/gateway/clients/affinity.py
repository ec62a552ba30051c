"""Which model server a user's request goes to: consistent hashing with bounded loads (pure logic, no I/O).

Each Triton replica keeps its own prefix-KV LRU, so a user's calls should keep landing on the replica that already
holds their prefix. A hash ring (`HashRing`, virtual nodes, a stable hash so every gateway replica agrees) gives each
user a home replica and an order of fallbacks; a replica leaving or joining moves only the users whose arc it owned.
Bounded loads (Mirrokni, Thorup, Zadimoghaddam, "Consistent Hashing with Bounded Loads", 2018) keep one hot user or
an unlucky arc from overloading a replica: a replica is skipped while its in-flight requests exceed
`ceil(load_factor * (all in-flight + 1) / live replicas)`, so load stays within `load_factor` of the mean and most
users still go home. The caller (services/gateway/clients/triton_pool.py) tracks in-flight counts and which replicas
are down.
"""
from __future__ import annotations

import bisect
import hashlib
import math
from collections.abc import Iterable, Mapping


def stable_hash(key: str) -> int:
    """64-bit hash that is the same in every process (Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest(), "big")


class HashRing:
    """Consistent-hash ring over endpoint names with `vnodes` points per endpoint (smooths the arcs)."""

    def __init__(self, nodes: Iterable[str], vnodes: int = 160) -> None:
        self.nodes = tuple(sorted(set(nodes)))
        points = sorted((stable_hash(f"{n}#{i}"), n) for n in self.nodes for i in range(vnodes))
        self._hashes = [h for h, _ in points]
        self._owners = [n for _, n in points]

    def walk(self, key: str) -> list[str]:
        """Every endpoint once, in ring order from the key's position: home first, then its fallbacks."""
        if not self.nodes:
            return []
        start = bisect.bisect(self._hashes, stable_hash(key))
        seen: list[str] = []
        for j in range(len(self._owners)):
            node = self._owners[(start + j) % len(self._owners)]
            if node not in seen:
                seen.append(node)
                if len(seen) == len(self.nodes):
                    break
        return seen


def capacity(inflight: Mapping[str, int], live: Iterable[str], load_factor: float) -> int:
    """The most in-flight requests one live endpoint may hold before new ones go elsewhere (bounded loads)."""
    live = list(live)
    total = sum(inflight.get(n, 0) for n in live)
    return max(1, math.ceil(load_factor * (total + 1) / max(1, len(live))))


def choose(order: list[str], inflight: Mapping[str, int], live: set[str], load_factor: float) -> str | None:
    """The first endpoint of `order` that is live and under capacity; else the first live one; None if none is."""
    candidates = [n for n in order if n in live]
    if not candidates:
        return None
    cap = capacity(inflight, live, load_factor)
    return next((n for n in candidates if inflight.get(n, 0) < cap), candidates[0])


__all__ = ["HashRing", "capacity", "choose", "stable_hash"]
