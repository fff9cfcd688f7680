"""Reaching peers we are not connected to: DHT lookups, dial on demand, AutoNAT, relays."""

from __future__ import annotations

import random

import pytest
import trio

from aipg.gossip import GossipHost, MemoryNetwork, MemoryTransport, NotConnected
from aipg.gossip.config import RelayLimits
from aipg.gossip.dht import KAD_PROTOCOL, KadNodes
from aipg.testing.gossipkit import (
    ECHO,
    echo,
    identity,
    reach_config,
    start_reach_network,
    until,
)
from aipg.wire import PeerRecord, encode, sign

pytestmark = pytest.mark.timeout(120)


def _unconnected_pairs(hosts, rng, n):
    pairs = []
    while len(pairs) < n:
        a, b = rng.sample(range(len(hosts)), 2)
        if not hosts[a].is_connected(hosts[b].peer_id):
            pairs.append((a, b))
    return pairs


async def test_a_request_to_an_unknown_peer_looks_it_up_and_dials_it(nursery, autojump_clock):
    _, hosts, _ = await start_reach_network(nursery, 40, seed=2)
    rng = random.Random(5)
    for _ in range(10):
        ((a, b),) = _unconnected_pairs(hosts, rng, 1)
        src, dst = hosts[a], hosts[b]
        src.reach.addrbook.remove(dst.peer_id)  # nothing known: only a lookup can find it
        lookups = len(src.reach.lookup_hops)
        assert await src.request(dst.peer_id, ECHO, b"hi") == b"echo:hi"
        assert len(src.reach.lookup_hops) == lookups + 1
        assert src.reach.lookup_hops[-1] <= 6  # log2(40) rounds at most
        assert src.peer_record(dst.peer_id).peer == dst.peer_id


async def test_on_demand_connections_are_transient_and_close_when_idle(nursery, autojump_clock):
    _, hosts, _ = await start_reach_network(nursery, 24, seed=3)
    (a, b) = _unconnected_pairs(hosts, random.Random(1), 1)[0]
    src, dst = hosts[a], hosts[b]
    assert await src.request(dst.peer_id, ECHO, b"x") == b"echo:x"
    conn = src._conns[dst.peer_id]
    assert conn.transient
    with trio.fail_after(src.config.transient_idle + 5):
        await conn.closed.wait()
    assert not src.is_connected(dst.peer_id)
    assert await src.request(dst.peer_id, ECHO, b"y") == b"echo:y"  # and it dials again


async def test_transient_connections_are_bounded(nursery, autojump_clock):
    make = lambda i, **kw: reach_config(i, max_transient=2, **kw)  # noqa: E731
    _, hosts, _ = await start_reach_network(nursery, 20, seed=4, make_config=make)
    src = hosts[0]
    for b in range(1, 20):
        if not src.is_connected(hosts[b].peer_id):
            assert await src.request(hosts[b].peer_id, ECHO, b"z") == b"echo:z"
        assert sum(c.transient for c in src._conns.values()) <= 2


async def test_an_unreachable_peer_raises_not_connected_and_backs_off(nursery, autojump_clock):
    _, hosts, _ = await start_reach_network(nursery, 10, seed=5)
    ghost = identity(999).peer_id
    with pytest.raises(NotConnected, match="unreachable"):
        await hosts[3].request(ghost, ECHO, b"?")
    with pytest.raises(NotConnected):
        await hosts[3].request(ghost, ECHO, b"?")


async def test_autonat_tells_public_from_natted(nursery, autojump_clock):
    _, hosts, natted = await start_reach_network(nursery, 16, nat_share=0.4, seed=6)
    assert natted
    for i, h in enumerate(hosts):
        assert h.reach.reachability == ("private" if i in natted else "public")
        rec = h.peer_record(h.peer_id) or h.reach.self_record()
        relayed = [a.is_relayed for a in rec.multiaddrs()]
        assert all(relayed) if i in natted else not any(relayed)
        if i in natted:
            assert len(h.reach.hub.reserved_on) == h.config.relay_reservations


