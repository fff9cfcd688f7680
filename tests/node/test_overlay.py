"""The validators' overlay (D105): who links to whom, and that it stays connected.

Pure functions over validator keys: connected for every set size, symmetric, of
bounded degree, still connected after any one (up to three) validators fail, and the
same at every node whatever order the set is listed in.
"""

from __future__ import annotations

import itertools
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from aipg.node.overlay import (
    CHORD_MIN,
    overlay_edges,
    ring_distances,
    ring_neighbours,
    ring_order,
)

N_MAX = 64


def keys_of(n: int, salt: int = 0) -> list[bytes]:
    return [bytes([salt % 256]) + i.to_bytes(4, "big") + bytes(27) for i in range(n)]


def connected(nodes: set[bytes], edges: set[frozenset[bytes]]) -> bool:
    """Whether ``nodes`` form one component over the ``edges`` between them."""
    if not nodes:
        return True
    adj: dict[bytes, set[bytes]] = {k: set() for k in nodes}
    for e in edges:
        a, b = tuple(e)
        if a in nodes and b in nodes:
            adj[a].add(b)
            adj[b].add(a)
    start = next(iter(nodes))
    seen, todo = {start}, [start]
    while todo:
        for nb in adj[todo.pop()]:
            if nb not in seen:
                seen.add(nb)
                todo.append(nb)
    return seen == nodes


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, N_MAX), salt=st.integers(0, 255))
def test_the_overlay_is_connected_and_survives_any_single_failure(n, salt):
    keys = keys_of(n, salt)
    edges = overlay_edges(keys)
    assert connected(set(keys), edges)
    for gone in keys:
        assert connected(set(keys) - {gone}, edges), (n, "split by one failure")
    degree = 2 * len(ring_distances(n))
    for k in keys:
        nbs = ring_neighbours(keys, k)
        assert k not in nbs and len(nbs) == len(set(nbs)) <= min(degree, n - 1)
        for other in nbs:  # symmetric: both ends keep the link
            assert k in ring_neighbours(keys, other)
    if n >= 5:
        assert all(len(ring_neighbours(keys, k)) >= 4 for k in keys)


def test_any_three_failures_leave_it_connected_and_any_four_once_it_has_chords():
    for n in range(1, 17):
        keys = keys_of(n)
        edges = overlay_edges(keys)
        for r in range(1, min(3, n) + 1):
            for gone in itertools.combinations(keys, r):
                assert connected(set(keys) - set(gone), edges), (n, r)
    # four can: two adjacent pairs of a ring with distance-2 links (below CHORD_MIN)
    order = ring_order(keys_of(10))
    cut = {order[0], order[1], order[5], order[6]}
    assert not connected(set(order) - cut, overlay_edges(order))
    # with the chords (from CHORD_MIN on) no four failures split it, exhaustively
    for n in range(CHORD_MIN, CHORD_MIN + 5):
        keys = keys_of(n)
        edges = overlay_edges(keys)
        for gone in itertools.combinations(keys, 4):
            assert connected(set(keys) - set(gone), edges), (n, 4)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(2, N_MAX), seed=st.integers(0, 2**32 - 1))
def test_every_node_computes_the_same_overlay_whatever_the_order(n, seed):
    keys = keys_of(n)
    shuffled = keys[:]
    random.Random(seed).shuffle(shuffled)
    assert overlay_edges(shuffled) == overlay_edges(keys)
    assert ring_order(shuffled + keys[:2]) == ring_order(keys)  # duplicates count once
    me = keys[seed % n]
    assert ring_neighbours(shuffled, me) == ring_neighbours(keys, me)


def test_a_change_of_one_validator_moves_only_nearby_links():
    keys = keys_of(40)
    newcomer = b"\xee" * 32
    before, after = overlay_edges(keys), overlay_edges([*keys, newcomer])

    def ring_links(edges, order):  # the distance-1 and -2 links (chords aside)
        pos = {k: i for i, k in enumerate(order)}
        n = len(order)
        return {
            e
            for e in edges
            if min((pos[a] - pos[b]) % n for a, b in [tuple(e)]) in (1, 2, n - 1, n - 2)
        }

    ring_before = ring_links(before, ring_order(keys))
    ring_after = ring_links(after, ring_order([*keys, newcomer]))
    # the newcomer's four ring links, and the two distance-2 links across its place
    # (now at distance 3): nothing else moves
    assert len(ring_after - ring_before) == 4 and len(ring_before - ring_after) == 2
    assert len(before ^ after) <= 6 + 41  # and the chords across it, at most one each
    assert ring_neighbours(keys, newcomer) == []  # not a validator: no links
    assert ring_neighbours(keys[:1], keys[0]) == []


def test_small_sets_are_complete_and_large_ones_sparse():
    for n in range(1, 6):
        assert len(overlay_edges(keys_of(n))) == n * (n - 1) // 2
    for n in (CHORD_MIN, 100, 300):
        edges = overlay_edges(keys_of(n))
        assert len(edges) <= 3 * n  # degree at most 6
