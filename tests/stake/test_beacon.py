"""The block beacon (D55): verified VRF proofs, unique per proposer and parent beacon."""

from __future__ import annotations

import pytest

from aipg.pouw.records import hash_tagged
from aipg.pouw.vrf import proof_to_hash, prove
from aipg.stake.beacon import genesis_beacon
from aipg.stake.builder import make_block
from aipg.stake.chain import Chain
from aipg.stake.ledger import apply_block
from aipg.stake.tx import TxKind, make_tx
from aipg.stake.types import LedgerError
from aipg.testing.chainkit import CHAIN, TestChain, ident


def test_each_block_advances_the_beacon_by_its_proposers_vrf():
    c = TestChain(n_validators=4)
    assert c.state.beacon == genesis_beacon(c.genesis.hash) == c.state.beacon_at(0)
    seen = {c.state.beacon}
    for _ in range(6):
        before = c.state.beacon
        block = c.build()
        proposer = c.keys[block.header.proposer]
        s = c.commit(block)
        output = proof_to_hash(prove(proposer.seed, before))
        assert s.beacon == hash_tagged(b"beacon/1", before, output) == s.beacon_at(s.height)
        seen.add(s.beacon)
    assert len(seen) == 7


def test_the_block_contents_do_not_move_the_beacon():
    """Another time, other transactions: the same proposer makes the same beacon, so a
    proposer cannot grind its block for randomness it likes."""
    c = TestChain(n_validators=4)
    c.next()
    u = c.users[0]
    tx = make_tx(u, CHAIN, TxKind.TRANSFER, 0, amount=5, recipient=c.users[1].address)
    proposer = c.keys[c.state.validators.proposer()]
    a = make_block(c.state, proposer, time_ms=c.state.time_ms + 1, last_commit=c.last_commit())
    b = make_block(
        c.state,
        proposer,
        time_ms=c.state.time_ms + 777,
        last_commit=c.last_commit(),
        transactions=[tx],
    )
    assert a.hash != b.hash
    assert apply_block(c.state, a).beacon == apply_block(c.state, b).beacon


def test_a_block_without_a_valid_proof_is_refused():
    c = TestChain(n_validators=4)
    c.next()
    proposer_key = c.state.validators.proposer()
    proposer = c.keys[proposer_key]
    good = c.build()
    # no proof (a builder without the key)
    bare = make_block(
        c.state, proposer_key, time_ms=good.header.time_ms, last_commit=c.last_commit()
    )
    # another validator's proof, a proof over another input, bytes flipped
    other = next(v for v in c.validators if v.public_bytes != proposer_key)
    forged = [
        bare,
        good.replace(header=good.header.replace(vrf_proof=prove(other.seed, c.state.beacon))),
        good.replace(header=good.header.replace(vrf_proof=prove(proposer.seed, b"x" * 32))),
        good.replace(header=good.header.replace(vrf_proof=good.header.vrf_proof[:40] + bytes(40))),
    ]
    for block in forged:
        with pytest.raises(LedgerError, match="beacon proof is invalid"):
            apply_block(c.state, block)
    assert apply_block(c.state, good).height == c.state.height + 1
    # a stranger's valid proof does not make it the proposer either
    stranger = ident(12345)
    with pytest.raises(LedgerError, match="not a validator"):
        apply_block(
            c.state,
            make_block(c.state, stranger, time_ms=good.header.time_ms, last_commit=c.last_commit()),
        )


def test_beacons_survive_a_restart(tmp_path):
    c = TestChain(n_validators=4)
    for _ in range(5):
        c.next()
    chain = Chain.open(tmp_path / "chain.sqlite", c.genesis)
    for block, commit in zip(c.blocks, c.commits, strict=True):
        chain.finalize(block, commit)
    chain.close()
    chain = Chain.open(tmp_path / "chain.sqlite", c.genesis)
    assert chain.state.beacon == c.state.beacon
    assert [chain.state.beacon_at(h) for h in range(6)] == [c.state.beacon_at(h) for h in range(6)]
    chain.close()
