"""The paid tier's escrow rules: a paid job is paid only from its own client's escrow,
covering its fee, and costs its client only the tokens its worker generated."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aipg.stake.ledger import apply_block
from aipg.stake.proposal import Candidates, prepare_block
from aipg.stake.state import escrow_key
from aipg.stake.tokenomics import split_reward
from aipg.stake.tx import TxKind, make_tx
from aipg.stake.types import LedgerError
from aipg.stake.useful_work import fee_charged
from aipg.testing.chainkit import (
    AIPG,
    CHAIN,
    TestChain,
    ident,
    make_certificate,
    make_fraud,
    make_review,
)


def _chain() -> TestChain:
    c = TestChain(n_validators=5)
    for _ in range(3):
        c.next()
    return c


def _escrow(c: TestChain, payer, job_id: bytes, amount: int):
    nonce = c.state.account(payer.address.raw).nonce
    return make_tx(payer, CHAIN, TxKind.ESCROW, nonce, amount=amount, job_id=job_id)


def test_an_escrow_from_another_account_does_not_pay_a_paid_job():
    c = _chain()
    alice, mallory = c.users[0], c.users[1]
    cert = make_certificate(c, ident(300), fee=2 * AIPG, client=alice)
    c.next(transactions=[_escrow(c, mallory, cert.receipt.job_id, 2 * AIPG)])
    with pytest.raises(
        LedgerError, match=r"certificate 0: paid job .* has no escrow from its client"
    ):
        apply_block(c.state, c.build(certificates=[cert]))
    # The client's own escrow is not blocked by the stranger's, and is the one that pays.
    c.next(transactions=[_escrow(c, alice, cert.receipt.job_id, 2 * AIPG)])
    s = c.next(certificates=[cert])
    assert set(s.escrows) == {escrow_key(cert.receipt.job_id, mallory.address.raw)}
    assert s.balance(ident(300).address) >= fee_charged(cert.job, cert.receipt) > 0


def test_an_escrow_smaller_than_the_fee_does_not_pay_a_paid_job():
    c = _chain()
    cert = make_certificate(c, ident(300), fee=2 * AIPG)
    c.next(transactions=[_escrow(c, c.users[0], cert.receipt.job_id, 2 * AIPG - 1)])
    with pytest.raises(LedgerError, match="escrow of 199999999 does not cover the job's fee"):
        apply_block(c.state, c.build(certificates=[cert]))


def test_a_paid_job_without_an_escrow_is_left_out_until_its_escrow_lands():
    """D31: such a certificate pays nobody from anyone else's money; a proposer leaves it
    out, and it becomes includable once the client's escrow is on chain."""
    c = _chain()
    cert = make_certificate(c, ident(300), fee=AIPG)
    with pytest.raises(LedgerError, match="has no escrow from its client"):
        apply_block(c.state, c.build(certificates=[cert]))
    proposer = c.keys[c.state.validators.proposer()]
    prepared = prepare_block(
        c.state,
        proposer,
        Candidates(certificates=[cert]),
        time_ms=c.state.time_ms + 1_000,
        last_commit=c.last_commit(),
    )
    assert prepared.block.body.certificates == ()
    assert [reason for _, reason in prepared.refused] == [
        f"certificate 0: paid job {cert.receipt.job_id.hex()[:16]} has no escrow from its "
        f"client {c.users[0].address}"
    ]
    # Escrow and certificate in one block: transactions apply first.
    escrow = _escrow(c, c.users[0], cert.receipt.job_id, AIPG)
    s = c.next(transactions=[escrow], certificates=[cert])
    assert cert.receipt.job_id in s.certified and not s.escrows


def test_a_free_job_is_never_paid_from_an_escrow():
    c = _chain()
    cert = make_certificate(c, ident(300))  # free tier, fee 0
    c.next(transactions=[_escrow(c, c.users[0], cert.receipt.job_id, AIPG)])
    s = c.next(certificates=[cert])
    assert s.escrows[escrow_key(cert.receipt.job_id, c.users[0].address.raw)].amount == AIPG
    with pytest.raises(LedgerError, match="already certified"):
        apply_block(s, c.build(transactions=[_escrow(c, c.users[1], cert.receipt.job_id, 1)]))


def test_fraud_on_a_paid_job_refunds_the_clients_whole_escrow():
    c = _chain()
    worker, alice = c.users[1], c.users[0]
    c.next(transactions=[make_tx(worker, CHAIN, TxKind.BOND, 0, amount=1_000 * AIPG)])
    fraud = make_fraud(c, worker, fee=AIPG, output_tokens=1)
    c.next(transactions=[_escrow(c, alice, fraud.receipt.job_id, AIPG + 5)])
    before = c.state.balance(alice.address)
    c.next(frauds=[fraud])
    s = c.next(reviews=[make_review(c, fraud)])
    slashed = 1_000 * AIPG * s.params.fraud_slash_bps // 10_000
    refund = slashed * s.params.fraud_refund_bps // 10_000
    assert s.balance(alice.address) == before + AIPG + 5 + refund
    assert not s.escrows


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    price=st.integers(1, 10**9),
    max_tokens=st.integers(1, 512),
    data=st.data(),
    surplus=st.integers(0, 10**8),
)
def test_the_worker_is_paid_for_its_output_tokens_and_the_rest_returns(
    price, max_tokens, data, surplus
):
    c = TestChain(n_validators=4, economy=True)
    c.next(transactions=c.economy_txs())
    c.next()
    alice, worker = c.users[0], ident(300)
    tokens = data.draw(st.integers(1, max_tokens), label="output_tokens")
    fee = price * max_tokens
    cert = make_certificate(c, worker, fee=fee, max_tokens=max_tokens, output_tokens=tokens)
    c.next(transactions=[_escrow(c, alice, cert.receipt.job_id, fee + surplus)])
    alice_before, pool_before = c.state.balance(alice.address), c.state.work_pool
    s = c.next(certificates=[cert])
    charged = fee_charged(cert.job, cert.receipt)
    assert charged == price * tokens  # exactly the price of what was generated
    pool = pool_before + split_reward(s.params, s.params.block_reward).work  # all to this job
    assert s.balance(alice.address) == alice_before + fee + surplus - charged
    assert s.balance(worker.address) == s.paid[cert.receipt.job_id] == charged + pool
    assert not s.escrows
    assert s.total_holdings() == s.expected_supply()
