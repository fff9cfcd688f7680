"""Convictions are reviewed before anyone is slashed.

Real signed records on a real ledger: fraud evidence opens a conviction; a review
committee, seeded by the block that carried it and without the accusers when anyone
else is left, upholds it (the worker is slashed) or overturns it (the accusers are);
undecided, it expires and nobody is.
"""

from __future__ import annotations

import pytest

from aipg.pouw import FraudReview, PouwError, receipt_id, review_committee, validate_review
from aipg.stake.ledger import apply_block
from aipg.stake.tx import TxKind, make_tx
from aipg.stake.types import LedgerError
from aipg.testing.chainkit import (
    AIPG,
    CHAIN,
    TestChain,
    make_certificate,
    make_fraud,
    make_review,
)
from aipg.testing.world import signed_verdict


def _chain(n_validators: int = 4) -> TestChain:
    c = TestChain(n_validators=n_validators)
    for _ in range(3):
        c.next()
    return c


def _bonded_worker(c: TestChain, i: int = 1):
    worker = c.users[i]
    c.next(transactions=[make_tx(worker, CHAIN, TxKind.BOND, 0, amount=1_000 * AIPG)])
    return worker


def test_fraud_evidence_slashes_nobody_until_its_review_upholds_it():
    c = _chain()
    worker = _bonded_worker(c)
    fraud = make_fraud(c, worker, nonce=1)
    s = c.next(frauds=[fraud])
    assert receipt_id(fraud.receipt) in s.convictions
    assert s.bond(worker.public_bytes).stake == 1_000 * AIPG
    s = c.next(reviews=[make_review(c, fraud, upheld=True)])
    assert s.bond(worker.public_bytes).stake < 1_000 * AIPG
    assert not s.convictions
    with pytest.raises(LedgerError, match="no open conviction"):
        apply_block(s, c.build(reviews=[make_review(c, fraud)]))


def test_an_overturned_conviction_slashes_the_accusers_not_the_worker():
    """Two of five members accuse an honest worker (2/5 > 1/3: evidence); reviewers
    drawn from the others find the receipt valid: the accusers lose their bonds' share."""
    c = _chain(n_validators=8)  # enough validators for reviewers other than the accusers
    worker = _bonded_worker(c)
    honest = make_certificate(c, worker, nonce=2)
    accusers = sorted(v.signer for v in honest.verdicts)[:2]
    false = make_fraud(c, worker, nonce=2).replace(
        verdicts=tuple(signed_verdict(c.keys[k], honest.receipt, False) for k in accusers)
    )
    s = c.next(frauds=[false])
    review = make_review(c, false, upheld=False)
    assert not {v.signer for v in review.verdicts} & set(accusers)  # an independent look
    bonds = {k: s.bond(k).stake for k in accusers}
    s = c.next(reviews=[review])
    assert s.bond(worker.public_bytes).stake == 1_000 * AIPG
    cut = s.params.false_accusation_slash_bps
    assert all(s.bond(k).stake == bonds[k] - bonds[k] * cut // 10_000 for k in accusers)


def test_an_undecided_review_expires_and_nobody_is_slashed():
    c = _chain()
    worker = _bonded_worker(c)
    fraud = make_fraud(c, worker, nonce=3)
    c.next(frauds=[fraud])
    height = c.state.height
    split = make_review(c, fraud)
    half = len(split.verdicts) // 2  # half say valid, half invalid: 2/3 neither way
    mixed = FraudReview(
        fraud,
        tuple(
            signed_verdict(c.keys[v.signer], fraud.receipt, i < half)
            for i, v in enumerate(split.verdicts)
        ),
    )
    validators = c.state.validator_snapshot_at(height)
    with pytest.raises(PouwError, match="neither side holds 2/3"):
        validate_review(mixed, validators, c.state.beacon_at(height))
    for _ in range(c.state.params.review_period + 1):
        s = c.next()
    assert not s.convictions
    assert s.bond(worker.public_bytes).stake == 1_000 * AIPG


def test_reviewers_are_drawn_by_the_block_that_carried_the_evidence():
    c = _chain(n_validators=10)
    fraud = make_fraud(c, _bonded_worker(c), nonce=4)
    validators = c.state.validator_snapshot_at(c.state.height)
    first = {v.signer for v in fraud.verdicts}
    a = review_committee(fraud, validators, b"\x01" * 32, c.state.params.committee_size)
    b = review_committee(fraud, validators, b"\x02" * 32, c.state.params.committee_size)
    assert not first & set(a.candidates) and not first & set(b.candidates)
    assert a.candidates != b.candidates  # another block, other reviewers
