"""GossipSub meshes: delivery, mesh degrees, validators, rejoin."""

from __future__ import annotations

import random

import pytest
import trio

from aipg.gossip import GossipHost, MemoryNetwork, MemoryTransport, ValidationResult, topic
from aipg.gossip.config import GossipSubParams
from aipg.testing.gossipkit import (
    Inbox,
    config,
    connect_edges,
    identity,
    sparse_edges,
    start_hosts,
    until,
)

pytestmark = pytest.mark.timeout(120)
T = topic("receipts")


def _mesh_ok(hosts: list[GossipHost], lo: int, hi: int) -> bool:
    for h in hosts:
        n = len(h.router.mesh_peers(T))
        subscribed = len(h.router.topic_peers.get(T, ()))
        if n > hi or n < min(lo, subscribed):
            return False
    return True


async def _publish_and_check(nursery, hosts, count: int, seed: int, timeout: float):
    """Publish ``count`` messages from random hosts; every other host gets each exactly once."""
    subs = [h.subscribe(T) if T not in h.router._subs else h.router._subs[T][0] for h in hosts]
    inboxes = []
    rng = random.Random(seed)
    authors = [rng.randrange(len(hosts)) for _ in range(count)]
    for i, sub in enumerate(subs):
        inbox = Inbox(want=sum(1 for a in authors if a != i))
        if inbox.want == 0:
            inbox.full.set()
        nursery.start_soon(inbox.collect, sub)
        inboxes.append(inbox)
    for n, a in enumerate(authors):
        await hosts[a].publish(T, b"message %d" % n)
    with trio.fail_after(timeout):
        for inbox in inboxes:
            await inbox.full.wait()
    for _ in range(3):  # gossip keeps running; still nothing twice
        await hosts[0].router.heartbeat_done.wait()
    for i, inbox in enumerate(inboxes):
        want = sorted(b"message %d" % n for n, a in enumerate(authors) if a != i)
        assert sorted(d.data for d in inbox.items) == want, f"host {i}"
    return inboxes


async def test_20_nodes_on_websockets_deliver_every_message_exactly_once(nursery):
    hosts = await start_hosts(nursery, 20)
    for h in hosts:
        h.subscribe(T)
    await connect_edges(hosts, sparse_edges(20, 2, random.Random(1)))
    await until(hosts[0], lambda: _mesh_ok(hosts, 4, 12), 20)
    await _publish_and_check(nursery, hosts, 40, seed=2, timeout=20)


async def test_300_nodes_in_memory_full_delivery_and_mesh_degrees(nursery, autojump_clock):
    network = MemoryNetwork()
    # A low-degree node that a full peer PRUNEs waits out the backoff before it can
    # re-GRAFT; a short backoff keeps the test's virtual time (and real CPU) small.
    params = GossipSubParams(heartbeat_interval=0.5, prune_backoff=5.0)
    hosts = await start_hosts(
        nursery, 300, network=network, make_config=lambda i: config(i, gossipsub=params)
    )
    for h in hosts:
        h.subscribe(T)
    await connect_edges(hosts, sparse_edges(300, 3, random.Random(3)))
    await until(hosts[0], lambda: _mesh_ok(hosts, 4, 12), 60)
    degrees = [len(h.router.mesh_peers(T)) for h in hosts]
    assert min(degrees) >= 4 and max(degrees) <= 12
    await _publish_and_check(nursery, hosts, 30, seed=4, timeout=60)


async def test_validator_reject_ignore_and_timeout(nursery, autojump_clock):
    network = MemoryNetwork()
    a, b, c = await start_hosts(nursery, 3, network=network)
    verdicts = {b"good": ValidationResult.ACCEPT, b"bad": ValidationResult.REJECT}

    async def validator(peer, msg):
        if msg.data == b"slow":
            await trio.sleep_forever()
        return verdicts.get(msg.data, ValidationResult.IGNORE)

    for h in (b, c):
        h.set_topic_validator(T, validator, timeout=2.0)
    subs = [h.subscribe(T) for h in (a, b, c)]
    await a.connect(b.listen_addrs[0])
    await b.connect(c.listen_addrs[0])
    await until(b, lambda: c.peer_id in b.router.mesh_peers(T), 10)
    for data in (b"bad", b"meh", b"slow", b"good"):
        await a.publish(T, data)
    with trio.fail_after(10):
        got_b = await subs[1].receive()
        got_c = await subs[2].receive()
    # only the ACCEPTed message was delivered, and forwarded on from b to c
    assert got_b.data == got_c.data == b"good"
    assert got_c.forwarder == b.peer_id and got_c.author == a.peer_id
    await until(b, lambda: b.router.stats.ignored == 2, 10)  # IGNORE, and the timed-out one
    assert b.router.stats.rejected == 1
    assert b.peer_score(a.peer_id) < 0  # the REJECT cost a its score at b
    assert c.router.stats.rejected == 0  # c never saw the bad one


