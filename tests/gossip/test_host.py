"""Connection manager over real websockets on 127.0.0.1 and over the memory transport."""

from __future__ import annotations

import pytest
import trio

from aipg.gossip import (
    ConnectionRefused,
    GossipHost,
    MemoryNetwork,
    MemoryTransport,
    PeerIdMismatch,
    TransportError,
    WebsocketTransport,
    topic,
)
from aipg.gossip.config import AGENT_VERSION
from aipg.testing.gossipkit import Inbox, config, identity, start_hosts, until

pytestmark = pytest.mark.timeout(60)


async def test_two_nodes_on_websockets_deliver_exactly_once(nursery):
    a, b = await start_hosts(nursery, 2)
    assert a.listen_addrs[0].peer_id == a.peer_id
    assert await a.connect(b.listen_addrs[0]) == b.peer_id
    t = topic("txs")
    sa, sb = a.subscribe(t), b.subscribe(t)
    await until(a, lambda: b.peer_id in a.router.mesh_peers(t), 10)
    await until(b, lambda: a.peer_id in b.router.mesh_peers(t), 10)
    inbox_a, inbox_b = Inbox(want=20), Inbox(want=20)
    nursery.start_soon(inbox_a.collect, sa)
    nursery.start_soon(inbox_b.collect, sb)
    for i in range(20):
        await a.publish(t, b"from a %d" % i)
        await b.publish(t, b"from b %d" % i)
    with trio.fail_after(10):
        await inbox_a.full.wait()
        await inbox_b.full.wait()
    # a few more heartbeats of gossip: still exactly once
    for _ in range(3):
        await a.router.heartbeat_done.wait()
    assert sorted(d.data for d in inbox_b.items) == sorted(b"from a %d" % i for i in range(20))
    assert sorted(d.data for d in inbox_a.items) == sorted(b"from b %d" % i for i in range(20))
    assert all(d.author == a.peer_id and d.forwarder == a.peer_id for d in inbox_b.items)


async def test_identify_is_exchanged(nursery):
    a, b = await start_hosts(nursery, 2)
    await a.connect(b.listen_addrs[0])
    await until(a, lambda: a.peer_identify(b.peer_id) is not None, 10)
    info = a.peer_identify(b.peer_id)
    assert info.agent_version == AGENT_VERSION
    assert info.listen_addrs == (str(b.listen_addrs[0].without_peer_id()),)
    assert await a.ping(b.peer_id) >= 0


async def test_dialing_the_wrong_peer_id_fails_clearly(nursery):
    a, b, c = await start_hosts(nursery, 3)
    wrong = b.listen_addrs[0].without_peer_id().with_peer_id(c.peer_id)
    with pytest.raises(PeerIdMismatch) as err:
        await a.connect(wrong)
    assert str(c.peer_id) in str(err.value) and str(b.peer_id) in str(err.value)
    assert a.connected_peers() == []


async def test_dialing_nobody_is_a_transport_error(nursery):
    (a,) = await start_hosts(nursery, 1)
    with trio.socket.socket() as s:  # a port that is certainly closed
        await s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    addr = a.listen_addrs[0].without_peer_id()
    closed = type(addr).websocket("127.0.0.1", port)
    with pytest.raises(TransportError):
        await a.connect(closed)


async def test_simultaneous_dials_leave_one_connection(nursery):
    network = MemoryNetwork()
    a, b = await start_hosts(nursery, 2, network=network)
    async with trio.open_nursery() as dials:
        dials.start_soon(a.connect, b.listen_addrs[0])
        dials.start_soon(b.connect, a.listen_addrs[0])
    await until(a, lambda: len(a._conns) == 1 and len(b._conns) == 1, 5)
    ca, cb = a._conns[b.peer_id], b._conns[a.peer_id]
    # both sides kept the same connection: the one the lower peer ID dialed
    assert ca.outbound != cb.outbound
    lower = min(a.peer_id, b.peer_id)
    assert (ca.outbound and lower == a.peer_id) or (cb.outbound and lower == b.peer_id)
    await a.ping(b.peer_id)


