"""Which idle backends to unload: the cheapest set that frees enough.

Cost of unloading a backend = its reload time x the chance it is asked for again
soon. Few backends are ever resident (three modes, a couple of variants), so an
exhaustive search over subsets is exact and cheap; past `_EXACT_LIMIT` candidates
it falls back to a greedy pass by cost per byte.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import combinations

_EXACT_LIMIT = 12


@dataclass(frozen=True)
class EvictionCandidate:
    mode: str
    bytes: int
    cost_s: float


def reuse_chance(recent_requests: float) -> float:
    """Chance of at least one request within the horizon, for a Poisson rate whose
    expected count over that horizon is `recent_requests`."""
    return 1.0 - math.exp(-max(0.0, recent_requests))


def eviction_cost_s(load_time_s: float, recent_requests: float) -> float:
    return load_time_s * reuse_chance(recent_requests)


def cheapest_set(candidates: list[EvictionCandidate], need_bytes: int) -> list[EvictionCandidate] | None:
    """The set freeing at least `need_bytes` at the lowest total cost (ties: fewest bytes
    freed, then fewest backends). None when even all of them together are not enough."""
    if need_bytes <= 0:
        return []
    if sum(c.bytes for c in candidates) < need_bytes:
        return None
    if len(candidates) > _EXACT_LIMIT:
        return _greedy(candidates, need_bytes)
    best: tuple[float, int, int] | None = None
    best_set: tuple[EvictionCandidate, ...] = ()
    for size in range(1, len(candidates) + 1):
        for subset in combinations(candidates, size):
            freed = sum(c.bytes for c in subset)
            if freed < need_bytes:
                continue
            score = (sum(c.cost_s for c in subset), freed, size)
            if best is None or score < best:
                best, best_set = score, subset
    return list(best_set)


def _greedy(candidates: list[EvictionCandidate], need_bytes: int) -> list[EvictionCandidate]:
    chosen: list[EvictionCandidate] = []
    for candidate in sorted(candidates, key=lambda c: c.cost_s / max(c.bytes, 1)):
        if sum(c.bytes for c in chosen) >= need_bytes:
            break
        chosen.append(candidate)
    return chosen
