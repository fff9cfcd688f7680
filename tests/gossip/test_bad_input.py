"""Hostile peers: invalid messages, forged signatures, garbage frames, floods, replays.

The attacker is a real host whose writer we feed hand-made frames, so everything it
sends crosses the real secure channel, decoder and router of its victims.
"""

from __future__ import annotations

import os

import pytest
import trio

from aipg.gossip import ConnectionRefused, MemoryNetwork, ValidationResult, topic
from aipg.gossip.messages import (
    ControlGraft,
    ControlIWant,
    ControlMessage,
    ControlPrune,
    PubsubMessage,
    Rpc,
)
from aipg.gossip.transport import MemoryTransport
from aipg.testing.gossipkit import Inbox, config, connect_edges, start_hosts, until
from aipg.wire import encode, sign

pytestmark = pytest.mark.timeout(60)
T = topic("txs")


def _inject(attacker, victim, frame) -> None:
    """Queue ``frame`` (a record, or raw bytes) on ``attacker``'s connection to ``victim``."""
    conn = attacker._conns[victim.peer_id]
    conn.send_q.send_nowait(frame)


async def _reject_spam(peer, msg):
    return ValidationResult.REJECT if msg.data.startswith(b"spam") else ValidationResult.ACCEPT


async def _mesh(nursery, honest_count: int):
    network = MemoryNetwork()
    honest = await start_hosts(nursery, honest_count, network=network)
    (attacker,) = await start_hosts(nursery, 1, network=network, first=100)
    for h in honest:
        h.set_topic_validator(T, _reject_spam)
    subs = [h.subscribe(T) for h in honest]
    attacker.subscribe(T)
    n = honest_count
    await connect_edges(
        honest, [(i, (i + 1) % n) for i in range(n)] + [(i, (i + 3) % n) for i in range(n)]
    )
    for h in honest[:4]:
        await attacker.connect(h.listen_addrs[0])
    await until(
        honest[0], lambda: all(attacker.peer_id in h.router.mesh_peers(T) for h in honest[:4]), 10
    )
    return honest, subs, attacker


async def _collect_honest(inbox: Inbox, sub) -> None:
    """Collect the honest messages; anything else a victim delivered fails the test."""
    async for item in sub:
        assert not item.data.startswith((b"spam", b"forged", b"unsigned")), item.data
        if item.data.startswith(b"honest"):
            inbox.items.append(item)
            if len(inbox.items) >= inbox.want:
                inbox.full.set()


async def _honest_traffic(nursery, honest, subs, count: int, timeout: float = 30) -> None:
    inboxes = []
    for i, sub in enumerate(subs):
        inbox = Inbox(want=count - sum(1 for k in range(count) if k % len(honest) == i))
        nursery.start_soon(_collect_honest, inbox, sub)
        inboxes.append(inbox)
    for k in range(count):
        await honest[k % len(honest)].publish(T, b"honest %d" % k)
    with trio.fail_after(timeout):
        for inbox in inboxes:
            await inbox.full.wait()
    for inbox in inboxes:
        assert all(d.data.startswith(b"honest") for d in inbox.items)
        assert len({d.data for d in inbox.items}) == len(inbox.items) == inbox.want


async def test_spammer_is_graylisted_and_disconnected_while_honest_delivery_stays_full(
    nursery, autojump_clock
):
    honest, subs, spammer = await _mesh(nursery, 10)
    for k in range(10):
        await spammer.publish(T, b"spam %d" % k)
    victims = honest[:4]
    await until(honest[0], lambda: not any(v.is_connected(spammer.peer_id) for v in victims), 10)
    await until(honest[0], lambda: not any(spammer.is_connected(v.peer_id) for v in victims), 10)
    for v in victims:
        assert v.peer_score(spammer.peer_id) < v.config.thresholds.graylist_threshold
        assert v.router.stats.rejected >= 3
    with pytest.raises(ConnectionRefused, match=r"banned|graylisted"):
        await spammer.connect(victims[0].listen_addrs[0])
    await _honest_traffic(nursery, honest, subs, 30)


async def test_forged_signatures_are_rejected_and_scored(nursery, autojump_clock):
    honest, subs, forger = await _mesh(nursery, 6)
    victim, author = honest[0], honest[1]
    real = sign(PubsubMessage(topic=T, data=b"real", seqno=1), author.identity)
    forged = real.replace(data=b"forged")  # author's key, signature of other bytes
    unsigned = PubsubMessage(topic=T, data=b"unsigned", seqno=2)
    _inject(
        forger,
        victim,
        Rpc(subscriptions=(), messages=(encode(forged), encode(unsigned)), control=None),
    )
    await until(victim, lambda: victim.router.stats.rejected == 2, 10)
    assert victim.peer_score(forger.peer_id) < 0
    await _honest_traffic(nursery, honest, subs, 12)