async def test_closing_a_host_closes_its_connections(nursery):
    network = MemoryNetwork()
    a, b, c = await start_hosts(nursery, 3, network=network)
    await a.connect(b.listen_addrs[0])
    await a.connect(c.listen_addrs[0])
    assert b.is_connected(a.peer_id) or await until(b, lambda: b.is_connected(a.peer_id), 5) is None
    await a.aclose()
    await until(b, lambda: not b.is_connected(a.peer_id), 5)
    await until(c, lambda: not c.is_connected(a.peer_id), 5)
    assert a.connected_peers() == []
    with pytest.raises(ConnectionRefused):
        await a.connect(b.listen_addrs[0])


async def test_max_peers_refuses_extra_inbound(nursery):
    network = MemoryNetwork()
    (hub,) = await start_hosts(
        nursery, 1, network=network, make_config=lambda i: config(i, max_peers=2, max_transient=0)
    )
    others = await start_hosts(nursery, 3, network=network, first=10)
    await others[0].connect(hub.listen_addrs[0])
    await others[1].connect(hub.listen_addrs[0])
    with pytest.raises(ConnectionRefused, match="too many peers"):
        await others[2].connect(hub.listen_addrs[0])
    assert len(hub.connected_peers()) == 2


async def test_watermarks_trim_connections(nursery, autojump_clock):
    network = MemoryNetwork()
    (hub,) = await start_hosts(
        nursery,
        1,
        network=network,
        make_config=lambda i: config(i, max_peers=20, low_water=3, high_water=5),
    )
    others = await start_hosts(nursery, 8, network=network, first=10)
    for o in others:
        await o.connect(hub.listen_addrs[0])
    await until(hub, lambda: len(hub.connected_peers()) == 3, 10)


async def test_bootstrap_peer_is_redialed_after_it_restarts(nursery, autojump_clock):
    network = MemoryNetwork()
    (b,) = await start_hosts(nursery, 1, network=network)
    addr = b.listen_addrs[0]
    a = GossipHost(identity(50), config(50, bootstrap=[addr]), transport=MemoryTransport(network))
    await nursery.start(a.run)
    await until(a, lambda: a.is_connected(b.peer_id), 10)
    await b.aclose()
    await until(a, lambda: not a.is_connected(b.peer_id), 10)
    # the same identity comes back on the same address; a redials it with backoff
    b2 = GossipHost(
        b.identity,
        config(2, listen=[addr.without_peer_id()]),
        transport=MemoryTransport(network),
    )
    await nursery.start(b2.run)
    await until(a, lambda: a.is_connected(b2.peer_id), 120)


async def test_websocket_transport_refuses_oversize_frames(nursery):
    got = trio.Event()
    received: list[bytes] = []

    async def handler(conn):
        try:
            while True:
                received.append(await conn.receive_frame())
        except TransportError:
            got.set()

    transport = WebsocketTransport(max_frame_size=1024)
    (addr,) = await transport.listen(nursery, config().listen[0], handler)
    conn = await WebsocketTransport(max_frame_size=1 << 20).dial(nursery, addr)
    await conn.send_frame(b"x" * 100)
    await conn.send_frame(b"x" * 5000)
    with trio.fail_after(5):
        await got.wait()
    assert received == [b"x" * 100]
    await conn.aclose()


def test_the_keepalive_deadline_is_compared_as_it_was_set():
    """At the deadline a connection is silent, whatever float rounding says of the
    difference (these numbers made the keepalive loop spin forever)."""
    from aipg.gossip.connection import silent_since

    last, interval = 15.057571252642584, 15.0
    deadline = last + interval
    assert deadline - last < interval  # the rounding that used to bite
    assert silent_since(deadline, last, interval)
    assert not silent_since(deadline - 1e-9, last, interval)
