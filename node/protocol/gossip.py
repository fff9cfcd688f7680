"""Topic validators: the cheap checks every message passes before gossip forwards it.

Each topic has one check that decodes the message and runs the pure checks of
:mod:`aipg.pouw` and :mod:`aipg.stake` (signatures, bindings, chain id, and what the
node's own chain and work tracker can tell). A check raises ``WireError`` /
``PouwError`` / ``LedgerError`` for a message that must be rejected (the forwarder loses
score) and :class:`Stale` for one that is well-formed but of no use now (dropped
quietly, not forwarded). Consumers then act only on what was accepted, so nothing is
forwarded that this node could have found false:

- a finalized block for the next height is forwarded only with a commit certificate
  of the current validator set; one for a height we have, or too far ahead to check,
  is dropped (sync fetches those, verifying every commit);
- a vote or proposal at the height being decided must come from a current validator;
- a verdict on a receipt this node tracks must come from a candidate of its committee
  (or, once fraud is decided, from a validator that may review it); one on a receipt
  not seen yet must at least come from a current validator; a vote that contradicts
  its member's commitment is forwarded all the same: it never counts, but with the
  member's other vote it is conflicting-verdict evidence (D37) every node must see;
- a verdict commitment passes the same membership checks; a withholding challenge must
  come from a validator, and its answer is checked by the block that carries it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

from aipg.gossip import PubsubMessage, ValidationResult
from aipg.models import ModelError, check_announcement
from aipg.pouw import (
    Job,
    PouwError,
    StreamEvidence,
    Verdict,
    VerdictCommit,
    validate_assignment,
    validate_job,
    validate_receipt,
    validate_stream_evidence,
)
from aipg.pouw.forced import ForcedError
from aipg.stake.block import FinalizedBlock, ProposalMessage, Vote
from aipg.stake.challenge import ChallengeAnswer, WithholdingChallenge
from aipg.stake.ledger import verify_commit
from aipg.stake.state import State
from aipg.stake.tx import Transaction
from aipg.stake.types import LedgerError
from aipg.wire import PeerId, WireError, decode, is_signed_by_signer

from .checked import CheckedMessages
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


class NodeView(Protocol):
    """What the checks read of the node: its finalized state and the committees of the
    receipts its tracker follows."""

    @property
    def state(self) -> State: ...

    def may_vote(self, receipt_id: bytes, signer: bytes) -> bool | None:
        """Whether ``signer`` may vote on the receipt (its committee, or its review
        once fraud is decided); None for a receipt this node does not track."""
        ...


def check_finalized_block(fb: FinalizedBlock, state: State) -> None:
    """A finalized block gossiped to help nodes that are behind: worth forwarding only
    when it is the next block and carries a commit of the current validator set."""
    height = fb.block.height
    if fb.block.header.chain_id != state.chain_id:
        raise WireError("finalized block of another chain")
    if height != state.height + 1:
        raise Stale(f"finalized block {height} (we are at {state.height})")
    verify_commit(fb.commit, state.validators, state.chain_id, height, fb.block.hash)


def topic_checks(
    chain_id: str,
    node: NodeView,
    checked: CheckedMessages | None = None,
    ahead: Callable[[int], None] | None = None,
) -> dict[str, Check]:
    """The check of each topic (by short name) for a node of chain ``chain_id``;
    consensus messages that pass go into ``checked`` (decoded and verified once).
    ``ahead(height)`` hears of a block on ``blocks`` too far ahead to check (the node
    is behind: it syncs, verifying every commit)."""
    forwarded = [0]  # the last height whose block went on from here on "blocks"

    def consensus(data: bytes) -> None:
        msg = decode(data, (ProposalMessage, Vote, FinalizedBlock))
        if isinstance(msg, FinalizedBlock):
            check_finalized_block(msg, node.state)
            return
        signed = msg.proposal if isinstance(msg, ProposalMessage) else msg
        if signed.chain_id != chain_id:
            raise WireError("consensus message of another chain")
        if not is_signed_by_signer(signed):
            raise WireError("bad signature on a consensus message")
        state = node.state
        if signed.signer not in state.validators:
            if signed.height == state.height + 1:
                raise WireError("consensus message from a non-validator")
            raise Stale("consensus message from outside the current validator set")
        if checked is not None:
            checked.add(data, msg, signed)

    def blocks(data: bytes) -> None:
        # D102: one copy of each block goes on from each node, whoever sent it: the
        # next block with a commit of the current set, or the one we just finalized
        # (by its hash: a validator that decided it forwards it to the followers)
        fb = decode(data, FinalizedBlock)
        state = node.state
        height = fb.block.height
        if height <= forwarded[0]:
            raise Stale(f"block {height} already forwarded")
        if height == state.height and height and fb.block.hash == state.block_hash_at(height):
            if fb.block.header.chain_id != chain_id:  # pragma: no cover (the hash binds it)
                raise WireError("finalized block of another chain")
            forwarded[0] = height
            return
        if height > state.height + 1:
            if ahead is not None and fb.block.header.chain_id == chain_id:
                ahead(height)
            raise Stale(f"block {height} is ahead of us ({state.height}): sync fetches it")
        check_finalized_block(fb, state)
        forwarded[0] = height

    def txs(data: bytes) -> None:
        if decode(data, Transaction).chain_id != chain_id:
            raise WireError("transaction of another chain")

    def jobs(data: bytes) -> None:
        validate_job(decode(data, Job))

    def receipts(data: bytes) -> None:
        # a work report, or a gateway's evidence that a stream contradicted one (D85)
        msg = decode(data, (WorkReport, StreamEvidence))
        if isinstance(msg, StreamEvidence):
            validate_stream_evidence(msg)
        else:
            check_report(msg)

    def verdicts(data: bytes) -> None:
        # a vote, its commitment, or a withholding challenge and its answer
        verdict = decode(
            data, (Verdict, VerdictCommit, WithholdingChallenge, ChallengeAnswer, ForcedError)
        )
        if isinstance(verdict, ForcedError):  # a block checks it in full (D75)
            if not is_signed_by_signer(verdict.receipt):
                raise WireError("bad signature on a forced error's receipt")
            return
        if not is_signed_by_signer(verdict):
            raise WireError("bad signature on a verdict")
        if isinstance(verdict, ChallengeAnswer):
            return  # the worker's; a block checks it against the open challenge
        if isinstance(verdict, WithholdingChallenge):
            if verdict.signer not in node.state.validators:
                raise Stale("a challenge from outside the validator set")
            return
        allowed = node.may_vote(verdict.receipt_id, verdict.signer)
        if allowed is False:
            raise PouwError("verdict.signer", "not a candidate of the receipt's committee")
        if allowed is None and verdict.signer not in node.state.validators:
            raise Stale("verdict from outside the validator set on a receipt not seen yet")

    # statuses and announcements that pass are kept in ``checked`` too: the consumer
    # takes them decoded and checked (D103)
    def workers(data: bytes) -> None:
        status = decode(data, WorkerStatus)
        if not is_signed_by_signer(status):
            raise WireError("bad signature on a worker status")
        if checked is not None:
            checked.add(data, status, status)

    def models(data: bytes) -> None:
        try:
            announcement = check_announcement(data)
        except ModelError as e:
            raise WireError(str(e)) from None
        if checked is not None:
            checked.add(data, announcement, announcement)

    return {
        "consensus": consensus,
        "txs": txs,
        "jobs": jobs,
        "receipts": receipts,
        "verdicts": verdicts,
        "models": models,
        "workers": workers,
        "blocks": blocks,
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
