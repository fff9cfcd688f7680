"""Blocks carrying PoUW certificates and fraud evidence: payment, escrow, slashing."""

import pytest

from aipg.pouw import FraudEvidence
from aipg.stake.ledger import apply_block
from aipg.stake.tokenomics import split_reward
from aipg.stake.tx import TxKind, make_tx
from aipg.stake.types import LedgerError
from aipg.testing.chainkit import (
    AIPG,
    CHAIN,
    TestChain,
    ident,
    make_certificate,
    make_fraud,
    make_review,
)


def _chain(n=5):
    c = TestChain(n_validators=n, economy=True)
    c.next(transactions=c.economy_txs())
    for _ in range(2):
        c.next()
    return c


def test_certificates_pay_work_units_and_escrow():
    c = _chain()
    w1, w2 = ident(300), ident(301)
    alice = c.users[0]
    cert1 = make_certificate(c, w1, nonce=1, fee=3 * AIPG)  # 5 of 16 tokens generated
    cert2 = make_certificate(c, w2, nonce=2)
    escrow = make_tx(alice, CHAIN, TxKind.ESCROW, 0, amount=3 * AIPG, job_id=cert1.receipt.job_id)
    c.next(transactions=[escrow])
    pool_before, burned_before = c.state.work_pool, c.state.burned
    alice_before = c.state.balance(alice.address)
    s = c.next(certificates=[cert1, cert2])
    u1, u2 = cert1.receipt.work_units, cert2.receipt.work_units
    pool = pool_before + split_reward(s.params, 500 * AIPG).work
    charged = 3 * AIPG * 5 // 16
    assert s.balance(w1.address) == charged + pool * u1 // (u1 + u2)
    assert s.balance(w2.address) == pool * u2 // (u1 + u2)
    assert s.balance(alice.address) == alice_before + 3 * AIPG - charged
    dust = pool - pool * u1 // (u1 + u2) - pool * u2 // (u1 + u2)
    assert s.work_pool == 0 and s.burned == burned_before + dust  # D61: nothing carried
    assert s.paid[cert1.receipt.job_id] == charged + pool * u1 // (u1 + u2)
    assert not s.escrows
    with pytest.raises(LedgerError, match="already certified"):
        apply_block(s, c.build(certificates=[cert2]))


def test_bad_certificates_are_rejected_with_the_failed_rule():
    c = _chain()
    cert = make_certificate(c, ident(300))
    c.next()
    short = cert.replace(verdicts=cert.verdicts[:2])
    with pytest.raises(LedgerError, match="certificate 0: quorum"):
        apply_block(c.state, c.build(certificates=[short]))
    forged = cert.replace(receipt=cert.receipt.replace(work_units=cert.receipt.work_units + 1))
    with pytest.raises(LedgerError, match=r"certificate 0: receipt\.signature"):
        apply_block(c.state, c.build(certificates=[forged]))
    outsider = make_certificate(c, ident(300), nonce=9)
    future = outsider.replace(assignment=outsider.assignment.replace(height=c.state.height + 5))
    with pytest.raises(LedgerError, match="not a finalized block"):
        apply_block(c.state, c.build(certificates=[future]))
    with pytest.raises(LedgerError, match=r"certificate 1: job .* already certified"):
        apply_block(c.state, c.build(certificates=[cert, cert]))


def test_fraud_slashes_the_worker_and_refunds_the_payer():
    c = _chain()
    worker, alice = c.users[1], c.users[0]
    c.next(transactions=[make_tx(worker, CHAIN, TxKind.BOND, 0, amount=1_000 * AIPG)])
    fraud = make_fraud(c, worker, fee=5 * AIPG)
    c.next(
        transactions=[
            make_tx(alice, CHAIN, TxKind.ESCROW, 0, amount=5 * AIPG, job_id=fraud.receipt.job_id)
        ]
    )
    alice_before = c.state.balance(alice.address)
    burned_before = c.state.burned
    s = c.next(frauds=[fraud])  # opens a conviction: nobody slashed, the escrow stays locked
    assert s.bond(worker.public_bytes).stake == 1_000 * AIPG
    assert s.balance(alice.address) == alice_before
    assert s.escrows  # until the review decides
    with pytest.raises(LedgerError, match="already punished"):
        apply_block(s, c.build(frauds=[fraud]))
    s = c.next(reviews=[make_review(c, fraud)])  # the review upholds it
    slashed = 1_000 * AIPG * s.params.fraud_slash_bps // 10_000
    refund = slashed * s.params.fraud_refund_bps // 10_000
    assert s.bond(worker.public_bytes).stake == 1_000 * AIPG - slashed
    assert s.balance(alice.address) == alice_before + 5 * AIPG + refund
    unpaid_pool = 2 * split_reward(s.params, s.params.block_reward).work  # 2 blocks, no work
    assert s.burned - burned_before == slashed - refund + unpaid_pool
    honest = make_certificate(c, worker, nonce=4)
    not_fraud = FraudEvidence(honest.job, honest.assignment, honest.receipt, honest.verdicts)
    with pytest.raises(LedgerError, match="fraud evidence 0: quorum"):
        apply_block(c.state, c.build(frauds=[not_fraud]))


def test_validator_set_and_block_hash_views_for_committees():
    c = _chain()
    s = c.state
    assert s.validator_snapshot_at(0) == {v.public_bytes: 10_000 * AIPG for v in c.validators}
    assert s.block_hash_at(0) == c.genesis.hash
    assert s.block_hash_at(s.height) == c.blocks[-1].hash
    assert s.block_hash_at(s.height + 1) is None