async def test_garbage_frames_close_the_connection_but_nothing_else(nursery, autojump_clock):
    honest, subs, attacker = await _mesh(nursery, 6)
    victim = honest[0]
    for junk in [
        b"",
        b"\xc1",
        b"\x93\x01\x02",
        os.urandom(100),
        encode(PubsubMessage(topic=T, data=b"", seqno=0)),
    ] * 4:
        _inject(attacker, victim, junk)
    await until(victim, lambda: not victim.is_connected(attacker.peer_id), 10)
    assert victim.peer_score(attacker.peer_id) < 0
    await _honest_traffic(nursery, honest, subs, 12)


async def test_replayed_messages_are_delivered_once(nursery, autojump_clock):
    honest, subs, attacker = await _mesh(nursery, 4)
    msg = sign(PubsubMessage(topic=T, data=b"once", seqno=7), honest[3].identity)
    for _ in range(5):
        _inject(attacker, honest[0], Rpc(subscriptions=(), messages=(encode(msg),), control=None))
    with trio.fail_after(5):
        assert (await subs[0].receive()).data == b"once"
    await until(honest[0], lambda: honest[0].router.stats.duplicates >= 4, 5)
    for _ in range(3):
        await honest[0].router.heartbeat_done.wait()
    with pytest.raises(trio.WouldBlock):
        subs[0]._receive.receive_nowait()


async def test_iwant_flood_is_capped(nursery, autojump_clock):
    honest, subs, attacker = await _mesh(nursery, 4)
    victim = honest[0]
    ids = [await victim.publish(T, b"cached %d" % i) for i in range(5)]
    flood = ControlIWant(message_ids=tuple(ids * 1000))
    ctl = ControlMessage(ihave=(), iwant=(flood,) * 8, graft=(), prune=())
    for _ in range(5):
        _inject(attacker, victim, Rpc(subscriptions=(), messages=(), control=ctl))
    await until(victim, lambda: victim.router.stats.iwant_served > 0, 5)
    for _ in range(3):
        await victim.router.heartbeat_done.wait()
    # each message at most gossip_retransmission (3) times to one peer
    assert victim.router.stats.iwant_served <= 3 * len(ids)
    await _honest_traffic(nursery, honest, subs, 8)


async def test_graft_spam_in_backoff_ends_in_graylist(nursery, autojump_clock):
    honest, subs, attacker = await _mesh(nursery, 4)
    victim = honest[0]
    prune = ControlMessage(
        ihave=(), iwant=(), graft=(), prune=(ControlPrune(topic=T, peers=(), backoff=60),)
    )
    graft = ControlMessage(ihave=(), iwant=(), graft=(ControlGraft(topic=T),), prune=())
    # encoded here so the attacker's writer cannot merge them into one RPC
    _inject(attacker, victim, encode(Rpc(subscriptions=(), messages=(), control=prune)))
    for _ in range(10):
        _inject(attacker, victim, encode(Rpc(subscriptions=(), messages=(), control=graft)))
    await until(victim, lambda: not victim.is_connected(attacker.peer_id), 10)
    assert attacker.peer_id not in victim.router.mesh_peers(T)
    await _honest_traffic(nursery, honest, subs, 8)


async def test_unknown_topics_are_ignored(nursery, autojump_clock):
    honest, subs, attacker = await _mesh(nursery, 4)
    msg = sign(PubsubMessage(topic=topic("nobody-listens"), data=b"?", seqno=1), attacker.identity)
    _inject(attacker, honest[0], Rpc(subscriptions=(), messages=(encode(msg),), control=None))
    await _honest_traffic(nursery, honest, subs, 4)
    assert honest[0].is_connected(attacker.peer_id)


async def test_garbage_handshakes_do_not_hurt_the_listener(nursery, autojump_clock):
    network = MemoryNetwork()
    (host,) = await start_hosts(nursery, 1, network=network)
    transport = MemoryTransport(network)
    for junk in [b"", b"x" * 31, os.urandom(32), os.urandom(200)]:
        conn = await transport.dial(nursery, host.listen_addrs[0])
        await conn.send_frame(junk)
        await conn.send_frame(os.urandom(96))
        await conn.aclose()
    (peer,) = await start_hosts(nursery, 1, network=network, first=77)
    assert await peer.connect(host.listen_addrs[0]) == host.peer_id


async def test_half_open_connection_flood_is_bounded(nursery, autojump_clock):
    network = MemoryNetwork()
    (host,) = await start_hosts(
        nursery, 1, network=network, make_config=lambda i: config(i, max_pending_handshakes=4)
    )
    transport = MemoryTransport(network)
    silent = [await transport.dial(nursery, host.listen_addrs[0]) for _ in range(10)]
    await trio.sleep(0.01)
    assert host._pending_handshakes == 4  # the other six were dropped at once
    (peer,) = await start_hosts(nursery, 1, network=network, first=88)
    await trio.sleep(host.config.handshake_timeout + 1)  # the silent ones time out
    assert host._pending_handshakes == 0
    assert await peer.connect(host.listen_addrs[0]) == host.peer_id
    for conn in silent:
        await conn.aclose()
