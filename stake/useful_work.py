"""Useful work in a block: PoUW certificates pay their escrows, fraud evidence slashes.

Both are checked with pouw's cheap validation against the validator set the job's
committee was drawn from (:func:`check_work`).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

from aipg.pouw import (
    COMMITTEE_LOOKAHEAD,
    Certificate,
    FraudEvidence,
    PouwError,
    validate_certificate,
    validate_fraud_evidence,
)
from aipg.wire import Address

from .money import credit, slash
from .state import State
from .types import LedgerError, bps_of


def process_certificates(
    s: State, certificates: Iterable[Certificate]
) -> dict[bytes, tuple[bytes, int]]:
    """Check each certificate, pay its escrow to the worker, and return the work
    certified in this block: job id -> (worker account, work units)."""
    work: dict[bytes, tuple[bytes, int]] = {}
    snapshots: dict[int, dict[bytes, int]] = {}
    for i, cert in enumerate(certificates):
        try:
            check_work(s, cert, snapshots, _certificate_without_challenges)
        except (LedgerError, PouwError) as e:
            raise LedgerError(f"certificate {i}: {e}") from None
        job = cert.receipt.job_id
        if job in s.certified:
            raise LedgerError(f"certificate {i}: job {job.hex()[:16]} was already certified")
        s.put("certified", job, certification_deadline(s, cert.job.deadline_ms))
        worker = Address.from_public_key(cert.receipt.signer).raw
        escrow = s.escrows.get(job)
        if escrow is not None:  # the paid tier: the locked fee goes to the worker
            s.put("escrows", job, None)
            credit(s, worker, escrow.amount)
            s.paid[job] = escrow.amount
        work[job] = (worker, cert.receipt.work_units)
    return work


# Blocks check every signature that authorizes something (job, assignment, receipt,
# verdicts) but not the verdicts' challenges: those were checked when the verdicts were
# collected from gossip, and a challenge grants nothing its verdict's signature does not.
_certificate_without_challenges = functools.partial(validate_certificate, check_challenges=False)
_fraud_without_challenges = functools.partial(validate_fraud_evidence, check_challenges=False)


def check_work(s: State, cert: Certificate | FraudEvidence, snapshots, validate) -> None:
    """Run pouw's cheap validation of a certificate or fraud evidence against the
    validator set its committee was drawn from. Raises LedgerError or PouwError."""
    seed_height = cert.assignment.height - COMMITTEE_LOOKAHEAD
    if not 0 <= seed_height < s.height:
        raise LedgerError(f"committee seed height {seed_height} is not a finalized block")
    if s.height - cert.assignment.height > s.params.escrow_period:
        raise LedgerError(f"assignment at height {cert.assignment.height} is too old")
    if s.time_ms > certification_deadline(s, cert.job.deadline_ms):
        raise LedgerError("the job's deadline passed too long ago to be certified")
    epoch = s.epoch_of(seed_height)
    snapshot = snapshots.get(epoch)
    if snapshot is None:
        snapshot = s.validator_snapshot_at(seed_height)
        if snapshot is None:
            raise LedgerError(f"no validator set is kept for height {seed_height}")
        snapshots[epoch] = snapshot
    validate(cert, snapshot, s.block_hash_at, committee_size=s.params.committee_size)


def certification_deadline(s: State, job_deadline_ms: int) -> int:
    """The last block time at which a job can be certified (or its fraud proven): its
    deadline plus the escrow period. After it, its ``certified`` entry can be forgotten."""
    return job_deadline_ms + s.params.escrow_period * s.params.target_block_time_ms


def process_frauds(s: State, frauds: Iterable[FraudEvidence]) -> None:
    """Slash each convicted worker's bond; refund the job's escrow to its payer together
    with a share of what was slashed; burn the rest."""
    snapshots: dict[int, dict[bytes, int]] = {}
    for i, ev in enumerate(frauds):
        try:
            check_work(s, ev, snapshots, _fraud_without_challenges)
        except (LedgerError, PouwError) as e:
            raise LedgerError(f"fraud evidence {i}: {e}") from None
        key = b"fraud" + ev.receipt.job_id
        if key in s.punished:
            raise LedgerError(f"fraud evidence {i}: this fraud was already punished")
        s.put("punished", key, s.height)
        slashed = slash(s, ev.receipt.signer, s.params.fraud_slash_bps)
        escrow = s.escrows.get(ev.receipt.job_id)
        refund = 0
        if escrow is not None:
            s.put("escrows", ev.receipt.job_id, None)
            refund = bps_of(slashed, s.params.fraud_refund_bps)
            credit(s, escrow.payer, escrow.amount + refund)
        s.burned += slashed - refund
