"""Equivocation evidence: two receipts one worker signed for one assignment."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aipg.pouw import (
    EquivocationEvidence,
    PouwError,
    computes_differently,
    receipt_id,
    validate_equivocation,
)
from aipg.testing.world import World, identity
from aipg.wire import sign

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
