"""Hostile bytes: a block or sync answer mangled anywhere is rejected with WireError or
LedgerError, never another exception, and the state it was checked against is untouched."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aipg.stake.block import Block
from aipg.stake.ledger import apply_block
from aipg.stake.state import state_hash
from aipg.stake.tx import TxKind, make_tx
from aipg.stake.types import LedgerError
from aipg.testing.chainkit import CHAIN, TestChain, ident, make_certificate
from aipg.wire import WireError, decode, encode


@pytest.fixture(scope="module")
def world():
    c = TestChain(n_validators=5)
    for _ in range(3):
        c.next()
    alice, bob = c.users[0], c.users[1]
    txs = [make_tx(alice, CHAIN, TxKind.TRANSFER, 0, fee=5, amount=77, recipient=bob.address)]
    block = c.build(transactions=txs, certificates=[make_certificate(c, ident(300))])
    apply_block(c.state, block)  # the unmangled block is valid
    return c, encode(block)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_mangled_blocks_are_rejected_cleanly(world, data):
    c, good = world
    raw = bytearray(good)
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    before = state_hash(c.state)
    try:
        block = decode(bytes(raw), Block)
    except WireError:
        return
    try:  # a mangled header time or proposer can still make a valid block
        after = apply_block(c.state, block)
    except LedgerError as e:
        assert str(e)
    else:
        assert after.total_holdings() == after.expected_supply()
    assert state_hash(c.state) == before
