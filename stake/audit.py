"""Audit sampling: only a drawn share of claimed receipts is re-checked by a committee.

A worker (or anyone holding its report) puts the receipt on chain first as a **claim**: a
:class:`~aipg.pouw.Certificate` with no verdicts in a block's ``certificates`` (D79). The
ledger checks everything but verdicts (the job committed, its seed block final, the
signed job, assignment and receipt bound together, the counts within the registered
cost, a paid job's escrow) and records a :class:`~.state.ClaimRow` with the claim's
audit probability, fixed now. ``AUDIT_DELAY`` blocks later the beacon of that block,
which did not exist when the claim (and so the receipt) was fixed, draws the audit:

- **not audited**: the block pays the claim as if certified: its fee for its tokens from
  the escrow, its work units into the block's work pool (D64: only when the drawn
  worker did it), its units into measured capacity;
- **audited**: the row waits for a certificate (the committee path as before: commit,
  reveal, certificates, fraud evidence, reviews); a certificate raises the worker's
  record by the jobs the audit stands for (1 / its probability).

The probability (:func:`audit_rate`) is the larger of the worker's record rate (100 %
until ``audit_full_jobs`` certified audits, then (audit_full_jobs / score)^2, down to
``audit_floor_bps``) and the claim's worth rate: twice what the claim can earn over
what a conviction would slash, so that cheating never pays in expectation whatever the
record (D80). An upheld conviction resets the record (100 % again) and forfeits every
claim of the worker not yet paid (:func:`forfeit`). Fraud evidence on a claim paid
unaudited is still accepted until the job's certification deadline, and its review
slashes as for any job (D82).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

from aipg.pouw import Certificate, Job, Receipt, receipt_id
from aipg.wire import Address

from .money import credit
from .pool import WorkItem
from .state import AuditRecord, ClaimRow, State
from .tokenomics import split_reward
from .types import BPS, LedgerError

# The draw of a claim carried by block h uses the beacon of block h + AUDIT_DELAY: the
# proposer of h + 1 knows its own VRF output before it proposes, so h + 2 (as D56).
AUDIT_DELAY = 2
SAFETY = 2  # the expected slash of a claim is at least this times what it can earn
DRAW_TAG = b"audit/draw/1"


def is_claim(cert: Certificate) -> bool:
    """A certificate without verdicts is a claim (D79)."""
    return not cert.verdicts


def audit_draw(beacon: bytes, receipt_id: bytes) -> int:
    """The claim's draw in [0, BPS): audited when below its rate."""
    digest = hashlib.sha256(DRAW_TAG + beacon + receipt_id).digest()
    return int.from_bytes(digest[:8], "big") % BPS


