"""Convictions are reviewed before anyone is slashed.

Fraud evidence (more than a third of a committee's stake found a receipt invalid) only
opens a conviction: a block records it and nobody is slashed yet. A review committee,
drawn from the validators at that block with the block's hash as seed (so nobody could
pick it when the job was done), without the job's interested parties and the members
whose verdicts the evidence holds, re-checks the receipt:

- two thirds of its seated stake invalid **uphold** the conviction: the worker is
  slashed ``fraud_slash_bps``, its paid client refunded with ``fraud_refund_bps`` of it;
- two thirds valid **overturn** it: every accuser (an invalid verdict in the evidence)
  is slashed ``false_accusation_slash_bps``, and the worker keeps its bond;
- no decision within ``review_period`` blocks: the conviction expires and nobody is
  slashed (an undecided review convicts no one).

A paid client's escrow comes back when the conviction opens: the job was not certified.
"""

from __future__ import annotations

from collections.abc import Iterable

from aipg.pouw import (
    FraudEvidence,
    FraudReview,
    PouwError,
    Tier,
    abstains,
    receipt_id,
    validate_review,
)
from aipg.wire.codec import record_digest

from .money import credit, slash
from .state import Conviction, State, escrow_key
from .types import LedgerError, bps_of


def open_conviction(s: State, ev: FraudEvidence) -> None:
    """Block ``s.height`` carried ``ev``: record it for review, and return a paid job's
    escrow to its client (the job was not certified)."""
    s.put("convictions", receipt_id(ev.receipt), Conviction(record_digest(ev), s.height))
    key = escrow_key(ev.receipt.job_id, ev.job.client)
    escrow = s.escrows.get(key) if ev.job.tier == Tier.PAID else None
    if escrow is not None:
        s.put("escrows", key, None)
        credit(s, escrow.payer, escrow.amount)


def process_reviews(s: State, reviews: Iterable[FraudReview]) -> None:
    """Decide each reviewed conviction (see the module docstring)."""
    for i, review in enumerate(reviews):
        try:
            upheld = check_review(s, review)
        except (LedgerError, PouwError) as e:
            raise LedgerError(f"review {i}: {e}") from None
        ev = review.evidence
        s.put("convictions", receipt_id(ev.receipt), None)
        if upheld:
            convict(s, ev)
        else:
            exonerate(s, ev)


def check_review(s: State, review: FraudReview) -> bool:
    """Whether ``review`` upholds its open conviction; LedgerError or PouwError naming
    the rule it breaks."""
    ev = review.evidence
    row = s.convictions.get(receipt_id(ev.receipt))
    if row is None:
        raise LedgerError("no open conviction for this receipt (never opened, or decided)")
    if row.evidence_digest != record_digest(ev):
        raise LedgerError("the review is of other evidence than the conviction's")
    seed_hash = s.beacon_at(row.height)  # not the block hash: its proposer chose that
    validators = s.validator_snapshot_at(row.height)
    if seed_hash is None or validators is None:
        raise LedgerError(f"the validators of block {row.height} are no longer kept")
    return validate_review(
        review,
        validators,
        seed_hash,
        committee_size=s.params.committee_size,
        check_challenges=False,
        rules=s.params.committee_rules(),
    )


def expire_convictions(s: State) -> None:
    """Convictions no review decided within ``review_period`` blocks: nobody is
    slashed."""
    for rid, row in list(s.convictions.items()):
        if s.height - row.height > s.params.review_period:
            s.put("convictions", rid, None)


def convict(s: State, ev: FraudEvidence) -> None:
    """Slash the worker; a paid job's client gets ``fraud_refund_bps`` of it, the rest
    is burned."""
    slashed = slash(s, ev.receipt.signer, s.params.fraud_slash_bps)
    refund = bps_of(slashed, s.params.fraud_refund_bps) if ev.job.tier == Tier.PAID else 0
    if refund:
        credit(s, ev.job.client, refund)
    s.burned += slashed - refund


def exonerate(s: State, ev: FraudEvidence) -> None:
    """Slash every accuser (burned); the worker keeps its bond."""
    for verdict in ev.verdicts:
        if not verdict.valid and not abstains(verdict):
            s.burned += slash(s, verdict.signer, s.params.false_accusation_slash_bps)