async def _disconnect(a, b):
    for x, y in ((a, b), (b, a)):
        conn = x._conns.get(y.peer_id)
        if conn is not None:
            x._drop(conn, "test")
            with trio.fail_after(5):
                await conn.closed.wait()


async def _nat_world(nursery, faults=(None, None), limits=None, client_seed=5):
    """Public hosts 1-3 (2 and 3 are relays with ``faults``), one NATed host, one client."""
    network = MemoryNetwork()
    hosts = []
    for i, fault in zip((1, 2, 3), (None, *faults), strict=True):
        boot = [h.listen_addrs[0] for h in hosts]
        cfg = reach_config(i, bootstrap=boot, relay_fault=fault, relay_service=i != 1)
        if limits is not None:
            cfg.relay_limits = limits
        h = GossipHost(identity(i), cfg, transport=MemoryTransport(network))
        await nursery.start(h.run)
        hosts.append(h)
    boot = [h.listen_addrs[0] for h in hosts[1:]]
    natted = GossipHost(
        identity(4), reach_config(4, bootstrap=boot), transport=MemoryTransport(network, nat=True)
    )
    natted.set_request_handler(ECHO, echo, max_request_size=1 << 20)
    await nursery.start(natted.run)
    client = GossipHost(
        identity(client_seed),
        reach_config(client_seed, bootstrap=[hosts[0].listen_addrs[0]]),
        transport=MemoryTransport(network),
    )
    await nursery.start(client.run)
    with trio.fail_after(60):
        for h in (*hosts, natted, client):
            await h.reach.published.wait()
    return hosts, natted, client


async def test_a_natted_node_is_served_through_a_relay_that_sees_only_ciphertext(
    nursery, autojump_clock
):
    (_, r2, r3), natted, client = await _nat_world(nursery)
    seen: list[bytes] = []
    for relay in (r2, r3):
        orig = relay.reach.hub._on_data

        async def spy(conn, key, data, orig=orig):
            seen.append(data)
            await orig(conn, key, data)

        relay.reach.hub._on_data = spy
    secret = b"the secret prompt " * 20
    await _disconnect(client, natted)
    assert await client.request(natted.peer_id, ECHO, secret) == b"echo:" + secret
    conn = client._conns[natted.peer_id]
    assert conn.relayed
    assert seen and not any(b"secret prompt" in d for d in seen)
    # and the reply is the NATed node's: the channel is authenticated by its peer ID
    assert conn.peer == natted.peer_id


async def test_a_natted_peers_own_direct_dial_replaces_our_circuit_to_it(nursery, autojump_clock):
    """We reach a NATed peer through a relay while it dials us directly (two validators
    linking up, D105): the direct connection stays at both ends, whoever's peer ID is
    lower (this client's is below the NATed host's, so the dialer's ID alone would keep
    the circuit)."""
    _, natted, client = await _nat_world(nursery, client_seed=12)
    assert client.peer_id.raw < natted.peer_id.raw
    await _disconnect(client, natted)
    assert await client.request(natted.peer_id, ECHO, b"hello") == b"echo:hello"
    circuit = client._conns[natted.peer_id]
    assert circuit.relayed
    # its dial, begun before our circuit came in (the race: connect() would see us connected)
    await natted._dial(client.listen_addrs[0].with_peer_id(client.peer_id), client.peer_id, False)
    with trio.fail_after(10):
        await circuit.closed.wait()
    for a, b in ((client, natted), (natted, client)):
        assert not a._conns[b.peer_id].relayed
    assert await client.request(natted.peer_id, ECHO, b"again") == b"echo:again"


async def test_a_natted_host_reverses_a_circuit_from_a_public_peer(nursery, autojump_clock):
    """Connection reversal (D109): behind NAT, we replace a public peer's circuit to us
    with a connection we dial to it; the relay then carries nothing of theirs."""
    _, natted, client = await _nat_world(nursery, client_seed=12)
    await _disconnect(client, natted)
    assert await client.request(natted.peer_id, ECHO, b"hello") == b"echo:hello"
    assert client.is_relayed(natted.peer_id) and natted.is_relayed(client.peer_id)
    assert not await client.reverse(natted.peer_id)  # it has no direct address to dial
    assert await natted.reverse(client.peer_id)
    with trio.fail_after(10):
        while client.is_relayed(natted.peer_id):
            await client.peer_connected.wait()
    assert not natted.is_relayed(client.peer_id)
    assert await client.request(natted.peer_id, ECHO, b"again") == b"echo:again"


