"""Topic validators: the cheap checks every message passes before gossip forwards it.

Each topic has one check that decodes the message and runs the pure checks of
:mod:`aipg.pouw` and :mod:`aipg.stake` (signatures, bindings, chain id). A check raises
``WireError`` / ``PouwError`` / ``LedgerError`` for a message that must be rejected (the
forwarder loses score) and :class:`Stale` for one that is well-formed but of no use now
(dropped quietly). Consumers then act only on what was accepted.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aipg.gossip import PubsubMessage, ValidationResult
from aipg.models import ModelError, check_announcement
from aipg.pouw import (
    Job,
    PouwError,
    Verdict,
    validate_assignment,
    validate_job,
    validate_receipt,
)
from aipg.stake.block import FinalizedBlock, ProposalMessage, Vote
from aipg.stake.tx import Transaction
from aipg.stake.types import LedgerError
from aipg.wire import PeerId, WireError, decode, is_signed_by_signer

from .messages import WorkerStatus, WorkReport

log = logging.getLogger("aipg.node.gossip")

ACCEPT, REJECT, IGNORE = ValidationResult.ACCEPT, ValidationResult.REJECT, ValidationResult.IGNORE

Check = Callable[[bytes], object]
Validator = Callable[[PeerId, PubsubMessage], Awaitable[ValidationResult]]


class Stale(Exception):
    """A well-formed message that is of no use now (it is dropped, not punished)."""


def check_report(report: WorkReport) -> None:
    """Cheap checks of a work report (signatures and bindings); raises PouwError."""
    validate_job(report.job)
    validate_assignment(report.assignment, report.job)
    validate_receipt(report.result.receipt, report.job, report.assignment)


def topic_checks(chain_id: str) -> dict[str, Check]:
    """The check of each topic (by short name) for a node of chain ``chain_id``."""

    def consensus(data: bytes) -> None:
        msg = decode(data, (ProposalMessage, Vote, FinalizedBlock))
        if isinstance(msg, FinalizedBlock):  # its commit is verified before it is used
            if msg.block.header.chain_id != chain_id:
                raise WireError("finalized block of another chain")
            return
        signed = msg.proposal if isinstance(msg, ProposalMessage) else msg
        if signed.chain_id != chain_id:
            raise WireError("consensus message of another chain")
        if not is_signed_by_signer(signed):
            raise WireError("bad signature on a consensus message")

    def txs(data: bytes) -> None:
        if decode(data, Transaction).chain_id != chain_id:
            raise WireError("transaction of another chain")

    def jobs(data: bytes) -> None:
        validate_job(decode(data, Job))

    def receipts(data: bytes) -> None:
        check_report(decode(data, WorkReport))

    def verdicts(data: bytes) -> None:
        if not is_signed_by_signer(decode(data, Verdict)):
            raise WireError("bad signature on a verdict")

    def workers(data: bytes) -> None:
        if not is_signed_by_signer(decode(data, WorkerStatus)):
            raise WireError("bad signature on a worker status")

    def models(data: bytes) -> None:
        try:
            check_announcement(data)
        except ModelError as e:
            raise WireError(str(e)) from None

    return {
        "consensus": consensus,
        "txs": txs,
        "jobs": jobs,
        "receipts": receipts,
        "verdicts": verdicts,
        "models": models,
        "workers": workers,
    }


def topic_validator(check: Check) -> Validator:
    """A gossip validator that runs ``check`` on each message's data."""

    async def validate(_forwarder: PeerId, msg: PubsubMessage) -> ValidationResult:
        try:
            check(msg.data)
        except (WireError, PouwError, LedgerError) as e:
            log.debug("rejected a message on %s: %s", msg.topic, e)
            return REJECT
        except Stale:
            return IGNORE
        return ACCEPT

    return validate