def record_rate(s: State, worker: bytes) -> int:
    """The worker's audit probability from its record alone, in basis points."""
    p = s.params
    row = s.audit_records.get(worker)
    score = row.score if row is not None else 0
    if score < p.audit_full_jobs:
        return BPS
    return max(p.audit_floor_bps, BPS * p.audit_full_jobs**2 // score**2)


def worth_bound(s: State, charged: int) -> int:
    """The most one claim can earn: its fee plus at most the work pool of the block
    that pays it."""
    pool = split_reward(s.params, s.emission.block_reward(s.height + AUDIT_DELAY)).work
    return charged + pool


def audit_rate(s: State, worker: bytes, charged: int) -> int:
    """The audit probability of a claim by ``worker`` (basis points): its record rate,
    raised so that ``rate x slashable bond >= SAFETY x the claim's worth``."""
    slashable = s.bond(worker).stake * s.params.fraud_slash_bps // BPS
    if slashable <= 0:
        return BPS
    need = -(-SAFETY * worth_bound(s, charged) * BPS // slashable)
    return min(BPS, max(record_rate(s, worker), need))


def open_claim(s: State, cert: Certificate, rid: bytes, row: ClaimRow) -> None:
    """Record a checked claim (the caller checked it: :func:`~.useful_work.check_claim`)."""
    jid = cert.receipt.job_id
    if jid in s.claims:
        raise LedgerError(f"job {jid.hex()[:16]} is already claimed")
    s.put("claims", jid, row)


def process_draws(s: State) -> tuple[dict[bytes, WorkItem], dict[bytes, int]]:
    """Draw the audits of the claims carried ``AUDIT_DELAY`` blocks ago and pay those not
    audited; forget audited claims past their deadline. Returns (job id -> WorkItem for
    the work pool, worker key -> units delivered, for measured capacity)."""
    work: dict[bytes, WorkItem] = {}
    delivered: dict[bytes, int] = {}
    for jid, row in sorted(s.claims.items()):
        if row.audited or row.height + AUDIT_DELAY > s.height:
            if s.time_ms > row.deadline:
                s.put("claims", jid, None)  # audited and never certified in time
            continue
        if audit_draw(s.beacon, row.receipt_id) < row.rate_bps:
            s.put("claims", jid, row._replace(audited=1))
            continue
        s.put("claims", jid, None)
        work[jid] = pay_claim(s, jid, row)
        delivered[row.worker] = delivered.get(row.worker, 0) + row.units
    return work, delivered


def pay_claim(s: State, jid: bytes, row: ClaimRow) -> WorkItem:
    """Settle an unaudited claim as a certificate would (D79)."""
    s.put("certified", jid, row.deadline)
    worker = Address.from_public_key(row.worker).raw
    escrow = s.escrows.get(row.escrow) if row.escrow else None
    if escrow is not None:  # (its client cannot have reclaimed it: it is young)
        charged = min(row.charged, escrow.amount)
        s.put("escrows", row.escrow, None)
        credit(s, worker, charged)
        credit(s, escrow.payer, escrow.amount - charged)
        s.paid[jid] = charged
    return WorkItem(worker, row.units, row.gateway, row.worker)


def on_certified(s: State, jid: bytes, worker: bytes) -> None:
    """A certificate settled job ``jid``: its claim row goes, and the worker's record
    grows by the jobs the audit stands for (1 without a claim, or a claim not drawn)."""
    row = s.claims.get(jid)
    rate = row.rate_bps if row is not None and row.audited else BPS
    if row is not None:
        s.put("claims", jid, None)
    rec = s.audit_records.get(worker)
    score = (rec.score if rec is not None else 0) + BPS // max(1, rate)
    s.put("audit_records", worker, AuditRecord(score, s.height))


def forfeit(s: State, worker: bytes) -> None:
    """An upheld conviction of ``worker``: its record starts over (every claim audited
    again) and every claim of it not yet paid is forfeited: never paid, a paid job's
    escrow back to its client."""
    s.put("audit_records", worker, AuditRecord(0, s.height))
    for jid, row in sorted(s.claims.items()):
        if row.worker != worker:
            continue
        s.put("claims", jid, None)
        s.put("certified", jid, row.deadline)  # no certificate pays it later either
        escrow = s.escrows.get(row.escrow) if row.escrow else None
        if escrow is not None:
            s.put("escrows", row.escrow, None)
            credit(s, escrow.payer, escrow.amount)


def appeal_opens(s: State, jid: bytes, rid: bytes) -> int | None:
    """The first block that may carry an appeal of receipt ``rid`` of job ``jid`` (D96):
    ``audit_appeal_blocks`` after its audit draw; None when it cannot be appealed (the
    chain takes no appeals, or the receipt is not a claim drawn for audit and undecided:
    a certificate, a forfeit or the claim's deadline removed its row)."""
    row = s.claims.get(jid)
    if not s.params.audit_appeal_blocks or row is None or not row.audited:
        return None
    if row.receipt_id != rid:
        return None
    return row.height + AUDIT_DELAY + s.params.audit_appeal_blocks


def check_appeal(s: State, jid: bytes, rid: bytes) -> None:
    """Raise LedgerError unless block ``s.height`` may carry an appeal of ``rid``."""
    opens = appeal_opens(s, jid, rid)
    if opens is None:
        raise LedgerError(
            "only a claim drawn for audit and still undecided may be appealed (D96)"
            if s.params.audit_appeal_blocks
            else "this chain takes no appeals (audit_appeal_blocks is 0)"
        )
    if s.height < opens:
        raise LedgerError(f"its committee has until block {opens} to decide; appeal then")


def audit_status(s: State, jid: bytes) -> bool | None:
    """Whether job ``jid``'s claim was drawn for audit: True (audited, a committee must
    check it), False (claimed, its draw still pending), None (no claim on chain: paid,
    forfeited, or never claimed)."""
    row = s.claims.get(jid)
    if row is None:
        return None
    return bool(row.audited)


def audit_due(s: State, job: Job, receipt: Receipt) -> bool | None:
    """For a node: must the committee check ``receipt``? True when its claim was drawn
    for audit or its audit is certain (rate 100 %, now or when claimed); False when
    another receipt is claimed, its draw is pending below 100 %, or the job is settled;
    None when nothing is claimed yet and the audit is not certain."""
    jid = receipt.job_id
    row = s.claims.get(jid)
    if row is not None:
        if row.receipt_id != receipt_id(receipt):
            return False
        return bool(row.audited) or row.rate_bps >= BPS
    if jid in s.certified:
        return False
    if audit_rate(s, bytes(receipt.signer), job.fee) >= BPS:
        return True  # (the fee bounds what its tokens will cost)
    return None


def audited_claim(s: State, rid: bytes) -> bool:
    """Whether receipt ``rid`` is claimed and drawn for audit."""
    return any(r.receipt_id == rid and r.audited for r in s.claims.values())


def pending_claims(s: State, worker: bytes) -> Mapping[bytes, ClaimRow]:
    """The worker's claims not yet paid (what a conviction forfeits)."""
    return {j: r for j, r in s.claims.items() if r.worker == worker}