@pytest.mark.parametrize("fault", ["drop", "corrupt"])
async def test_a_relay_that_drops_or_corrupts_is_detected_and_avoided(
    nursery, autojump_clock, fault
):
    (_, r2, r3), natted, client = await _nat_world(nursery)
    book = client.reach.addrbook
    await client.request(natted.peer_id, ECHO, b"warm")  # learn the record (any relay)
    await _disconnect(client, natted)
    r2.reach.hub.fault = fault  # turns bad after the NATed host's last probe of it
    for _ in range(5):
        book.dial_ok(r2.peer_id)  # the bad relay is the one the client tries first
    book.add(natted.reach.self_record(), verified=True)
    assert book.dial_addrs(natted.peer_id)[0].relay().peer_id == r2.peer_id
    assert await client.request(natted.peer_id, ECHO, b"ok?") == b"echo:ok?"
    assert book.relay_is_bad(r2.peer_id)
    assert client._conns[natted.peer_id].relayed
    assert all(a.relay().peer_id == r3.peer_id for a in book.dial_addrs(natted.peer_id))


@pytest.mark.parametrize("fault", ["drop", "corrupt"])
async def test_a_natted_host_probes_its_relays_and_reserves_elsewhere_when_one_is_bad(
    nursery, autojump_clock, fault
):
    (_, r2, r3), natted, client = await _nat_world(nursery, faults=(fault, None))
    # altered frames: the probe at reservation time bans r2 at once; lost ones: at the
    # second probe (the next round, 30 s of virtual time later: once may be load)
    with trio.fail_after(120):
        while not natted.reach.addrbook.relay_is_bad(r2.peer_id):
            await trio.sleep(1)
    if fault == "corrupt":
        assert natted.reach.relay_failures == 1
    assert natted.reach.relay_failures >= 1
    # no slot kept there, none advertised (another public host may have taken its place)
    held = set(natted.reach.hub.reserved_on)
    assert r3.peer_id in held and r2.peer_id not in held
    relays = {a.relay().peer_id for a in natted.reach.self_record().multiaddrs()}
    assert relays == held
    await _disconnect(client, natted)
    assert await client.request(natted.peer_id, ECHO, b"via r3") == b"echo:via r3"
    # through r3, unless the NATed host, looking for a relay in r2's place, dialed the
    # (public) client itself meanwhile: then the request took that connection
    conn = client._conns[natted.peer_id]
    assert conn.relayed or not conn.outbound
    assert not client.reach.addrbook.relay_is_bad(r3.peer_id)
    # a relay that turns bad later fails the periodic probes and is given up too; one
    # lost probe on a slot that worked is not enough (the background round may probe it
    # as well as we do here: the probe log says what each probe found)
    since = natted.reach._probes_done
    r3.reach.hub.fault = fault
    with trio.fail_after(120):
        while r3.peer_id in natted.reach.hub.reserved_on:
            await natted.reach.check_relays()
    failed = [
        (verdict, kept)
        for n, relay, verdict, kept in natted.reach.relay_probes
        if n >= since and relay == r3.peer_id and verdict != "ok"  # "ok": begun before
    ]
    assert failed == (
        [("lost", True), ("lost", False)] if fault == "drop" else [("altered", False)]
    )
    assert natted.reach.relay_failures >= 2


async def test_an_honest_relay_passes_the_probe_and_forwards_nothing_else(nursery, autojump_clock):
    (_, r2, r3), natted, _ = await _nat_world(nursery)
    assert set(natted.reach.hub.reserved_on) == {r2.peer_id, r3.peer_id}
    before = natted.reach.relay_failures
    await natted.reach.check_relays()
    assert natted.reach.relay_failures == before == 0
    assert set(natted.reach.hub.reserved_on) == {r2.peer_id, r3.peer_id}
    # the probes' circuits are closed on both sides once the closes went through
    # (virtual time: the autojump clock; a background probe may be under way)
    with trio.fail_after(10):
        while natted.reach.hub._ends or r2.reach.hub.circuits():
            await trio.sleep(0.05)


