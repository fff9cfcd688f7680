"""Views of a gateway's jobs for the API (``GET /api/v1/jobs/{id}``) and /metrics: status,
receipt, committee, verdicts, certificate, block and reward, from the gateway's own table
and the work tracker."""

from __future__ import annotations

from typing import Any

from aipg.models import model_id_text
from aipg.pouw import Job, PouwError, Tier
from aipg.stake.models import certified_work
from aipg.stake.types import LedgerError
from aipg.wire import PeerId, format_amount

from .work import TrackedWork

# The gateway service and its job entries (not imported: gateway.py imports this module).
GatewayService = Any
GatewayJob = Any


def work_units(gateway: GatewayService, job: Job, receipt) -> int:
    """The units the ledger pays ``receipt`` by: its model's registered cost (D60; 0
    without one), not the receipt's own figure (which stays in the view's receipt)."""
    state = getattr(gateway.chain, "state", None)
    if state is None:
        return receipt.work_units
    try:
        return certified_work(state, job, receipt)
    except LedgerError:
        return 0


def job_view(gateway: GatewayService, job_id_text: str) -> dict | None:
    try:
        jid = bytes.fromhex(job_id_text)
    except ValueError:
        return None
    entry = gateway.jobs.get(jid)
    tracked = gateway.tracker.for_job(jid)
    if entry is None and tracked is None:
        return None
    job = entry.job if entry else tracked.report.job
    view: dict = {
        "id": jid.hex(),
        "model": model_id_text(job.model_id),
        "tier": "paid" if job.tier == Tier.PAID else "free",
        "fee": format_amount(job.fee),
        "status": _status_of(gateway, jid, entry, tracked),
        "receipt": None,
        "worker": None,
        "work_units": None,
        "committee": [],
        "verdicts": [],
        "certificate": None,
        "block_height": None,
        "reward": None,
    }
    if tracked is not None:
        receipt = tracked.report.result.receipt
        view["receipt"] = {
            "id": tracked.receipt_id.hex(),
            "worker": str(PeerId.from_public_key(receipt.signer)),
            "work_units": receipt.work_units,
            "output_hash": receipt.output_hash.hex(),
            "commitment": receipt.commitment.hex(),
            "elapsed_ms": receipt.elapsed_ms,
        }
        view["worker"] = view["receipt"]["worker"]
        view["work_units"] = work_units(gateway, job, receipt)
        view["committee"] = [str(PeerId.from_public_key(k)) for k in tracked.seated()]
        view["verdicts"] = [
            {
                "validator": str(PeerId.from_public_key(k)),
                "valid": v.valid,
                "reason": v.reason,
                "detail": v.detail,
            }
            for k, v in sorted(tracked.verdicts.items())
        ]
        if tracked.outcome is not None:
            view["certificate"] = {"kind": "certificate" if tracked.certified else "fraud_evidence"}
        view["block_height"] = tracked.block_height
        if tracked.set_aside:
            view["unpaid_reason"] = tracked.set_aside
        view["audit"] = (
            "not audited" if tracked.paid_unaudited else "audited" if tracked.audit_due else
            "claimed" if tracked.claim_height is not None else "pending"
        )  # fmt: skip
        if tracked.block_height is not None or tracked.paid_unaudited:
            paid = gateway.chain.work_paid(jid)
            view["reward"] = format_amount(paid) if paid is not None else None
    elif entry is not None and entry.report is not None:
        view["worker"] = str(PeerId.from_public_key(entry.report.result.receipt.signer))
    elif entry is not None and entry.early is not None:
        view["worker"] = str(PeerId.from_public_key(entry.early.signer))
    return view


def jobs_by_state(gateway: GatewayService) -> dict[str, int]:
    """How many of this gateway's jobs are in each state (for /metrics)."""
    out: dict[str, int] = {}
    for jid, entry in gateway.jobs.items():
        state = _status_of(gateway, jid, entry, gateway.tracker.for_job(jid))
        out[state] = out.get(state, 0) + 1
    return out


def _status_of(
    gateway: GatewayService, jid: bytes, entry: GatewayJob | None, tracked: TrackedWork | None
) -> str:
    if tracked is not None:
        if tracked.paid_unaudited:
            return "paid"  # its claim was drawn unaudited (D79)
        if tracked.block_height is not None:
            if tracked.certified:
                return "paid"
            review = tracked.review
            if review is None or not review.settled or review.upheld is None:
                return "reviewing"  # a conviction: nobody is slashed before its review
            if review.upheld:
                return "slashed"
            return "paid" if tracked.appealed else "exonerated"  # an appeal accused no one
        if tracked.set_aside:
            return "unpaid"  # decided, but no block can carry it (view: unpaid_reason)
        if tracked.outcome is not None:
            return "certified" if tracked.certified else "fraud"
        return "verifying"
    if entry is not None:
        if entry.failed:
            return "failed"
        if entry.report is not None:
            return "verifying"
        if entry.early is not None:
            return "signing"  # delivered; its receipt waits for the seed beacon (D94)
        try:
            return gateway.scheduler.state(jid).value
        except PouwError:
            return "unknown"
    return "unknown"
