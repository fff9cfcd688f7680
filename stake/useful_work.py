"""Useful work in a block: PoUW certificates pay their escrows, fraud evidence slashes.

Both are checked with pouw's cheap validation against the validator set the job's
committee was drawn from (:func:`check_work`).

A paid-tier job is paid only from its own escrow: the one its ``client`` locked under
its job id, covering its ``fee`` (:func:`job_escrow`). The fee is the most the job may
cost (``max_tokens`` times the price); the worker is paid for the output tokens its
receipt counts and the rest goes back to the payer (:func:`fee_charged`).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

from aipg.pouw import (
    COMMITTEE_DELAY,
    Certificate,
    FraudEvidence,
    FraudReview,
    Job,
    PouwError,
    Receipt,
    Tier,
    receipt_id,
    validate_appeal,
    validate_assignment,
    validate_certificate,
    validate_fraud_evidence,
    validate_job,
    validate_receipt,
)
from aipg.wire import Address

from .assign import drawn_workers, record_capacity, record_miss
from .audit import audit_rate, check_appeal, is_claim, on_certified, open_claim
from .models import certified_work
from .money import credit
from .pool import WorkItem
from .reveal import commitments, forget_counted
from .review import open_conviction, process_reviews
from .state import ClaimRow, Escrow, State, escrow_key
from .types import LedgerError
from .verdict_rewards import agree


def process_certificates(
    s: State, certificates: Iterable[Certificate], delivered: dict[bytes, int] | None = None
) -> dict[bytes, WorkItem]:
    """Check each certificate, settle a paid job's escrow (the fee for its output to the
    worker, the rest back to the payer), and return the work certified in this block:
    job id -> WorkItem (worker account, work units by the model's registered cost, never
    the receipt's own figure, and the gateway). A certificate without verdicts is a
    claim (:mod:`.audit`): recorded for its audit draw, paid nothing yet.
    ``delivered`` (worker key -> units) is what unaudited claims delivered this block."""
    work: dict[bytes, WorkItem] = {}
    delivered = dict(delivered or {})  # worker key -> work units paid in this block
    snapshots: dict[int, dict[bytes, int]] = {}
    for i, cert in enumerate(certificates):
        if is_claim(cert):
            try:
                process_claim(s, cert, snapshots)
            except (LedgerError, PouwError) as e:
                raise LedgerError(f"claim {i}: {e}") from None
            continue
        try:  # every check before the first write: a refused certificate changes nothing
            check_work(s, cert, snapshots, _certificate_without_challenges)
            job = cert.receipt.job_id
            if job in s.certified:
                raise LedgerError(f"job {job.hex()[:16]} was already certified")
            if b"junkstream" + bytes(cert.receipt.assignment_id) in s.punished:
                raise LedgerError("its worker streamed tokens its receipt contradicts (D85)")
            escrow = job_escrow(s, cert.job, job) if cert.job.tier == Tier.PAID else None
            units = certified_work(s, cert.job, cert.receipt)
        except (LedgerError, PouwError) as e:
            raise LedgerError(f"certificate {i}: {e}") from None
        # The members checked the job's real cost, whoever was drawn (D72).
        agree(s, cert.verdicts, True, units)
        forget_counted(s, receipt_id(cert.receipt), cert.verdicts)
        if not drawn_for_pool(s, cert.job, cert.receipt):
            if job not in s.claims:  # (a claim recorded its miss already)
                record_miss(s, cert.job, cert.receipt.signer, units)  # (D97)
            units = 0  # routed past the draw: its fee only (D64)
        work[job] = settle_job(s, cert.job, cert.receipt, escrow, units)
        on_certified(s, job, bytes(cert.receipt.signer))  # the audit record (D80)
        delivered[cert.receipt.signer] = delivered.get(cert.receipt.signer, 0) + units
    record_capacity(s, delivered)  # measured capacity (D58)
    return work


def process_claim(s: State, cert: Certificate, snapshots) -> None:
    """Check a claim (a certificate without verdicts) as a certificate is checked, but for
    the votes, and record it for its audit draw (D79). Raises LedgerError or PouwError."""
    check_work(s, cert, snapshots, _claim_checks)
    jid = cert.receipt.job_id
    if jid in s.certified:
        raise LedgerError(f"job {jid.hex()[:16]} was already certified")
    if b"fraud" + jid in s.punished:
        raise LedgerError(f"job {jid.hex()[:16]} has fraud evidence against it")
    if b"junkstream" + bytes(cert.receipt.assignment_id) in s.punished:
        raise LedgerError("its worker streamed tokens its receipt contradicts (D85)")
    escrow = job_escrow(s, cert.job, jid) if cert.job.tier == Tier.PAID else None
    units = certified_work(s, cert.job, cert.receipt)
    missed = 0
    if not drawn_for_pool(s, cert.job, cert.receipt):
        missed, units = units, 0
    charged = fee_charged(cert.job, cert.receipt) if escrow is not None else 0
    worker = bytes(cert.receipt.signer)
    row = ClaimRow(
        receipt_id=receipt_id(cert.receipt),
        height=s.height,
        worker=worker,
        gateway=bytes(cert.job.signer),
        units=units,
        escrow=escrow_key(jid, escrow.payer) if escrow is not None else b"",
        charged=charged,
        rate_bps=audit_rate(s, worker, charged),
        audited=0,
        deadline=certification_deadline(s, cert.job.deadline_ms),
    )
    open_claim(s, cert, row.receipt_id, row)
    record_miss(s, cert.job, worker, missed)  # the drawn worker missed it (D97)


def _claim_checks(cert: Certificate, validators, beacon, **_) -> None:
    """What a claim must pass: the job, the assignment and the receipt, signed and bound
    together (no verdicts: the committee speaks only if the claim is audited)."""
    validate_job(cert.job)
    validate_assignment(cert.assignment, cert.job)
    validate_receipt(cert.receipt, cert.job, cert.assignment)


def settle_job(s: State, job: Job, receipt: Receipt, escrow: Escrow | None, units: int) -> WorkItem:
    """Mark the job certified and pay a paid job's fee for its output from ``escrow``
    (the rest back to the payer); returns its WorkItem (``units`` for the pool)."""
    jid = receipt.job_id
    s.put("certified", jid, certification_deadline(s, job.deadline_ms))
    worker = Address.from_public_key(receipt.signer).raw
    if escrow is not None:
        charged = fee_charged(job, receipt)
        s.put("escrows", escrow_key(jid, escrow.payer), None)
        credit(s, worker, charged)
        credit(s, escrow.payer, escrow.amount - charged)
        s.paid[jid] = charged
    return WorkItem(worker, units, job.signer, receipt.signer)


def drawn_for_pool(s: State, job: Job, receipt: Receipt) -> bool:
    """Whether ``job`` done by ``receipt``'s worker may earn from the work pool (D64): its
    worker is the one the chain drew for it (:func:`~.assign.drawn_workers`), or nobody
    registered for its model is eligible (then no draw exists and budgets alone bound
    it). A job a gateway routed to anyone else, its own worker above all, is paid its fee
    only, and its units raise no measured capacity."""
    ranked = drawn_workers(s, job)
    return not ranked or ranked[0] == bytes(receipt.signer)


def job_escrow(s: State, job: Job, jid: bytes) -> Escrow:
    """The escrow that pays paid-tier ``job`` (id ``jid``): its client's, covering its
    fee. Raises LedgerError naming the rule it breaks. An escrow another account locked
    under the same job id pays nothing (that account can reclaim it)."""
    escrow = s.escrows.get(escrow_key(jid, job.client))
    if escrow is None:
        raise LedgerError(
            f"paid job {jid.hex()[:16]} has no escrow from its client {Address(job.client)}"
        )
    if escrow.amount < job.fee:
        raise LedgerError(
            f"paid job {jid.hex()[:16]}: the escrow of {escrow.amount} does not cover "
            f"the job's fee of {job.fee}"
        )
    return escrow


def fee_charged(job: Job, receipt: Receipt) -> int:
    """What a paid job costs its client: its fee pro rata to the output tokens the
    receipt counts (``fee`` is ``max_tokens`` times the price per token; certified
    receipts count 1 … ``max_tokens`` tokens), or the whole fee for an image (its steps
    are fixed in advance). Never more than ``job.fee``."""
    if job.llm is None:
        return job.fee
    tokens = min(receipt.output_tokens, job.llm.max_tokens)
    return job.fee * tokens // job.llm.max_tokens


# Blocks check every signature that authorizes something (job, assignment, receipt,
# verdicts) but not the verdicts' challenges: those were checked when the verdicts were
# collected from gossip, and a challenge grants nothing its verdict's signature does not.
_certificate_without_challenges = functools.partial(validate_certificate, check_challenges=False)
_fraud_without_challenges = functools.partial(validate_fraud_evidence, check_challenges=False)
_appeal_without_challenges = functools.partial(validate_appeal, check_challenges=False)


def check_work(s: State, cert: Certificate | FraudEvidence, snapshots, validate) -> None:
    """Run pouw's cheap validation of a certificate or fraud evidence against the
    committee its job's commitment drew (D56): the beacon and validator set of the
    block ``COMMITTEE_DELAY`` after the one that committed the job. Raises LedgerError
    or PouwError."""
    jid = cert.receipt.job_id
    if not 0 <= cert.assignment.height < s.height:
        raise LedgerError(f"assignment height {cert.assignment.height} is not a finalized block")
    if s.height - cert.assignment.height > s.params.escrow_period:
        raise LedgerError(f"assignment at height {cert.assignment.height} is too old")
    if s.time_ms > certification_deadline(s, cert.job.deadline_ms):
        raise LedgerError("the job's deadline passed too long ago to be certified")
    committed = s.commitments.get(jid)
    if committed is None:
        raise LedgerError(f"job {jid.hex()[:16]} was never committed (COMMIT or ESCROW)")
    seed_height = committee_seed_height(committed)
    if seed_height >= s.height:
        raise LedgerError(
            f"the committee of job {jid.hex()[:16]} is drawn by block {seed_height}: "
            "not final before this block"
        )
    beacon = s.beacon_at(seed_height)
    epoch = s.epoch_of(seed_height)
    snapshot = snapshots.get(epoch)
    if snapshot is None:
        snapshot = s.validator_snapshot_at(seed_height)
        if snapshot is None or beacon is None:
            raise LedgerError(f"no validator set or beacon is kept for height {seed_height}")
        snapshots[epoch] = snapshot
    validate(
        cert,
        snapshot,
        beacon,
        committee_size=s.params.job_committee_size(),
        committed=commitments(s, jid),
        rules=s.params.job_committee_rules(),
    )


def committee_seed_height(committed_at: int) -> int:
    """The block whose beacon and validator set draw the committee (and the worker) of
    a job committed at ``committed_at`` (D56)."""
    return committed_at + COMMITTEE_DELAY


def certification_deadline(s: State, job_deadline_ms: int) -> int:
    """The last block time at which a job can be certified (or its fraud proven): its
    deadline plus the escrow period. After it, its ``certified`` entry can be forgotten."""
    return job_deadline_ms + s.params.escrow_period * s.params.target_block_time_ms


def process_reviewed(s: State, reviews: Iterable[FraudReview]) -> dict[bytes, WorkItem]:
    """Decide each review (:func:`.review.process_reviews`) and pay the jobs of the
    convictions overturned as if certified now: a paid job's fee from its escrow (when
    its client has not reclaimed it), and their work units for the work pool. A job
    that another receipt already got certified is not paid twice."""
    work: dict[bytes, WorkItem] = {}
    for ev in process_reviews(s, reviews):
        jid = ev.receipt.job_id
        if jid in s.certified:
            continue
        escrow = s.escrows.get(escrow_key(jid, ev.job.client)) if ev.job.tier == Tier.PAID else None
        try:
            units = certified_work(s, ev.job, ev.receipt)
        except LedgerError:
            units = 0  # its model's cost or limits refuse the counts: the fee only
        if not drawn_for_pool(s, ev.job, ev.receipt):
            units = 0
        work[jid] = settle_job(s, ev.job, ev.receipt, escrow, units)
        claim = s.claims.get(jid)
        if claim is not None and claim.receipt_id == receipt_id(ev.receipt):
            on_certified(s, jid, bytes(ev.receipt.signer))  # an audit the review passed
    return work


def process_frauds(s: State, frauds: Iterable[FraudEvidence]) -> None:
    """Open a conviction for each piece of fraud evidence: nobody is slashed until a
    review decides it (:mod:`.review`); a paid job's escrow returns to its client."""
    snapshots: dict[int, dict[bytes, int]] = {}
    for i, ev in enumerate(frauds):
        try:
            if ev.verdicts:
                check_work(s, ev, snapshots, _fraud_without_challenges)
            else:  # an appeal of an audit its committee left undecided (D96)
                check_appeal(s, ev.receipt.job_id, receipt_id(ev.receipt))
                check_work(s, ev, snapshots, _appeal_without_challenges)
        except (LedgerError, PouwError) as e:
            raise LedgerError(f"fraud evidence {i}: {e}") from None
        key = b"fraud" + ev.receipt.job_id
        if key in s.punished:
            raise LedgerError(f"fraud evidence {i}: this fraud was already punished")
        s.put("punished", key, s.height)
        open_conviction(s, ev)
        forget_counted(s, receipt_id(ev.receipt), ev.verdicts)