async def test_relay_limits_close_a_circuit_past_its_byte_budget(nursery, autojump_clock):
    limits = RelayLimits(max_bytes=64 << 10)
    _, natted, client = await _nat_world(nursery, limits=limits)
    await _disconnect(client, natted)
    assert await client.request(natted.peer_id, ECHO, b"small") == b"echo:small"
    assert client._conns[natted.peer_id].relayed
    with pytest.raises(Exception) as err:
        await client.request(natted.peer_id, ECHO, b"x" * (200 << 10), timeout=5.0)
    assert type(err.value).__name__ in ("PeerDisconnected", "RequestTimeout")


async def test_a_relay_refuses_reservations_past_its_limit(nursery, autojump_clock):
    (_, r2, _), natted, _ = await _nat_world(nursery, limits=RelayLimits(max_reservations=1))
    from aipg.gossip.relay import RelayReservation, RelayReserve
    from aipg.wire import decode

    assert natted.peer_id in r2.reach.hub.reservations
    other = identity(77).peer_id
    reply = decode(
        await r2.reach.hub.handle_reserve(other, encode(RelayReserve(ttl=60))), RelayReservation
    )
    assert not reply.ok and "slots" in reply.reason


async def test_forged_records_in_kad_replies_are_ignored(nursery, autojump_clock):
    network = MemoryNetwork()
    honest = GossipHost(identity(1), reach_config(1), transport=MemoryTransport(network))
    await nursery.start(honest.run)
    evil = GossipHost(identity(2), reach_config(2), transport=MemoryTransport(network))
    await nursery.start(evil.run)
    target = identity(3)
    forged = sign(
        PeerRecord(
            peer_id=target.peer_id.raw,
            seq=2**40,
            addrs=(str(evil.listen_addrs[0].without_peer_id()),),
        ),
        identity(2),
    )

    async def lying(_peer, _data):
        return encode(KadNodes(records=(forged,)))

    evil.set_request_handler(KAD_PROTOCOL, lying)
    await honest.connect(evil.listen_addrs[0])
    rec, _ = await honest.find_peer(target.peer_id)
    assert rec is None and honest.peer_record(target.peer_id) is None

    async def garbage(_peer, _data):
        return b"\x93\x01\x02"

    evil.set_request_handler(KAD_PROTOCOL, garbage)
    rec, _ = await honest.find_peer(target.peer_id)
    assert rec is None


async def test_a_restarted_node_on_new_ports_is_found_again_by_its_id(
    nursery, autojump_clock, tmp_path
):
    network, hosts, _ = await start_reach_network(nursery, 12, seed=8)
    victim = hosts[5]
    peers_file = tmp_path / "peers.bin"
    victim.reach.addrbook.path = peers_file
    victim.reach._save()
    await victim.aclose()
    again = GossipHost(
        identity(6), reach_config(6, peers_file=peers_file), transport=MemoryTransport(network)
    )
    again.set_request_handler(ECHO, echo)
    await nursery.start(again.run)
    assert again.listen_addrs[0] != victim.listen_addrs[0]  # new port, no bootstrap given
    with trio.fail_after(30):
        await again.reach.published.wait()
    assert again.connected_peers()  # rejoined from its saved address book
    for h in hosts[:5]:
        h.reach.addrbook.remove(again.peer_id)  # forget the old record: lookups only
        assert await h.request(again.peer_id, ECHO, b"back") == b"echo:back"


