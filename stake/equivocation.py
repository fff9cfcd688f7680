"""Equivocation, by workers and by committee members.

- A worker that signed two receipts computing different results for one assignment is
  slashed like a convicted worker (``fraud_slash_bps``), once per assignment.
- A worker that signed a streamed chunk its own receipt contradicts (D85) is slashed
  the same way, once per assignment, and that assignment's receipt is never paid.
- A validator that signed two different votes on one receipt is slashed and jailed like
  a double signer in consensus (``double_sign_slash_bps``, ``jail_period``), once per
  receipt: a member that votes both ways lets each side count it, so one job could be
  both paid and its worker slashed.

No committee is needed: the two signatures are the proof (pouw's
:func:`~aipg.pouw.validate_equivocation` and
:func:`~aipg.pouw.validate_conflicting_verdicts`).
"""

from __future__ import annotations

from collections.abc import Iterable

from aipg.pouw import (
    ConflictingVerdicts,
    EquivocationEvidence,
    PouwError,
    StreamEvidence,
    validate_conflicting_verdicts,
    validate_equivocation,
    validate_stream_evidence,
)

from .money import slash
from .state import Bond, State
from .types import LedgerError


def process_equivocations(s: State, evidence: Iterable[EquivocationEvidence]) -> None:
    """Check each piece of evidence and slash its worker's bond (burned)."""
    for i, ev in enumerate(evidence):
        key = check_equivocation(s, ev, i)
        s.put("punished", key, s.height)
        s.burned += slash(s, ev.receipt_a.signer, s.params.fraud_slash_bps)


def check_equivocation(s: State, ev: EquivocationEvidence, i: int = 0) -> bytes:
    """The evidence's punishment key; LedgerError naming the rule it breaks."""
    try:
        validate_equivocation(ev)
    except PouwError as e:
        raise LedgerError(f"equivocation {i}: {e}") from None
    key = b"equivocation" + ev.receipt_a.assignment_id
    if key in s.punished:
        raise LedgerError(f"equivocation {i}: this equivocation was already punished")
    return key


def junk_stream_key(assignment_id: bytes) -> bytes:
    """The ``punished`` key of an assignment whose stream contradicted its receipt."""
    return b"junkstream" + bytes(assignment_id)


def process_junk_streams(s: State, evidence: Iterable[StreamEvidence]) -> None:
    """Check each piece of evidence (D85), slash its worker's bond (burned) and mark the
    assignment: its receipt is refused as a certificate or claim from now on, and a claim
    of it waiting for its audit draw is dropped unpaid (D79, D85)."""
    for i, ev in enumerate(evidence):
        key = check_junk_stream(s, ev, i)
        s.put("punished", key, s.height)
        claim = s.claims.get(ev.receipt.job_id)
        if claim is not None and claim.worker == bytes(ev.receipt.signer):
            s.put("claims", ev.receipt.job_id, None)
        s.burned += slash(s, ev.receipt.signer, s.params.fraud_slash_bps)


def check_junk_stream(s: State, ev: StreamEvidence, i: int = 0) -> bytes:
    """The evidence's punishment key; LedgerError naming the rule it breaks."""
    try:
        validate_stream_evidence(ev)
    except PouwError as e:
        raise LedgerError(f"junk stream {i}: {e}") from None
    key = junk_stream_key(ev.receipt.assignment_id)
    if key in s.punished:
        raise LedgerError(f"junk stream {i}: this stream was already punished")
    return key


def process_conflicting_verdicts(s: State, evidence: Iterable[ConflictingVerdicts]) -> None:
    """Check each piece of evidence; slash (burned) and jail the validator that voted
    both ways."""
    for i, ev in enumerate(evidence):
        key = check_conflicting_verdicts(s, ev, i)
        s.put("punished", key, s.height)
        offender = ev.verdict_a.signer
        s.burned += slash(s, offender, s.params.double_sign_slash_bps)
        b = s.bond(offender)
        if b.stake:
            s.put("bonds", offender, Bond(b.stake, s.height + s.params.jail_period))


def check_conflicting_verdicts(s: State, ev: ConflictingVerdicts, i: int = 0) -> bytes:
    """The evidence's punishment key; LedgerError naming the rule it breaks."""
    try:
        validate_conflicting_verdicts(ev)
    except PouwError as e:
        raise LedgerError(f"conflicting verdicts {i}: {e}") from None
    key = b"verdicts" + ev.verdict_a.signer + ev.verdict_a.receipt_id
    if key in s.punished:
        raise LedgerError(f"conflicting verdicts {i}: already punished")
    return key
