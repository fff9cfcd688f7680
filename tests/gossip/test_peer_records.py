"""Signed peer records and the address book: verification, sequence numbers, bounds, persistence."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aipg.gossip.addrbook import AddressBook
from aipg.testing.gossipkit import identity
from aipg.wire import (
    Multiaddr,
    PeerRecord,
    WireError,
    decode,
    encode,
    make_peer_record,
    sign,
    verify_peer_record,
)

ADDR = Multiaddr.parse("/ip4/10.0.0.1/tcp/4001/ws")


def relayed(relay: int) -> Multiaddr:
    return Multiaddr.parse(
        f"/ip4/10.0.0.{relay}/tcp/4001/ws/p2p/{identity(relay).peer_id}/p2p-circuit"
    )


def test_a_record_round_trips_and_verifies():
    me = identity(1)
    rec = make_peer_record(me, 7, [ADDR.with_peer_id(me.peer_id), relayed(2)])
    back = verify_peer_record(decode(encode(rec), PeerRecord))
    assert back == rec and back.peer == me.peer_id and back.seq == 7
    dial = back.multiaddrs()
    assert dial[0] == ADDR.with_peer_id(me.peer_id)
    assert dial[1].is_relayed and dial[1].relay().peer_id == identity(2).peer_id
    assert dial[1].peer_id == me.peer_id


def test_a_record_signed_by_someone_else_is_refused():
    me, other = identity(1), identity(2)
    forged = sign(PeerRecord(peer_id=me.peer_id.raw, seq=9, addrs=(str(ADDR),)), other)
    with pytest.raises(WireError, match="wrong key"):
        verify_peer_record(forged)
    tampered = make_peer_record(me, 1, [ADDR]).replace(seq=2)
    with pytest.raises(WireError, match="bad signature"):
        verify_peer_record(tampered)
    assert not AddressBook().add(forged) and not AddressBook().add(tampered)


def test_non_canonical_addresses_are_refused():
    me = identity(1)
    rec = sign(PeerRecord(peer_id=me.peer_id.raw, seq=1, addrs=("/ip4/010.0.0.1/tcp/1/ws",)), me)
    with pytest.raises(WireError):
        verify_peer_record(rec)


def test_only_a_higher_seq_replaces_a_record():
    book = AddressBook(clock=lambda: 0.0)
    me = identity(1)
    assert book.add(make_peer_record(me, 5, [ADDR]))
    assert not book.add(make_peer_record(me, 5, [relayed(3)]))
    assert not book.add(make_peer_record(me, 4, [relayed(3)]))
    assert book.get(me.peer_id).seq == 5
    assert book.add(make_peer_record(me, 6, [relayed(3)]))
    assert book.dial_addrs(me.peer_id)[0].is_relayed


def test_the_book_is_bounded_and_evicts_the_worst_but_never_the_protected():
    book = AddressBook(capacity=3, clock=lambda: 0.0)
    peers = [identity(i) for i in range(1, 6)]
    for p in peers[:3]:
        book.add(make_peer_record(p, 1, [ADDR]))
    book.dial_failed(peers[1].peer_id, 1.0, 60.0)
    assert book.add(make_peer_record(peers[3], 1, [ADDR]), protect={peers[1].peer_id})
    assert peers[1].peer_id in book and len(book) == 3
    assert book.add(make_peer_record(peers[4], 1, [ADDR]))
    assert peers[1].peer_id not in book and len(book) == 3


def test_direct_addresses_come_first_and_bad_relays_are_skipped():
    t = [0.0]
    book = AddressBook(clock=lambda: t[0])
    me = identity(1)
    book.add(make_peer_record(me, 1, [relayed(2), relayed(3), ADDR]))
    assert [a.is_relayed for a in book.dial_addrs(me.peer_id)] == [False, True, True]
    book.relay_misbehaved(identity(2).peer_id, 300.0)
    relays = [a.relay().peer_id for a in book.dial_addrs(me.peer_id) if a.is_relayed]
    assert relays == [identity(3).peer_id]
    t[0] = 301.0
    assert len(book.dial_addrs(me.peer_id)) == 3


def test_dial_backoff_doubles_and_resets():
    t = [0.0]
    book = AddressBook(clock=lambda: t[0])
    me = identity(1)
    book.add(make_peer_record(me, 1, [ADDR]))
    book.dial_failed(me.peer_id, 1.0, 4.0)
    assert book.backoff_left(me.peer_id) == 1.0
    book.dial_failed(me.peer_id, 1.0, 4.0)
    book.dial_failed(me.peer_id, 1.0, 4.0)
    assert book.backoff_left(me.peer_id) == 4.0
    book.dial_ok(me.peer_id)
    assert book.backoff_left(me.peer_id) == 0.0


def test_the_book_survives_a_restart_and_ignores_a_damaged_file(tmp_path):
    path = tmp_path / "peers.bin"
    book = AddressBook(path=path, clock=lambda: 0.0)
    recs = [make_peer_record(identity(i), i, [ADDR]) for i in range(1, 4)]
    for r in recs:
        book.add(r)
    book.save()
    again = AddressBook(path=path, clock=lambda: 0.0)
    assert again.load() == 3
    assert {again.get(r.peer) for r in recs} == set(recs)
    path.write_bytes(b"\xc1 not msgpack")
    assert AddressBook(path=path).load() == 0


@given(st.binary(max_size=300))
def test_hostile_bytes_never_decode_into_a_valid_record(data):
    try:
        rec = decode(data, PeerRecord)
    except WireError:
        return
    with pytest.raises(WireError):
        verify_peer_record(rec)
