"""The validator's committee role: re-check the work it is sampled for, and vote.

On each WorkReport the tracker accepted, a validator that is in the report's committee
re-checks the result in a worker thread (LLM: one prefill pass; diffusion: k re-run
steps from latents fetched from the worker) and gossips its signed Verdict on
``verdicts``. One verification at a time: a validator's CPU is shared with its own
worker role, and committees are small.

Commit, then reveal (when the chain asks for it): a vote is first gossiped as a
:class:`VerdictCommit` (and offered for blocks); after each block the verifier reveals
the verdicts whose receipts' commit phase is over (``WorkTracker.reveal_open``). An
abstention is published at once: it is no vote, and it seats the next reserve. A
review's verdict (reviews re-check a conviction whose first verdicts are already
public) is committed and revealed the same way (D76), after the review's own commit
phase (``WorkTracker.review_reveal_open``).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable

import trio

from aipg.gossip import GossipError, GossipHost
from aipg.models import LLM
from aipg.node.protocol.messages import PROTO_JOB, WorkReport, topic
from aipg.pouw import (
    LatentReply,
    LatentRequest,
    PouwError,
    Verdict,
    VerdictReason,
    abstains,
    make_challenge,
    make_commit,
    make_verdict,
    needs_commitment,
    receipt_id,
)
from aipg.pouw.bounds import evict_over
from aipg.pouw.verify import Check, verdict_for, verify_diffusion, verify_llm
from aipg.stake.challenge import MAX_CHALLENGE_LATENTS, ChallengeAnswer, WithholdingChallenge
from aipg.wire import Identity, PeerId, WireError, decode, encode, sign

from .catalog import ModelCatalog
from .faults import accusing_check, flipped_verdict, lazy_check, random_check
from .work import TrackedWork, WorkTracker

log = logging.getLogger("aipg.node.verifier")

MAX_CONSIDERED = 4096  # receipts this validator queued (each is verified once), oldest first
# Reports waiting for this validator's check; when full, a new one is skipped (its vote
# is missing and the rest of the committee decides) rather than block gossip.
VERIFY_QUEUE = 256
# Blocks beyond a challenge's period to wait for its answer (the challenge itself must
# first be carried by a block) before abstaining.
ANSWER_SLACK = 3
REVIEW_KEY = b"review"  # a reviewer's unrevealed verdict, apart from a member's (D76)


def _reply_from(answer: ChallengeAnswer, request: LatentRequest) -> LatentReply:
    """The latents ``request`` asks for, from a challenge answer a block carried (the
    ledger checked each against the receipt's digests)."""
    by_step = dict(zip(answer.steps, answer.latents, strict=True))
    missing = [s for s in request.steps if s not in by_step]
    if missing:
        raise PouwError("latents", f"the answer on chain lacks latent {missing[0]}")
    latents = tuple(by_step[s] for s in request.steps)
    return LatentReply(receipt_id=request.receipt_id, steps=request.steps, latents=latents)


class VerifierService:
    def __init__(
        self,
        identity: Identity,
        host: GossipHost,
        catalog: ModelCatalog,
        tracker: WorkTracker,
        *,
        random_votes: bool = False,
        flip_verdicts: bool = False,
        accuse: bool = False,
        copy_verdicts: bool = False,
        lazy_votes: bool = False,
        wait_for_block: Callable[[], Awaitable[None]] | None = None,
    ):
        self.identity = identity
        self.host = host
        self.catalog = catalog
        self.tracker = tracker
        self.random_votes = random_votes
        self.flip_verdicts = flip_verdicts
        self.accuse = accuse
        self.lazy_votes = lazy_votes
        self.copy_verdicts = copy_verdicts
        self.wait_for_block = wait_for_block
        # receipt id -> (its work, our verdict): committed, not revealed yet
        self._unrevealed: OrderedDict[bytes, tuple[TrackedWork, Verdict]] = OrderedDict()
        self._copying: OrderedDict[bytes, TrackedWork] = OrderedDict()  # copy_verdicts fault
        # receipt id -> (its work, the last height to wait for): challenged for withheld
        # latents; re-checked from the answer once a block carries it, else abstains
        self._awaiting: OrderedDict[bytes, tuple[TrackedWork, int]] = OrderedDict()
        self._answers: dict[bytes, ChallengeAnswer] = {}  # answered: re-check from these
        self._send, self._queue = trio.open_memory_channel[TrackedWork](VERIFY_QUEUE)
        self.outcomes = {"valid": 0, "invalid": 0, "abstained": 0, "skipped": 0}
        self.challenged = 0  # withholding challenges put on chain
        self._considered: OrderedDict[bytes, None] = OrderedDict()

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            if self.wait_for_block is not None:
                nursery.start_soon(self._reveal_after_blocks)
            task_status.started()
            async for tracked in self._queue:
                await self._verify(tracked)

    async def _reveal_after_blocks(self) -> None:
        assert self.wait_for_block is not None
        while True:
            await self.wait_for_block()
            try:
                await self.reveal_due()
            except GossipError as e:  # the next block tries again
                log.warning("revealing verdicts failed: %s", e)

    async def reveal_due(self) -> None:
        """Re-check what a challenge answer made checkable (or abstain once its
        deadline passed unanswered), and reveal each committed verdict whose receipt's
        commit phase is over."""
        await self._answered_or_expired()
        for key, (tracked, verdict) in list(self._unrevealed.items()):
            if key.startswith(REVIEW_KEY):
                due = self.tracker.review_reveal_open(tracked)
            else:
                due = self.tracker.reveal_open(tracked)
            if due:
                await self._publish(tracked, verdict)
                self._unrevealed.pop(key, None)
        if self.copy_verdicts:
            await self._copy_others()

    async def _answered_or_expired(self) -> None:
        me = self.identity.public_bytes
        for rid, (tracked, last) in list(self._awaiting.items()):
            answer = self.tracker.answer_carried(rid, me)
            if answer is not None:
                del self._awaiting[rid]
                self._answers[rid] = answer
                log.info(
                    "re-checking job %s from the latents its worker put on chain",
                    tracked.job_id.hex()[:12],
                )
                try:
                    self._send.send_nowait(tracked)
                except trio.WouldBlock:
                    self._answers.pop(rid, None)
                    self.outcomes["skipped"] += 1
            elif self.tracker.chain.height > last:
                del self._awaiting[rid]
                check = Check(
                    VerdictReason.UNAVAILABLE,
                    detail="worker neither served its latents nor answered the challenge",
                    recomputed=b"",
                )
                await self._publish(
                    tracked, verdict_for(self.identity, tracked.report.result, check)
                )
                self.outcomes["abstained"] += 1

    async def _copy_others(self) -> None:
        """Test-only fault: reveal what another member revealed, as our own, without
        having checked or committed anything."""
        me = self.identity.public_bytes
        for rid, tracked in list(self._copying.items()):
            seen = [v for k, v in tracked.verdicts.items() if k != me and not abstains(v)]
            if not seen:
                continue
            del self._copying[rid]
            log.warning("FAULT: copying a verdict on receipt %s", rid.hex()[:12])
            copied = make_verdict(
                self.identity,
                tracked.report.result.receipt,
                VerdictReason(seen[0].reason),
                recomputed=b"copied",
            )
            await self._publish(tracked, copied)

    def consider(self, tracked: TrackedWork) -> None:
        """Queue a tracked report for verification when this validator is seated on its
        committee (once per receipt: an abstention may seat it later)."""
        me = self.identity.public_bytes
        if me not in tracked.seated() or tracked.receipt_id in self._considered:
            return
        self._considered[tracked.receipt_id] = None
        evict_over(self._considered, MAX_CONSIDERED)
        if self.copy_verdicts:
            self._copying[tracked.receipt_id] = tracked
            evict_over(self._copying, MAX_CONSIDERED)
            return
        try:
            self._send.send_nowait(tracked)
        except trio.WouldBlock:
            self.outcomes["skipped"] += 1
            log.warning(
                "verification queue full; not verifying receipt %s", tracked.receipt_id.hex()[:12]
            )

    def consider_review(self, tracked: TrackedWork) -> None:
        """Queue a tracked report whose conviction is under review when this validator
        is seated on the review (once; a member of the first committee has voted)."""
        review = tracked.review
        me = self.identity.public_bytes
        if review is None or me not in review.seated() or me in review.verdicts:
            return
        key = b"review" + tracked.receipt_id
        if key in self._considered:
            return
        self._considered[key] = None
        evict_over(self._considered, MAX_CONSIDERED)
        try:
            self._send.send_nowait(tracked)
        except trio.WouldBlock:
            self.outcomes["skipped"] += 1

    async def _verify(self, tracked: TrackedWork) -> None:
        report = tracked.report
        me = self.identity.public_bytes
        reviewing = tracked.review is not None and me not in tracked.committee
        answer = self._answers.pop(tracked.receipt_id, None)
        check, withheld = await self._check(report, answer)
        if withheld is not None and not reviewing and tracked.receipt_id not in self._awaiting:
            # The worker did not serve us: challenge it on chain and wait for the answer
            # (then re-check from it) before abstaining.
            await self._challenge_withholding(report, withheld)
            self._awaiting[tracked.receipt_id] = (
                tracked,
                self.tracker.chain.height + self.tracker.chain.challenge_period + ANSWER_SLACK,
            )
            evict_over(self._awaiting, MAX_CONSIDERED)
            return
        verdict = verdict_for(self.identity, report.result, check)
        outcome = "abstained" if abstains(verdict) else "valid" if verdict.valid else "invalid"
        self.outcomes[outcome] += 1
        log.info(
            "verdict on job %s: %s%s",
            tracked.job_id.hex()[:12],
            {"valid": "valid", "invalid": "INVALID", "abstained": "abstains"}[outcome],
            "" if verdict.valid else f" ({VerdictReason(verdict.reason).name}: {verdict.detail})",
        )
        if self.tracker.commit_reveal and needs_commitment(verdict):
            # a reviewer commits too (D76), apart from the first committee's commitments
            commit = make_commit(self.identity, verdict, review=reviewing)
            try:
                self.tracker.add_commit(commit)
            except PouwError as e:
                log.warning("own commitment rejected: %s", e)
            await self.host.publish(topic("verdicts"), encode(commit))
            key = (REVIEW_KEY if reviewing else b"") + tracked.receipt_id
            self._unrevealed[key] = (tracked, verdict)
            evict_over(self._unrevealed, MAX_CONSIDERED)
            return
        await self._publish(tracked, verdict)

    async def _publish(self, tracked: TrackedWork, verdict: Verdict) -> None:
        try:
            self.tracker.add_verdict(verdict)
        except PouwError as e:
            log.warning("own verdict rejected: %s", e)
        await self.host.publish(topic("verdicts"), encode(verdict))
        if self.flip_verdicts:  # test-only fault: vote the other way too
            flipped = flipped_verdict(self.identity, tracked.report.result.receipt, verdict)
            await self.host.publish(topic("verdicts"), encode(flipped))

    async def _check(
        self, report: WorkReport, answer: ChallengeAnswer | None = None
    ) -> tuple[Check, tuple[int, ...] | None]:
        """The check's outcome, and the latent indices the worker withheld (None when
        it served them, or the check needs none). With ``answer``, the latents come
        from the worker's answer to our challenge, carried by a block."""
        if self.random_votes:
            return random_check(), None
        if self.accuse:
            return accusing_check(), None
        if self.lazy_votes:
            return lazy_check(), None
        model = self.catalog.get(report.job.model_id)
        if model is None or model.model_dir is None:
            return Check(
                VerdictReason.UNAVAILABLE,
                detail="validator does not host the model",
                recomputed=b"",
            ), None
        if model.cost_refused:  # registered at another cost than its files give (D60)
            return Check(
                VerdictReason.BINDING, detail=model.cost_refused[:200], recomputed=b""
            ), None
        runner = await trio.to_thread.run_sync(self.catalog.runner, model, "verify")
        if model.kind == LLM:
            check = await trio.to_thread.run_sync(
                lambda: verify_llm(
                    runner,
                    report.job,
                    report.assignment,
                    report.result,
                    cost_milli=model.cost_milli,
                )
            )
            return check, None
        worker = PeerId.from_public_key(report.result.receipt.signer)
        challenge = make_challenge(self.identity, receipt_id(report.result.receipt))
        withheld: list[tuple[int, ...]] = []

        def fetch(request: LatentRequest) -> LatentReply:
            if answer is not None:
                return _reply_from(answer, request)
            try:
                data = trio.from_thread.run(
                    lambda: self.host.request(worker, PROTO_JOB, encode(request), timeout=10.0)
                )
                return decode(data, LatentReply)
            except (GossipError, WireError) as e:
                withheld.append(tuple(request.steps))
                raise PouwError("latents", f"worker did not serve its latents: {e}") from None

        check = await trio.to_thread.run_sync(
            lambda: verify_diffusion(
                runner,
                report.job,
                report.assignment,
                report.result,
                fetch,
                challenge,
                cost_milli=model.cost_milli,
            )
        )
        if withheld and check.reason == VerdictReason.UNAVAILABLE:
            return check, withheld[0]
        return check, None

    async def _challenge_withholding(self, report: WorkReport, steps: tuple[int, ...]) -> None:
        """The worker did not serve the latents this member needs: challenge it on
        chain (it must put them in a block within the challenge period, or be slashed)."""
        asked = tuple(sorted(set(steps)))[:MAX_CHALLENGE_LATENTS]
        c = sign(
            WithholdingChallenge(report.job, report.assignment, report.result.receipt, asked),
            self.identity,
        )
        log.warning(
            "challenging worker %s to put the latents of job %s on chain",
            report.result.receipt.signer.hex()[:12],
            report.job.id.hex()[:12],
        )
        self.tracker.add_challenge(c)
        self.challenged += 1
        await self.host.publish(topic("verdicts"), encode(c))