async def test_a_node_that_leaves_and_rejoins_is_regrafted(nursery, autojump_clock):
    network = MemoryNetwork()
    hosts = await start_hosts(nursery, 8, network=network)
    for h in hosts:
        h.subscribe(T)
    await connect_edges(hosts, [(i, j) for i in range(8) for j in range(i + 1, 8)])
    leaver = hosts[7]
    await until(hosts[0], lambda: leaver.peer_id in hosts[0].router.mesh_peers(T), 10)
    await leaver.aclose()
    await until(
        hosts[0], lambda: not any(leaver.peer_id in h.router.mesh_peers(T) for h in hosts[:7]), 10
    )
    back = GossipHost(leaver.identity, config(7), transport=MemoryTransport(network))
    await nursery.start(back.run)
    sub = back.subscribe(T)
    for h in hosts[:3]:
        await back.connect(h.listen_addrs[0])
    await until(
        back,
        lambda: (
            len(back.router.mesh_peers(T)) >= 3
            and all(back.peer_id in h.router.mesh_peers(T) for h in hosts[:3])
        ),
        20,
    )
    await hosts[5].publish(T, b"welcome back")
    with trio.fail_after(10):
        assert (await sub.receive()).data == b"welcome back"


async def test_unsubscribe_prunes_and_stops_delivery(nursery, autojump_clock):
    network = MemoryNetwork()
    a, b = await start_hosts(nursery, 2, network=network)
    sa, sb = a.subscribe(T), b.subscribe(T)
    await a.connect(b.listen_addrs[0])
    await until(a, lambda: b.peer_id in a.router.mesh_peers(T), 10)
    sb.close()
    await until(
        a, lambda: b.peer_id not in a.router.mesh_peers(T) and not a.router.topic_peers[T], 10
    )
    await b.publish(T, b"still reaches a")  # b may publish to a topic it left (fanout)
    with trio.fail_after(5):
        assert (await sa.receive()).data == b"still reaches a"


async def test_fanout_publish_without_flood(nursery, autojump_clock):
    network = MemoryNetwork()
    params = GossipSubParams(heartbeat_interval=0.1, flood_publish=False)
    hosts = await start_hosts(
        nursery, 10, network=network, make_config=lambda i: config(i, gossipsub=params)
    )
    publisher, subscribers = hosts[0], hosts[1:]
    subs = [h.subscribe(T) for h in subscribers]
    await connect_edges(hosts, [(0, i) for i in range(1, 10)] + [(i, i + 1) for i in range(1, 9)])
    await until(publisher, lambda: len(publisher.router.topic_peers.get(T, ())) == 9, 10)
    await publisher.publish(T, b"via fanout")
    assert len(publisher.router.fanout[T]) == 6  # D peers, not all nine
    with trio.fail_after(10):
        for s in subs:
            assert (await s.receive()).data == b"via fanout"


async def test_prune_with_peer_exchange_leads_to_new_connections(nursery, autojump_clock):
    network = MemoryNetwork()
    small = GossipSubParams(heartbeat_interval=0.1, D=2, D_lo=1, D_hi=3, D_score=1, D_out=0)
    (hub,) = await start_hosts(
        nursery, 1, network=network, make_config=lambda i: config(i, gossipsub=small)
    )
    others = await start_hosts(nursery, 6, network=network, first=10)
    for h in [hub, *others]:
        h.subscribe(T)
    for o in others:
        await o.connect(hub.listen_addrs[0])
    await until(hub, lambda: len(hub.router.mesh_peers(T)) >= 2, 10)

    def newcomer_config(i):
        cfg = config(i)
        cfg.thresholds.accept_px_threshold = 0.0  # trust the hub's peer exchange at once
        return cfg

    (newcomer,) = await start_hosts(
        nursery, 1, network=network, first=50, make_config=newcomer_config
    )
    newcomer.subscribe(T)
    await newcomer.connect(hub.listen_addrs[0])
    # the hub's mesh is full: it PRUNEs the newcomer and names other peers to dial instead
    others_ids = {o.peer_id for o in others}
    await until(newcomer, lambda: others_ids & set(newcomer.connected_peers()), 20)
    await until(newcomer, lambda: newcomer.router.mesh_peers(T) & others_ids, 20)


