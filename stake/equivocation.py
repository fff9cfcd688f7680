"""Equivocation: a worker that signed two receipts computing different results for one
assignment is slashed like a convicted worker.

No committee is needed: the two signatures are the proof (pouw's
:func:`~aipg.pouw.validate_equivocation`). Evidence is accepted while the assignment is
younger than the unbonding period, so a worker cannot unbond before it is punished, and
once per assignment.
"""

from __future__ import annotations

from collections.abc import Iterable

from aipg.pouw import EquivocationEvidence, PouwError, validate_equivocation

from .money import slash
from .state import State
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
