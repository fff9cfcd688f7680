"""The validator's committee role: re-check the work it is sampled for, and vote.

On each WorkReport the tracker accepted, a validator that is in the report's committee
re-checks the result in a worker thread (LLM: one prefill pass; diffusion: k re-run
steps from latents fetched from the worker) and gossips its signed Verdict on
``verdicts``. One verification at a time: a validator's CPU is shared with its own
worker role, and committees are small.
"""

from __future__ import annotations

import logging
from collections import OrderedDict

import trio

from aipg.gossip import GossipError, GossipHost
from aipg.models import LLM
from aipg.node.protocol.messages import PROTO_JOB, WorkReport, topic
from aipg.pouw import (
    LatentReply,
    LatentRequest,
    PouwError,
    VerdictReason,
    abstains,
    make_challenge,
    receipt_id,
)
from aipg.pouw.bounds import evict_over
from aipg.pouw.verify import Check, verdict_for, verify_diffusion, verify_llm
from aipg.wire import Identity, PeerId, WireError, decode, encode

from .catalog import ModelCatalog
from .faults import accusing_check, flipped_verdict, random_check
from .work import TrackedWork, WorkTracker

log = logging.getLogger("aipg.node.verifier")

MAX_CONSIDERED = 4096  # receipts this validator queued (each is verified once), oldest first
# Reports waiting for this validator's check; when full, a new one is skipped (its vote
# is missing and the rest of the committee decides) rather than block gossip.
VERIFY_QUEUE = 256


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
    ):
        self.identity = identity
        self.host = host
        self.catalog = catalog
        self.tracker = tracker
        self.random_votes = random_votes
        self.flip_verdicts = flip_verdicts
        self.accuse = accuse
        self._send, self._queue = trio.open_memory_channel[TrackedWork](VERIFY_QUEUE)
        self.outcomes = {"valid": 0, "invalid": 0, "abstained": 0, "skipped": 0}
        self._considered: OrderedDict[bytes, None] = OrderedDict()

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        async for tracked in self._queue:
            await self._verify(tracked)

    def consider(self, tracked: TrackedWork) -> None:
        """Queue a tracked report for verification when this validator is seated on its
        committee (once per receipt: an abstention may seat it later)."""
        me = self.identity.public_bytes
        if me not in tracked.seated() or tracked.receipt_id in self._considered:
            return
        self._considered[tracked.receipt_id] = None
        evict_over(self._considered, MAX_CONSIDERED)
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
        check = await self._check(report)
        verdict = verdict_for(self.identity, report.result, check)
        outcome = "abstained" if abstains(verdict) else "valid" if verdict.valid else "invalid"
        self.outcomes[outcome] += 1
        log.info(
            "verdict on job %s: %s%s",
            tracked.job_id.hex()[:12],
            {"valid": "valid", "invalid": "INVALID", "abstained": "abstains"}[outcome],
            "" if verdict.valid else f" ({VerdictReason(verdict.reason).name}: {verdict.detail})",
        )
        try:
            self.tracker.add_verdict(verdict)
        except PouwError as e:
            log.warning("own verdict rejected: %s", e)
        await self.host.publish(topic("verdicts"), encode(verdict))
        if self.flip_verdicts:  # test-only fault: vote the other way too
            flipped = flipped_verdict(self.identity, report.result.receipt, verdict)
            await self.host.publish(topic("verdicts"), encode(flipped))

    async def _check(self, report: WorkReport) -> Check:
        if self.random_votes:
            return random_check()
        if self.accuse:
            return accusing_check()
        model = self.catalog.get(report.job.model_id)
        if model is None or model.model_dir is None:
            return Check(
                VerdictReason.UNAVAILABLE,
                detail="validator does not host the model",
                recomputed=b"",
            )
        if model.cost_refused:  # registered at another cost than its files give (D60)
            return Check(VerdictReason.BINDING, detail=model.cost_refused[:200], recomputed=b"")
        runner = await trio.to_thread.run_sync(self.catalog.runner, model, "verify")
        if model.kind == LLM:
            return await trio.to_thread.run_sync(
                lambda: verify_llm(
                    runner,
                    report.job,
                    report.assignment,
                    report.result,
                    cost_milli=model.cost_milli,
                )
            )
        worker = PeerId.from_public_key(report.result.receipt.signer)
        challenge = make_challenge(self.identity, receipt_id(report.result.receipt))

        def fetch(request: LatentRequest) -> LatentReply:
            try:
                data = trio.from_thread.run(
                    lambda: self.host.request(worker, PROTO_JOB, encode(request), timeout=10.0)
                )
                return decode(data, LatentReply)
            except (GossipError, WireError) as e:
                raise PouwError("latents", f"worker did not serve its latents: {e}") from None

        return await trio.to_thread.run_sync(
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
