"""Convictions are reviewed before anyone is slashed.

Fraud evidence (more than a third of a committee's stake found a receipt invalid) only
opens a conviction: a block records it and nobody is slashed yet. A review committee,
drawn from the validators at that block with the block's hash as seed (so nobody could
pick it when the job was done), without the job's interested parties and the members
whose verdicts the evidence holds, re-checks the receipt:

- two thirds of its seated stake invalid **uphold** the conviction: the worker is
  slashed ``fraud_slash_bps``, its paid client refunded with ``fraud_refund_bps`` of it;
- two thirds valid **overturn** it: every accuser (an invalid verdict in the evidence)
  is slashed ``false_accusation_slash_bps``, the worker keeps its bond, and the job is
  paid as if certified in that block (its work-pool share, and a paid job's fee from
  its escrow: :func:`aipg.stake.useful_work.process_reviewed`);
- no decision within ``review_period`` blocks: the conviction expires and nobody is
  slashed (an undecided review convicts no one).

A paid job's escrow stays locked while its conviction is open: it returns to the
client when the conviction is upheld or expires, and pays the worker when it is
overturned.
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

from .audit import forfeit
from .money import credit, slash
from .reveal import forget_review, review_commitments
from .state import Conviction, State, escrow_key
from .types import LedgerError, bps_of
from .verdict_rewards import agree


def open_conviction(s: State, ev: FraudEvidence) -> None:
    """Block ``s.height`` carried ``ev``: record it for review (a paid job's escrow
    stays locked until the review decides)."""
    key = escrow_key(ev.receipt.job_id, ev.job.client) if ev.job.tier == Tier.PAID else b""
    s.put("convictions", receipt_id(ev.receipt), Conviction(record_digest(ev), s.height, key))


def return_escrow(s: State, ev: FraudEvidence) -> None:
    """A paid job that will not be paid: its client's escrow returns (when still there;
    the client may have reclaimed it)."""
    key = escrow_key(ev.receipt.job_id, ev.job.client)
    escrow = s.escrows.get(key) if ev.job.tier == Tier.PAID else None
    if escrow is not None:
        s.put("escrows", key, None)
        credit(s, escrow.payer, escrow.amount)


def process_reviews(s: State, reviews: Iterable[FraudReview]) -> list[FraudEvidence]:
    """Decide each reviewed conviction (see the module docstring); returns the evidence
    of the convictions overturned, whose jobs the caller pays."""
    overturned = []
    for i, review in enumerate(reviews):
        try:
            upheld = check_review(s, review)
        except (LedgerError, PouwError) as e:
            raise LedgerError(f"review {i}: {e}") from None
        ev = review.evidence
        s.put("convictions", receipt_id(ev.receipt), None)
        forget_review(s, receipt_id(ev.receipt))
        if upheld:
            convict(s, ev)
            return_escrow(s, ev)
            agree(s, ev.verdicts, False, ev.receipt.work_units)
        else:
            exonerate(s, ev)
            overturned.append(ev)
    return overturned


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
        committed=review_commitments(s, ev),
    )


def expire_convictions(s: State) -> None:
    """Convictions no review decided within ``review_period`` blocks: nobody is
    slashed."""
    for rid, row in list(s.convictions.items()):
        if s.height - row.height > s.params.review_period:
            s.put("convictions", rid, None)
            forget_review(s, rid)
            escrow = s.escrows.get(row.escrow) if row.escrow else None
            if escrow is not None:  # undecided: the job is not paid, its client is repaid
                s.put("escrows", row.escrow, None)
                credit(s, escrow.payer, escrow.amount)


def convict(s: State, ev: FraudEvidence) -> None:
    """Slash the worker; a paid job's client gets ``fraud_refund_bps`` of it, the rest
    is burned."""
    slashed = slash(s, ev.receipt.signer, s.params.fraud_slash_bps)
    refund = bps_of(slashed, s.params.fraud_refund_bps) if ev.job.tier == Tier.PAID else 0
    if refund:
        credit(s, ev.job.client, refund)
    s.burned += slashed - refund
    forfeit(s, bytes(ev.receipt.signer))  # its record starts over, its claims are lost


def exonerate(s: State, ev: FraudEvidence) -> None:
    """Slash every accuser (burned); the worker keeps its bond."""
    for verdict in ev.verdicts:
        if not verdict.valid and not abstains(verdict):
            s.burned += slash(s, verdict.signer, s.params.false_accusation_slash_bps)
