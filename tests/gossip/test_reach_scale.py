"""300 hosts, max_peers 16, 30% behind NAT: every request from a random node to a random
node succeeds (dial on demand: address book, DHT lookup, relays)."""

from __future__ import annotations

import math
import random

import pytest

from aipg.testing.gossipkit import ECHO, start_reach_network

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

N = 300


async def test_every_request_between_random_nodes_of_300_succeeds(nursery, autojump_clock):
    _, hosts, natted = await start_reach_network(nursery, N, nat_share=0.3, seed=11)
    assert 0.2 * N < len(natted) < 0.4 * N
    # a sparse network: a node is connected to a small share of the others
    for h in hosts:  # max_peers + max_transient, and the clients reserved on it as a relay
        reserved = [c for c in h._conns.values() if h._reserved(c)]
        assert len(h._conns) - len(reserved) <= 16 + 16
        assert len(reserved) <= h.config.relay_limits.max_reservations
    rng = random.Random(12)
    unconnected = 0
    for k in range(150):
        a, b = rng.sample(range(N), 2)
        src, dst = hosts[a], hosts[b]
        unconnected += not src.is_connected(dst.peer_id)
        if k % 3 == 0:
            src.reach.addrbook.remove(dst.peer_id)  # a third of them by lookup only
        payload = b"%d->%d" % (a, b)
        assert await src.request(dst.peer_id, ECHO, payload) == b"echo:" + payload
    assert unconnected > 100  # most requests needed a dial on demand
    hops = [h for host in hosts for h in host.reach.lookup_hops]
    assert hops and max(hops) <= math.log2(N)
    assert sum(h.relayed_connections for h in hosts) > 0
