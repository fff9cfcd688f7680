"""Gossip meshes for tests and benchmarks: start hosts, wire topologies, wait on events."""

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
    """Host ``i``'s identity (its seed is ``i`` as 4 bytes, 8 times)."""
    return Identity.from_seed(i.to_bytes(4, "big") * 8)


def config(i: int = 0, **changes) -> GossipConfig:
    """A host listening on 127.0.0.1 with 0.1 s heartbeats and random seed ``i``;
    ``changes`` replaces fields."""
    gs = changes.pop("gossipsub", None) or GossipSubParams(heartbeat_interval=0.1)
    changes.setdefault("listen", [LOOPBACK])
    return GossipConfig(gossipsub=gs, seed=i, **changes)


async def start_hosts(
    nursery: trio.Nursery,
    n: int,
    *,
    network: MemoryNetwork | None = None,
    make_config: Callable[[int], GossipConfig] = config,
    make_identity: Callable[[int], Identity] = identity,
    first: int = 1,
) -> list[GossipHost]:
    """Start hosts ``first .. first + n - 1`` in ``nursery``, in order, each with
    ``make_identity(i)`` and ``make_config(i)``: on websockets, or in ``network``."""
    hosts = []
    for i in range(first, first + n):
        transport = MemoryTransport(network) if network is not None else WebsocketTransport()
        host = GossipHost(make_identity(i), make_config(i), transport=transport)
        await nursery.start(host.run)
        hosts.append(host)
    return hosts


def sparse_edges(n: int, extra: int, rng: random.Random) -> list[tuple[int, int]]:
    """Dials (a, b) between ``n`` nodes, drawn from ``rng``: a random spanning tree (so
    the mesh is connected) plus about ``extra`` more dials per node."""
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
    """Dial every edge (a dials b) at once; returns when all are connected."""
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


# --- reach: networks where most pairs are not connected (issue 13) -----------------


ECHO = "echo"


async def echo(_peer, data: bytes) -> bytes:
    return b"echo:" + data


def reach_config(i: int, **changes) -> GossipConfig:
    """A memory-network host for reach tests: 1 s heartbeats, max_peers 16."""
    changes.setdefault("max_peers", 16)
    changes.setdefault("low_water", 8)
    changes.setdefault("high_water", 12)
    changes.setdefault("request_timeout", 10.0)
    gs = GossipSubParams(heartbeat_interval=1.0)
    return config(i, gossipsub=gs, **changes)


async def start_reach_network(
    nursery: trio.Nursery,
    n: int,
    *,
    nat_share: float = 0.0,
    public_first: int = 4,
    bootstrap_per_node: int = 2,
    seed: int = 1,
    network: MemoryNetwork | None = None,
    make_config: Callable[..., GossipConfig] = reach_config,
) -> tuple[MemoryNetwork, list[GossipHost], set[int]]:
    """``n`` hosts in memory, each serving ``echo``, each bootstrapping from
    ``bootstrap_per_node`` random earlier public hosts; a ``nat_share`` of them (never
    the first ``public_first``) behind a simulated NAT. Returns once every host has
    published its record. Returns (network, hosts, indices of the NATed hosts)."""
    rng = random.Random(seed)
    network = network or MemoryNetwork()
    hosts: list[GossipHost] = []
    public: list[int] = []
    natted: set[int] = set()
    for i in range(n):
        nat = i >= public_first and rng.random() < nat_share
        boot = [
            hosts[j].listen_addrs[0]
            for j in rng.sample(public, min(len(public), bootstrap_per_node))
        ]
        host = GossipHost(
            identity(i + 1),
            make_config(i + 1, bootstrap=boot),
            transport=MemoryTransport(network, nat=nat),
        )
        host.set_request_handler(ECHO, echo)
        await nursery.start(host.run)
        hosts.append(host)
        (natted.add if nat else public.append)(i)
    with trio.fail_after(60 + n * 0.5):
        for host in hosts:
            await host.reach.published.wait()
    return network, hosts, natted
