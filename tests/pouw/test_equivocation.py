"""Equivocation evidence: two receipts one worker signed for one assignment, and two
votes one committee member signed on one receipt."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aipg.pouw import (
    ConflictingVerdicts,
    EquivocationEvidence,
    PouwError,
    VerdictReason,
    computes_differently,
    make_verdict,
    receipt_id,
    validate_conflicting_verdicts,
    validate_equivocation,
)
from aipg.testing.world import World, identity
from aipg.wire import sign
from aipg.wire.codec import record_digest

W = World()


def _pair(**change):
    job = W.llm_job()
    a = W.assignment(job)
    first = W.receipt(job, a)
    second = sign(first.replace(**change), W.worker)
    return tuple(sorted((first, second), key=receipt_id))


def test_two_results_for_one_assignment_are_equivocation():
    a, b = _pair(output_hash=b"\x09" * 32)
    validate_equivocation(EquivocationEvidence(a, b))


@settings(max_examples=50, deadline=None)
@given(elapsed=st.integers(0, 2**32 - 1), first=st.integers(0, 2**32 - 1))
def test_reporting_one_computation_twice_is_not_equivocation(elapsed, first):
    """An honest worker that re-ran an assignment (a restart) gets other timings only."""
    a, b = _pair(elapsed_ms=elapsed, first_output_ms=first)
    assert not computes_differently(a, b)
    if a != b:
        with pytest.raises(PouwError, match="one computation"):
            validate_equivocation(EquivocationEvidence(a, b))


def test_evidence_must_be_one_signer_one_assignment_in_order():
    a, b = _pair(commitment=b"\x07" * 32)
    with pytest.raises(PouwError, match="order"):
        validate_equivocation(EquivocationEvidence(b, a))
    framed = sign(b.replace(commitment=b"\x08" * 32), identity("someone else"))
    x, y = sorted((a, framed), key=receipt_id)
    with pytest.raises(PouwError, match="different signers"):
        validate_equivocation(EquivocationEvidence(x, y))
    other_job = W.llm_job(seed=99)
    elsewhere = W.receipt(other_job, W.assignment(other_job))
    x, y = sorted((a, elsewhere), key=receipt_id)
    with pytest.raises(PouwError, match="different assignments"):
        validate_equivocation(EquivocationEvidence(x, y))
    forged = b.replace(signature=bytes(64))
    x, y = sorted((a, forged), key=receipt_id)
    with pytest.raises(PouwError, match="signature"):
        validate_equivocation(EquivocationEvidence(x, y))


def _verdicts(first_reason, second_reason, second_signer=None):
    job = W.llm_job(seed=3)
    receipt = W.receipt(job, W.assignment(job))
    member = W.validators[0]
    a = make_verdict(member, receipt, first_reason, recomputed=b"one")
    b = make_verdict(second_signer or member, receipt, second_reason, recomputed=b"two")
    return tuple(sorted((a, b), key=record_digest))


def test_a_member_voting_both_ways_is_evidence():
    a, b = _verdicts(VerdictReason.OK, VerdictReason.TOKEN_MISMATCH)
    validate_conflicting_verdicts(ConflictingVerdicts(a, b))
    with pytest.raises(PouwError, match="digest order"):
        validate_conflicting_verdicts(ConflictingVerdicts(b, a))


def test_the_same_vote_twice_or_two_members_is_no_conflict():
    a, b = _verdicts(VerdictReason.OK, VerdictReason.OK)  # other check data, same vote
    with pytest.raises(PouwError, match="same vote"):
        validate_conflicting_verdicts(ConflictingVerdicts(a, b))
    a, b = _verdicts(VerdictReason.OK, VerdictReason.TOKEN_MISMATCH, W.validators[1])
    with pytest.raises(PouwError, match="different signers"):
        validate_conflicting_verdicts(ConflictingVerdicts(a, b))