async def test_a_peer_outside_every_mesh_gets_messages_by_ihave_iwant(nursery, autojump_clock):
    network = MemoryNetwork()
    publisher, relay = await start_hosts(nursery, 2, network=network)
    # D_hi = 0: the loner refuses every GRAFT, so gossip is its only way to hear anything
    lonely = GossipSubParams(heartbeat_interval=0.1, D=0, D_lo=0, D_hi=0, D_score=0, D_out=0)
    (loner,) = await start_hosts(
        nursery, 1, network=network, first=30, make_config=lambda i: config(i, gossipsub=lonely)
    )
    publisher.subscribe(T)
    relay.subscribe(T)
    sub = loner.subscribe(T)
    await publisher.connect(relay.listen_addrs[0])
    await relay.connect(loner.listen_addrs[0])
    await until(relay, lambda: publisher.peer_id in relay.router.mesh_peers(T), 10)
    await until(relay, lambda: T in loner.router.peers[relay.peer_id].topics, 10)
    for _ in range(3):  # the relay GRAFTs the loner, which PRUNEs it right back
        await relay.router.heartbeat_done.wait()
    assert loner.peer_id not in relay.router.mesh_peers(T)
    await publisher.publish(T, b"heard through gossip")
    with trio.fail_after(10):
        got = await sub.receive()
    assert got.data == b"heard through gossip" and got.forwarder == relay.peer_id
    assert relay.router.stats.iwant_served == 1
    assert not loner.router.mesh_peers(T) and loner.peer_id not in relay.router.mesh_peers(T)


async def test_fanout_expires_after_its_ttl(nursery, autojump_clock):
    network = MemoryNetwork()
    params = GossipSubParams(heartbeat_interval=0.5, flood_publish=False, fanout_ttl=5.0)
    a, b = await start_hosts(
        nursery, 2, network=network, make_config=lambda i: config(i, gossipsub=params)
    )
    b.subscribe(T)
    await a.connect(b.listen_addrs[0])
    await until(a, lambda: a.router.topic_peers.get(T), 10)
    await a.publish(T, b"x")
    assert a.router.fanout[T] == {b.peer_id}
    start = trio.current_time()
    await until(a, lambda: T not in a.router.fanout, 20)
    assert trio.current_time() - start >= 5.0


async def test_opportunistic_grafting_adds_a_better_peer(nursery, autojump_clock):
    network = MemoryNetwork()
    good_id = identity(70).peer_id

    def chooser_config(i):
        cfg = config(
            i,
            gossipsub=GossipSubParams(
                heartbeat_interval=0.1,
                D=2,
                D_lo=1,
                D_hi=3,
                D_score=1,
                D_out=0,
                opportunistic_graft_ticks=20,
            ),
        )
        cfg.score.app_specific_score = lambda p: 20.0 if p == good_id else 0.0
        return cfg

    (chooser,) = await start_hosts(nursery, 1, network=network, make_config=chooser_config)
    plain = await start_hosts(nursery, 3, network=network, first=10)
    passive = GossipSubParams(heartbeat_interval=0.1, D=0, D_lo=0, D_score=0, D_out=0)
    (good,) = await start_hosts(
        nursery, 1, network=network, first=70, make_config=lambda i: config(i, gossipsub=passive)
    )
    for h in [chooser, *plain, good]:
        h.subscribe(T)
    for h in plain:
        await chooser.connect(h.listen_addrs[0])
    await until(chooser, lambda: len(chooser.router.mesh_peers(T)) >= 2, 10)
    await chooser.connect(good.listen_addrs[0])
    await until(chooser, lambda: T in chooser.router.peers[good.peer_id].topics, 10)
    # the mesh is within [D_lo, D_hi]: only the opportunistic round (every 20th beat) adds
    # the high-scoring peer, because the mesh's median score is below the threshold
    await until(chooser, lambda: good.peer_id in chooser.router.mesh_peers(T), 10)
    assert chooser.router._heartbeats % 20 == 0