async def test_a_relay_reservation_never_lifts_a_host_past_its_connection_caps(
    nursery, autojump_clock
):
    """A private node keeps its relay connections up; one that was transient (dialed on
    demand) must not become regular past max_peers, or the host holds max_peers + 1
    regular connections beside a full transient table (33 of 32 in the 300-host test)."""
    network = MemoryNetwork()
    relays = []
    for i in (1, 2, 3):
        h = GossipHost(identity(i), reach_config(i), transport=MemoryTransport(network))
        await nursery.start(h.run)
        relays.append(h)
    cfg = reach_config(9, max_peers=2, max_transient=2, relay_reservations=3)
    x = GossipHost(identity(9), cfg, transport=MemoryTransport(network))
    await nursery.start(x.run)
    r1, r2, r3 = relays
    await x.connect(r1.listen_addrs[0])
    await x.connect(r2.listen_addrs[0])
    await x.connect(r3.listen_addrs[0], transient=True)  # regular table full
    assert x._conns[r3.peer_id].transient
    # every connection identified (reservations need it)
    await until(x, lambda: all(c.identify is not None for c in x._conns.values()), 30)
    await x.reach.keep_reservations()
    assert set(x.reach.hub.reserved_on) == {r1.peer_id, r2.peer_id, r3.peer_id}
    regular = [c for c in x._conns.values() if not c.transient and not x._reserved(c)]
    assert len(regular) <= cfg.max_peers
    transient = [c for c in x._conns.values() if c.transient and not x._reserved(c)]
    assert len(transient) <= cfg.max_transient
    # the relay connection kept transient is never closed as idle (it carries): time
    # passes (the autojump clock) past three idle periods
    await trio.sleep(cfg.transient_idle * 3)
    assert x.is_connected(r3.peer_id)


async def test_a_duplicate_connection_that_wins_the_tie_break_keeps_the_caps(
    nursery, autojump_clock
):
    """Two hosts dial each other at once: the connection that wins the tie-break replaces
    the other. A regular dial started before the peer's inbound connection (admitted as
    transient, the regular table being full) must not replace it as a regular one past
    max_peers (what the 300-host test saw: 17 regular connections with max_peers 16)."""
    network = MemoryNetwork()
    ids = sorted((identity(20 + i) for i in range(6)), key=lambda x: x.peer_id.raw)
    x_id, b_id = ids[0], ids[-1]  # x's own dial wins the tie-break (lower initiator)
    cfg = reach_config(20, max_peers=1, max_transient=4)
    x = GossipHost(x_id, cfg, transport=MemoryTransport(network))
    a = GossipHost(ids[1], reach_config(21), transport=MemoryTransport(network))
    b = GossipHost(b_id, reach_config(22), transport=MemoryTransport(network))
    for h in (x, a, b):
        await nursery.start(h.run)
    await x.connect(a.listen_addrs[0])  # x's regular table is full
    await b.connect(x.listen_addrs[0].with_peer_id(x.peer_id))
    assert x._conns[b.peer_id].transient  # admitted beyond max_peers
    # x's regular dial to b, begun before b's connection came in (the race)
    addr = b.listen_addrs[0].with_peer_id(b.peer_id)
    await x._dial(addr, b.peer_id, False)
    assert x._conns[b.peer_id].outbound  # the new connection won and replaced the old
    regular = [c for c in x._conns.values() if not c.transient and not x._reserved(c)]
    assert len(regular) <= cfg.max_peers


async def test_a_kept_peer_is_dialed_on_demand_and_its_connection_never_closes_idle(
    nursery, autojump_clock
):
    """D102: a validator keeps its fellow validators' connections however idle (only
    they carry consensus); ensure_connection dials one as a request would."""
    _, hosts, _ = await start_reach_network(nursery, 24, seed=3)
    (a, b), (c, d) = _unconnected_pairs(hosts, random.Random(1), 2)
    src, dst = hosts[a], hosts[b]
    src.kept_peers = frozenset({dst.peer_id})  # both ends keep it (as validators do)
    dst.kept_peers = frozenset({src.peer_id})
    assert await src.ensure_connection(dst.peer_id)
    conn = src._conns[dst.peer_id]
    assert conn.transient  # beyond max_peers, like any on-demand connection
    other = hosts[c]
    assert await other.ensure_connection(hosts[d].peer_id)  # not kept: closes when idle
    with trio.fail_after(other.config.transient_idle * 3):
        await other._conns[hosts[d].peer_id].closed.wait()
    assert src._conns.get(dst.peer_id) is conn and not conn.closed.is_set()
    assert not await src.ensure_connection(identity(999).peer_id)  # nobody: False, no raise
