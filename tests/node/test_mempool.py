"""The mempool against a real ledger: nonces without gaps, reordered gossip, and
custodial escrows that survive a nonce taken from elsewhere."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aipg.node.services.mempool import MAX_QUEUED_PER_ACCOUNT, Mempool
from aipg.stake.state import escrow_key
from aipg.stake.tx import TxKind, make_tx
from aipg.stake.types import LedgerError
from aipg.testing.chainkit import AIPG, CHAIN, TestChain


def _job(i: int) -> bytes:
    return i.to_bytes(32, "big")


def _pool(c: TestChain) -> Mempool:
    return Mempool(c.state, c.validators[0].public_bytes)


def _escrows(n: int, payer, start: int = 0, amount: int = AIPG):
    return [
        make_tx(payer, CHAIN, TxKind.ESCROW, start + i, amount=amount, job_id=_job(start + i))
        for i in range(n)
    ]


def test_signed_escrows_take_consecutive_nonces_and_a_refused_one_takes_none():
    c = TestChain()
    pool, alice = _pool(c), c.users[0]
    for i in range(5):
        tx = pool.sign(alice, CHAIN, TxKind.ESCROW, amount=AIPG, job_id=_job(i))
        assert tx.nonce == i
    with pytest.raises(LedgerError, match="cannot pay"):
        pool.sign(alice, CHAIN, TxKind.ESCROW, amount=10**9 * AIPG, job_id=_job(9))
    with pytest.raises(LedgerError, match="already has an escrow from this account"):
        pool.sign(alice, CHAIN, TxKind.ESCROW, amount=AIPG, job_id=_job(0))
    assert pool.next_nonce(alice.address.raw) == 5
    assert pool.sign(alice, CHAIN, TxKind.ESCROW, amount=AIPG, job_id=_job(5)).nonce == 5


@settings(max_examples=40, deadline=None)
@given(order=st.permutations(range(8)))
def test_gossip_in_any_order_pools_every_transaction_in_nonce_order(order):
    c = TestChain()
    pool, alice = _pool(c), c.users[0]
    txs = _escrows(8, alice)
    for i in order:
        pool.offer(txs[i])
    assert [tx.nonce for tx in pool.transactions()] == list(range(8))
    s = c.next(transactions=pool.transactions())
    assert pool.settle(s, pool.transactions()) == [] and len(pool) == 0
    assert s.account(alice.address.raw).nonce == 8


def test_a_nonce_taken_from_elsewhere_is_re_signed_and_stale_transactions_leave():
    c = TestChain()
    pool, alice, bob = _pool(c), c.users[0], c.users[1]
    mine = [pool.sign(alice, CHAIN, TxKind.ESCROW, amount=AIPG, job_id=_job(i)) for i in range(3)]
    bobs = make_tx(bob, CHAIN, TxKind.TRANSFER, 0, amount=1, recipient=alice.address)
    pool.offer(bobs)
    # Alice's key also signed a transfer elsewhere (her own wallet), and a block took it.
    elsewhere = make_tx(alice, CHAIN, TxKind.TRANSFER, 0, amount=1, recipient=bob.address)
    s = c.next(transactions=[elsewhere, bobs])

    resigned = pool.settle(s, [elsewhere, bobs])

    assert [(tx.job_id, tx.nonce) for tx in resigned] == [(_job(i), i + 1) for i in range(3)]
    assert pool.transactions() == resigned and bobs not in resigned
    s = c.next(transactions=pool.transactions())
    assert {escrow_key(_job(i), alice.address.raw) for i in range(3)} <= set(s.escrows)
    assert pool.settle(s, resigned) == [] and pool.next_nonce(alice.address.raw) == 4
    assert mine[0].nonce == 0  # the originals are gone with their nonces


def test_a_strangers_transaction_below_its_nonce_is_dropped_and_the_next_one_stays():
    c = TestChain()
    pool, bob = _pool(c), c.users[1]
    first, second = _escrows(2, bob)
    pool.offer(first)
    pool.offer(second)
    replaced = make_tx(bob, CHAIN, TxKind.TRANSFER, 0, amount=1, recipient=bob.address)
    s = c.next(transactions=[replaced])  # bob's nonce 0 went to another transaction
    assert pool.settle(s, [replaced]) == []  # not ours to re-sign
    assert pool.transactions() == [second]  # nonce 1 is bob's next: it still applies
    assert pool.next_nonce(bob.address.raw) == 2


def test_the_queue_for_an_account_is_bounded():
    c = TestChain()
    pool, bob = _pool(c), c.users[1]
    txs = _escrows(MAX_QUEUED_PER_ACCOUNT + 10, bob)
    for tx in txs[1:]:
        pool.offer(tx)  # all ahead of nonce 0
    pool.offer(txs[0])
    assert len(pool) == MAX_QUEUED_PER_ACCOUNT + 1
    forged = txs[-1].replace(nonce=10**6)
    pool.offer(forged)  # a bad signature never waits in the queue
    assert not pool.escrow_pending(forged.job_id, bob.address.raw)
    assert pool.next_nonce(bob.address.raw) == MAX_QUEUED_PER_ACCOUNT + 1
