"""The validators' overlay: which other validators a validator keeps links to (D105).

Only validators carry "consensus" (followers follow "blocks", D102), so the validators
must stay connected among themselves. Each validator places the current validator set
on a ring, in the order of a hash of each key (the same order at every node), and
keeps links to the validators at ring distance 1 and 2 on each side, plus, from
``CHORD_MIN`` validators on, the one (or two) half the ring away. The graph that
results is a circulant graph C_n(1, 2[, n/2]): connected by construction for every n,
and it stays connected after any three validators fail (removing a set of positions
splits a ring with distance-2 links only where two adjacent positions are both
removed, so a split needs two such gaps: four failures at least), any four once it has
the chords (checked exhaustively in the tests). Pure functions: the chain service
dials and keeps the links (node/services/chain.py).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

RING_DOMAIN = b"aipg/validator-ring/v1"
RING_DISTANCES = (1, 2)
CHORD_MIN = 12  # from this many validators on, a chord half the ring away (D105)


def ring_position(key: bytes) -> bytes:
    """Where ``key`` (a validator's public key) sits on the ring: a hash, so a key's
    place does not depend on the others' and a set that changes by one validator
    changes only its neighbours' links."""
    return hashlib.sha256(RING_DOMAIN + key).digest()


def ring_order(keys: Iterable[bytes]) -> list[bytes]:
    """The validator keys (deduplicated) in ring order."""
    return sorted(set(keys), key=lambda k: (ring_position(k), k))


def ring_distances(n: int) -> tuple[int, ...]:
    """The ring distances a validator links at in a set of ``n``."""
    if n >= CHORD_MIN:
        return (*RING_DISTANCES, n // 2)
    return RING_DISTANCES


def ring_neighbours(keys: Iterable[bytes], me: bytes) -> list[bytes]:
    """The validators ``me`` keeps links to, nearest first (empty when ``me`` is not
    among ``keys`` or is alone). Symmetric: b is a's neighbour exactly when a is b's."""
    order = ring_order(keys)
    n = len(order)
    try:
        i = order.index(me)
    except ValueError:
        return []
    out: list[bytes] = []
    for d in ring_distances(n):
        for j in ((i + d) % n, (i - d) % n):
            if j != i and order[j] not in out:
                out.append(order[j])
    return out


def overlay_edges(keys: Iterable[bytes]) -> set[frozenset[bytes]]:
    """Every link of the overlay over ``keys`` (each pair once): for tests and benches."""
    order = ring_order(keys)
    return {frozenset((k, other)) for k in order for other in ring_neighbours(order, k)}
