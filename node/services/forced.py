"""The worker's side of forced errors (D75, :mod:`aipg.pouw.forced`).

After an LLM job runs, the worker hands its gateway the true output at once (an
:class:`~aipg.node.protocol.messages.EarlyResult`, D94: the client does not wait for the
beacon), then waits for the beacon of the job's committee seed block
(β: final a couple of blocks after the job's commitment), proves its VRF over (β,
assignment id) and, when the chain's ``forced_error_bps`` makes the job forced, signs a
receipt whose last token carries the prescribed change. The committee gets that report;
the gateway gets a :class:`~aipg.node.protocol.messages.ForcedResult` (the report, the
proof and the true output) and answers its client with the true output.

Once the receipt's commit phase has closed on the finalized chain, the worker springs
the trap: a :class:`~aipg.pouw.forced.ForcedError` with the committee's revealed votes
that its node counted, offered for blocks (and gossiped); votes revealed later go in
another ForcedError (the ledger takes only votes not processed before).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import trio

from aipg.node.protocol.messages import ForcedResult, WorkReport
from aipg.pouw import COMMITTEE_DELAY, Assignment, Job, Result, Verdict, receipt_id
from aipg.pouw.bounds import evict_over
from aipg.pouw.forced import ForcedError, forceable, forced_output, forced_proof, is_forced
from aipg.pouw.records import output_hash_tokens
from aipg.wire import Identity, sign

log = logging.getLogger("aipg.node.forced")

BEACON_WAIT_BLOCKS = 40  # blocks a worker waits for its job's seed beacon before giving up
# D94: a gateway that delivered a worker's EarlyResult waits for its receipt until this
# many blocks after the job's seed beacon block (or, while the beacon is unknown to it,
# after BEACON_WAIT_BLOCKS from the delivery), then ends the job unpaid by it.
RECEIPT_DUE_BLOCKS = 8
GIVE_UP_BLOCKS = 400  # blocks after the assignment a trap waits for reveals (devnet: 100 s)
MAX_TRAPS = 1024  # forced receipts waiting to be sprung, oldest first


@dataclass
class _Trap:
    job: Job
    assignment: Assignment
    result: Result  # the forced one: what the committee checks
    proof: bytes
    true_tokens: tuple[int, ...]
    vocab: int
    carried: set[bytes] = field(default_factory=set)  # members whose votes a block carried
    offered: frozenset = frozenset()  # the members of the last ForcedError offered
    landed: bool = False  # a block carried one of its ForcedErrors


class ForcedErrors:
    """``chain`` reads the finalized chain (height, ``beacon_at``, ``committed_at``,
    ``forced_error_bps``, ``under_review``); ``votes_of(receipt id)`` are the counted verdicts this node
    holds, or None while members may not reveal yet (the tracker's ``reveal_open``);
    ``offer(forced_error)`` puts one up for blocks; ``track`` hands the committee's
    report to this node's own work tracker."""

    def __init__(
        self,
        identity: Identity,
        chain,
        votes_of: Callable[[bytes], dict[bytes, Verdict] | None],
        offer: Callable[[ForcedError], None],
        track: Callable[[WorkReport], Awaitable[None]] | None = None,
        *,
        skip: bool = False,
        never_sign: bool = False,
    ):
        self.identity = identity
        self.chain = chain
        self.votes_of = votes_of
        self.offer = offer
        self.track = track
        self.skip = skip  # test-only fault: never make the prescribed change
        self.never_sign = never_sign  # test-only fault: deliver early, never sign (D94)
        self.forced = 0  # jobs this worker found forced
        self.sprung = 0  # ForcedErrors offered
        self._block = trio.Event()
        self._traps: OrderedDict[bytes, _Trap] = OrderedDict()

    def on_block(self, block=None) -> None:
        for fe in () if block is None else block.body.forced_errors:
            trap = self._traps.get(receipt_id(fe.receipt))
            if trap is not None:
                trap.carried.update(v.signer for v in fe.verdicts)
                trap.landed = True
        self._block.set()
        self._block = trio.Event()
        self._spring()

    async def next_block(self) -> None:
        """Until this node finalizes its next block."""
        await self._block.wait()

    async def _beacon(self, job_id: bytes) -> bytes | None:
        start = self.chain.height
        while self.chain.height - start <= BEACON_WAIT_BLOCKS:
            committed = self.chain.committed_at(job_id)
            if committed is not None:
                beacon = self.chain.beacon_at(committed + COMMITTEE_DELAY)
                if beacon is not None:
                    return beacon
            await self._block.wait()
        return None

    def pending(self, job: Job, result: Result) -> bool:
        """Whether ``result``'s receipt must wait for the beacon (a job that may be
        forced): its output then goes to the gateway early, the receipt after (D94)."""
        return self.chain.forced_error_bps > 0 and forceable(job) and bool(result.output_token_ids)

    async def apply(
        self, job: Job, assignment: Assignment, result: Result, vocab: int
    ) -> tuple[Result, ForcedResult | None]:
        """The result the committee gets, and (for a forced job) what the gateway gets."""
        bps = self.chain.forced_error_bps
        if bps <= 0 or not forceable(job) or not result.output_token_ids:
            return result, None
        beacon = await self._beacon(job.id)
        if beacon is None:
            log.warning(
                "no seed beacon for job %s: not checking for a forced error", job.id.hex()[:12]
            )
            return result, None
        proof = forced_proof(self.identity.seed, beacon, assignment)
        if not is_forced(self.identity.public_bytes, proof, beacon, assignment, bps):
            return result, None
        self.forced += 1
        if self.skip:  # test-only fault: a worker that skips its forced error
            log.warning("FAULT: skipping the forced error of job %s", job.id.hex()[:12])
            return result, None
        tokens = forced_output(result.output_token_ids, vocab)
        receipt = sign(
            result.receipt.replace(output_hash=output_hash_tokens(tokens)), self.identity
        )
        forced = result.replace(receipt=receipt, output_token_ids=tokens)
        log.info("job %s is a forced error: its receipt carries the change", job.id.hex()[:12])
        self._traps[receipt_id(receipt)] = _Trap(
            job, assignment, forced, proof, tuple(result.output_token_ids), vocab
        )
        evict_over(self._traps, MAX_TRAPS)
        report = WorkReport(job, assignment, forced)
        if self.track is not None:
            await self.track(report)
        return forced, ForcedResult(
            report, proof, tuple(result.output_token_ids), result.text, vocab
        )

    def _spring(self) -> None:
        height = self.chain.height
        for rid, trap in list(self._traps.items()):
            if height - trap.assignment.height > GIVE_UP_BLOCKS:
                del self._traps[rid]
                continue
            votes = self.votes_of(rid)
            # An appeal (D96) sent the undecided receipt to a review, which would find
            # it wrong: the proof voids the review now, with whatever votes there are.
            appealed = not trap.landed and self.chain.under_review(rid)
            if votes is None and not appealed:
                continue  # the commit phase is not over: the proof must stay secret
            new = tuple(v for k, v in sorted((votes or {}).items()) if k not in trap.carried)
            if not new and not appealed:
                continue
            signers = frozenset(v.signer for v in new)
            if signers != trap.offered:
                trap.offered = signers
                self.sprung += 1
                log.info("springing the forced error of job %s", trap.job.id.hex()[:12])
            fe = ForcedError(
                trap.job,
                trap.assignment,
                trap.result.receipt,
                trap.proof,
                trap.true_tokens,
                trap.vocab,
                new,
            )
            self.offer(fe)  # again each block until one carries it (the tracker dedups)


MAX_OWED = 1024  # forced receipts this member owes its reveal on, oldest first (D95)


class OwedReveals:
    """A member's side of D95: once a block carries a ForcedError on a receipt this
    member committed on but whose vote it left out (a worker that omits an honest vote
    would otherwise have it slashed), offer another ForcedError carrying this member's
    own revealed vote, each block until one carries it or the ledger stops asking.

    ``owes(receipt id)`` says whether the finalized chain still awaits our reveal on it;
    ``votes_of`` and ``offer`` are as for :class:`ForcedErrors`."""

    def __init__(
        self,
        identity: Identity,
        owes: Callable[[bytes], bool],
        votes_of: Callable[[bytes], dict[bytes, Verdict] | None],
        offer: Callable[[ForcedError], None],
    ):
        self.identity = identity
        self.owes = owes
        self.votes_of = votes_of
        self.offer = offer
        self.offered = 0  # ForcedErrors offered with our own vote
        self._owed: OrderedDict[bytes, ForcedError] = OrderedDict()  # rid -> template

    def on_block(self, block) -> None:
        for fe in block.body.forced_errors:
            rid = receipt_id(fe.receipt)
            if rid not in self._owed and self.owes(rid):
                self._owed[rid] = fe.replace(verdicts=())
        evict_over(self._owed, MAX_OWED)
        me = self.identity.public_bytes
        for rid, template in list(self._owed.items()):
            if not self.owes(rid):  # carried, or judged
                del self._owed[rid]
                continue
            mine = (self.votes_of(rid) or {}).get(me)
            if mine is None:
                continue  # not revealed here (yet): nothing of ours to carry
            log.info("carrying our own reveal on forced receipt %s", rid.hex()[:12])
            self.offered += 1
            self.offer(template.replace(verdicts=(mine,)))
