"""Shared helpers for the gossip tests: start hosts, wire topologies, wait on events."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable

import trio

from aipg.gossip import GossipConfig, GossipHost, MemoryNetwork, MemoryTransport
from aipg.gossip.config import GossipSubParams
from aipg.gossip.transport import WebsocketTransport
from aipg.wire import Identity, Multiaddr

LOOPBACK = Multiaddr.parse("/ip4/127.0.0.1/tcp/0/ws")


def identity(i: int) -> Identity:
    return Identity.from_seed(i.to_bytes(4, "big") * 8)


def config(i: int = 0, **changes) -> GossipConfig:
    gs = changes.pop("gossipsub", None) or GossipSubParams(heartbeat_interval=0.1)
    changes.setdefault("listen", [LOOPBACK])
    return GossipConfig(gossipsub=gs, seed=i, **changes)


async def start_hosts(
    nursery: trio.Nursery,
    n: int,
    *,
    network: MemoryNetwork | None = None,
    make_config: Callable[[int], GossipConfig] = config,
    first: int = 1,
) -> list[GossipHost]:
    """Start ``n`` hosts (websockets on 127.0.0.1, or in ``network``)."""
    hosts = []
    for i in range(first, first + n):
        transport = MemoryTransport(network) if network is not None else WebsocketTransport()
        host = GossipHost(identity(i), make_config(i), transport=transport)
        await nursery.start(host.run)
        hosts.append(host)
    return hosts


def sparse_edges(n: int, extra: int, seed: int) -> list[tuple[int, int]]:
    """A random spanning tree plus about ``extra`` more dials per node."""
    rng = random.Random(seed)
    order = list(range(n))
    rng.shuffle(order)
    edges = {(order[i], order[rng.randrange(i)]) for i in range(1, n)}
    for a in range(n):
        for _ in range(extra):
            b = rng.randrange(n)
            if a != b and (a, b) not in edges and (b, a) not in edges:
                edges.add((a, b))
    return sorted(edges)


async def connect_edges(hosts: list[GossipHost], edges: list[tuple[int, int]]) -> None:
    async with trio.open_nursery() as nursery:
        for a, b in edges:
            nursery.start_soon(hosts[a].connect, hosts[b].listen_addrs[0])


async def until(host: GossipHost, predicate: Callable[[], bool], timeout: float) -> None:
    """Wait (on ``host``'s heartbeats) until ``predicate()`` holds; fail after ``timeout``."""
    with trio.fail_after(timeout):
        while not predicate():
            await host.router.heartbeat_done.wait()


@dataclasses.dataclass
class Inbox:
    """Collects what one subscription delivers, and signals when it holds ``want`` items."""

    want: int
    items: list = dataclasses.field(default_factory=list)
    full: trio.Event = dataclasses.field(default_factory=trio.Event)

    async def collect(self, sub) -> None:
        async for item in sub:
            self.items.append(item)
            if len(self.items) >= self.want:
                self.full.set()
