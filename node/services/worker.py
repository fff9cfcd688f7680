"""The worker role: claim jobs for hosted models, execute assignments, report results.

1. A Job arrives on ``jobs``: if this node hosts its model, it sends a signed Claim to
   the job's gateway (``job`` protocol; the gateway's peer ID is derived from the job's
   signer key).
2. The gateway's Assignment arrives on ``job``: the worker acknowledges at once and
   executes in a worker thread (one job at a time per model: an ONNX session is not
   shared between concurrent runs, and parallel jobs on 2 cores only slow each other).
   An LLM job's tokens stream to the gateway as they are generated (D50,
   :class:`~.streaming.ChunkSender`); an assignment the worker cannot run is refused at
   once with a :class:`JobRefusal` and its reason code (D52), never left to time out.
3. The Result goes back to the gateway, and the WorkReport (job, assignment, result) is
   gossiped on ``receipts`` for the committee. Diffusion latents are kept on disk
   (:class:`~.latents.DiskLatentStore`) for validators to re-run steps from, until a
   block makes the receipt final. On a chain with forced errors an LLM job's output
   goes to the gateway at once (``EarlyResult``, D94) and its receipt follows once the
   job's seed beacon says whether it must be forced (D75), without holding the queue.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable

import trio

from aipg.gossip import GossipError, GossipHost, RateLimited
from aipg.models import LLM, ModelError
from aipg.node.protocol.messages import (
    EarlyResult,
    JobAck,
    JobRefusal,
    RefusalCode,
    WorkerStatus,
    WorkReport,
    status_interval_s,
    topic,
)
from aipg.pouw import (
    Assignment,
    Claim,
    Job,
    LatentReply,
    LatentRequest,
    PouwError,
    assignment_id,
    job_id,
    receipt_id,
)
from aipg.pouw.bounds import evict_over
from aipg.pouw.execute import run_diffusion_job, run_llm_job
from aipg.stake.block import Block
from aipg.stake.challenge import ChallengeAnswer
from aipg.wire import Identity, WireError, decode, encode, sign

from .catalog import ModelCatalog
from .faults import altered_last_token
from .forced import ForcedErrors
from .latents import DiskLatentStore
from .limits import job_violation
from .streaming import ChunkSender

log = logging.getLogger("aipg.node.worker")

# Jobs seen on ``jobs`` for hosted models (an assignment must name one), oldest dropped
# first; an assignment already queued carries its job, so eviction never loses work.
MAX_KNOWN_JOBS = 2048
RESULT_RETRIES = 4  # sends of a result a rate-limiting gateway refused
# blocks a forced result is sent again while its gateway has not finalized the beacon
# block our node has (its chain a block or two behind ours)
BEACON_RETRY_BLOCKS = 4
MAX_QUEUE = 16  # assignments waiting to execute; beyond this the worker stops claiming
# A worker's status goes out when the models it serves change (looked at every
# STATUS_CHECK_S) and otherwise every status_interval_s(live workers): every node of the
# network hears every worker's status, so its rate is what an idle network costs (D88).
STATUS_CHECK_S = 1.0


class WorkerService:
    def __init__(
        self,
        identity: Identity,
        host: GossipHost,
        catalog: ModelCatalog,
        latents: DiskLatentStore,
        now_ms,
        send_job,
        on_status,
        *,
        cheat_tokens: bool = False,
        swap_weights: bool = False,
        double_receipt: bool = False,
        withhold_latents: bool = False,
        on_answer=None,
        misstream: bool = False,
        junk_stream: bool = False,
        refuse_jobs: bool = False,
        forced: ForcedErrors | None = None,
        workers_heard=None,
    ):
        """``send_job(key, data, timeout) -> bytes`` sends a ``job`` protocol message to
        the node with public key ``key`` (in process when that is this node)."""
        self.send_job = send_job
        self.on_status = on_status
        self.identity = identity
        self.host = host
        self.catalog = catalog
        self.now_ms = now_ms
        self.cheat_tokens = cheat_tokens
        self.double_receipt = double_receipt
        self.swap_weights = swap_weights
        self.withhold_latents = withhold_latents
        # Called with each ChallengeAnswer this worker signs (the node offers it for
        # blocks and gossips it).
        self.on_answer = on_answer
        # live workers this node's gateway hears (paces our status, D88)
        self.workers_heard: Callable[[], int] = workers_heard or (lambda: 0)
        self.answers = 0  # withholding challenges answered
        self.misstream = misstream
        self.junk_stream = junk_stream  # test-only: stream junk, sign the honest result
        self.refuse_jobs = refuse_jobs
        self.forced = forced  # forced errors (D75): None on chains without them
        # Test hook: called on the execution thread after each token is handed to the
        # stream, ``(job_id, index)``; tests block in it to hold a generation mid-way.
        self.token_hook: Callable[[bytes, int], None] | None = None
        self.refused = 0  # assignments refused (JobRefusal sent or answered)
        self._swapped: dict[bytes, object] = {}
        self.latents = latents
        self._jobs: OrderedDict[bytes, Job] = OrderedDict()
        self._send, self._queue = trio.open_memory_channel[tuple[Assignment, Job]](MAX_QUEUE)
        self.in_flight = 0
        self.executed = 0
        self.signing = 0  # receipts of outputs delivered early, waiting for their beacon (D94)
        self.latents_served = 0  # latent requests answered (validators re-running steps)
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._executor)
            nursery.start_soon(self._announce_status)
            task_status.started()

    def status(self) -> WorkerStatus:
        return sign(
            WorkerStatus(self._served(), min(self.in_flight, 65535), self.now_ms()), self.identity
        )

    def _served(self) -> tuple[bytes, ...]:
        return tuple(sorted(m.id for m in self.catalog.hosted()))[:64]

    async def _announce_status(self) -> None:
        """Tell gateways what this worker serves: now, whenever that changes, and every
        status_interval_s (the gateways' liveness refresh)."""
        sent: tuple[bytes, ...] | None = None
        due = 0.0
        while True:
            if self._served() != sent or trio.current_time() >= due:
                status = self.status()  # signed only when it is sent
                await self.on_status(status)  # our own gateway too
                await self.host.publish(topic("workers"), encode(status))
                interval = status_interval_s(self.workers_heard())
                sent, due = status.models, trio.current_time() + interval
            await trio.sleep(STATUS_CHECK_S)

    # -- jobs topic ---------------------------------------------------------------------

    def hosts(self, job: Job) -> bool:
        model = self.catalog.get(job.model_id)
        # A model registered at a cost its files do not give is not served (D60): its
        # committees would convict the work.
        return model is not None and model.model_dir is not None and not model.cost_refused

    async def on_job(self, job: Job) -> None:
        """A validated Job from the ``jobs`` topic: claim it if we host its model."""
        if not self.hosts(job) or self.in_flight >= MAX_QUEUE:
            return
        jid = job_id(job)
        self._jobs[jid] = job
        evict_over(self._jobs, MAX_KNOWN_JOBS)
        claim = sign(
            Claim(
                job_id=jid,
                model_id=job.model_id,
                queue=min(self.in_flight, 65535),
                sent_ms=self.now_ms(),
            ),
            self.identity,
        )
        try:
            ack = decode(await self.send_job(job.signer, encode(claim), 5.0), JobAck)
            if not ack.ok:
                log.info("claim for job %s refused: %s", jid.hex()[:12], ack.reason)
        except (GossipError, WireError) as e:
            log.info("claim for job %s not delivered to its gateway: %s", jid.hex()[:12], e)

    # -- job protocol -------------------------------------------------------------------

    async def on_assignment(self, assignment: Assignment) -> JobAck | JobRefusal:
        job = self._jobs.get(assignment.job_id)
        if job is None:
            return self._refusal(
                assignment, RefusalCode.NOT_FOR_US, "unknown job (never claimed here)"
            )
        if assignment.signer != job.signer:
            return self._refusal(
                assignment, RefusalCode.NOT_FOR_US, "assignment not signed by the job's gateway"
            )
        if assignment.worker != self.identity.public_bytes:
            return self._refusal(assignment, RefusalCode.NOT_FOR_US, "assigned to another worker")
        violation = self._violation(job)
        if violation is not None:
            return self._refusal(assignment, RefusalCode.OVER_LIMITS, violation)
        try:
            self._send.send_nowait((assignment, job))
        except trio.WouldBlock:
            return self._refusal(assignment, RefusalCode.BUSY, "worker queue is full")
        self.in_flight += 1
        return JobAck(True)

    def _violation(self, job: Job) -> str | None:
        """Which of its model's limits ``job`` breaks (the gateway's own checks), or None."""
        model = self.catalog.get(job.model_id)
        if model is None:
            return "this worker does not host the model"
        prompt_tokens = None
        tokenizer = self.catalog.tokenizer(model)
        if tokenizer is not None and job.llm is not None:
            prompt_tokens = len(tokenizer.encode(job.prompt))
        return job_violation(model.manifest, job, prompt_tokens)

    def _refusal(self, assignment: Assignment, code: RefusalCode, detail: str) -> JobRefusal:
        self.refused += 1
        log.info("refusing job %s: %s", assignment.job_id.hex()[:12], detail)
        return JobRefusal(assignment.job_id, assignment_id(assignment), int(code), detail[:200])

    async def _refuse(self, assignment: Assignment, job: Job, code: RefusalCode, detail: str):
        """Tell the job's gateway at once that this assignment will bring no result."""
        refusal = self._refusal(assignment, code, detail)
        try:
            await self.send_job(job.signer, encode(refusal), 5.0)
        except GossipError as e:
            log.info("refusal of job %s not delivered: %s", assignment.job_id.hex()[:12], e)

    def on_block(self, block: Block, too_old: int) -> None:
        """A finalized block: answer the withholding challenges it carried against this
        worker, then release the latents of the receipts it made final: certified, or
        their conviction's review decided (fraud evidence alone only opens a review,
        whose reviewers re-run steps from these latents)."""
        # (a claim, D79, is not final: its committee may still need the latents; one
        # paid unaudited keeps them, for fraud evidence, until they are too old)
        final = [receipt_id(cert.receipt) for cert in block.body.certificates if cert.verdicts]
        final += [receipt_id(review.evidence.receipt) for review in block.body.reviews]
        self.answer_challenges(block)
        if self.forced is not None:
            self.forced.on_block(block)
        self.latents.settle(final, block.height, too_old)

    def answer_challenges(self, block: Block) -> None:
        """Answer each withholding challenge ``block`` carried against this worker: the
        asked-for latents and every digest, signed, for the next blocks."""
        me = self.identity.public_bytes
        for c in block.body.challenges:
            if c.receipt.signer != me:
                continue
            rid = receipt_id(c.receipt)
            try:
                shape, digests, latents = self.latents.answer_data(rid, c.steps)
            except PouwError as e:
                log.warning("cannot answer a challenge of %s: %s", rid.hex()[:12], e)
                continue
            answer = ChallengeAnswer(rid, c.signer, c.steps, shape, digests, latents)
            log.info("answering a withholding challenge on receipt %s", rid.hex()[:12])
            self.answers += 1
            if self.on_answer is not None:
                self.on_answer(sign(answer, self.identity))

    def on_latent_request(self, request: LatentRequest) -> LatentReply:
        if self.withhold_latents:  # test-only fault: serve nobody
            raise PouwError("latent_request", "withheld")
        reply = self.latents.serve(request)
        self.latents_served += 1
        return reply

    # -- execution ----------------------------------------------------------------------

    async def _executor(self) -> None:
        async for assignment, job in self._queue:
            try:
                await self._execute(assignment, job)
            finally:
                self.in_flight -= 1

    async def _execute(self, assignment: Assignment, job: Job) -> None:
        model = self.catalog.get(job.model_id)
        assert model is not None
        if self.swap_weights:
            runner = await trio.to_thread.run_sync(self._swapped_runner, model)
        else:  # a runner built already costs no thread hop (the first token waits on it)
            runner = self.catalog.cached_runner(model) or await trio.to_thread.run_sync(
                self.catalog.runner, model
            )
        if self.refuse_jobs:  # test-only fault: claims jobs it then will not run
            await self._refuse(assignment, job, RefusalCode.OVER_LIMITS, "refusing (fault)")
            return
        try:
            if model.kind == LLM:
                result = await self._run_llm(runner, assignment, job)
            else:
                result, latents = await trio.to_thread.run_sync(
                    run_diffusion_job, runner, job, assignment, self.identity
                )
                self.latents.put_result(result, latents, assignment.height)
        except (ModelError, PouwError) as e:
            log.warning("job %s failed: %s", assignment.job_id.hex()[:12], e)
            await self._refuse(assignment, job, RefusalCode.RUN_FAILED, str(e))
            return
        self.executed += 1
        if self.forced is not None and model.kind == LLM and self.forced.pending(job, result):
            # D94: the output goes to the gateway now; the receipt, which may have to be
            # a forced error (D75), once the job's seed beacon is known.
            await self._deliver_early(assignment, job, result)
            vocab = runner.interface.vocab_size
            assert self._nursery is not None
            self._nursery.start_soon(self._sign_later, assignment, job, result, vocab)
            return
        await self._report(assignment, job, result, None)

    async def _deliver_early(self, assignment: Assignment, job: Job, result) -> None:
        early = sign(
            EarlyResult(
                assignment.job_id,
                assignment_id(assignment),
                len(result.prompt_token_ids),
                tuple(result.output_token_ids),
                result.text,
            ),
            self.identity,
        )
        try:
            ack = decode(await self._deliver(job.signer, encode(early)), JobAck)
            if not ack.ok:
                log.warning(
                    "gateway refused the output of job %s: %s",
                    assignment.job_id.hex()[:12],
                    ack.reason,
                )
        except (GossipError, WireError) as e:
            log.info(
                "output of job %s not delivered to its gateway: %s", assignment.job_id.hex()[:12], e
            )

    async def _sign_later(self, assignment: Assignment, job: Job, result, vocab: int) -> None:
        """The receipt of an output delivered early (D94): forced or not, once the
        beacon is known (:meth:`ForcedErrors.apply` waits for it)."""
        assert self.forced is not None
        if self.forced.never_sign:  # test-only fault: deliver, then never sign
            log.warning("FAULT: never signing the receipt of job %s", assignment.job_id.hex()[:12])
            return
        self.signing += 1
        try:
            result, to_gateway = await self.forced.apply(job, assignment, result, vocab)
            await self._report(assignment, job, result, to_gateway)
        finally:
            self.signing -= 1

    async def _report(self, assignment: Assignment, job: Job, result, to_gateway) -> None:
        """Send the receipt to the job's gateway (a ForcedResult for a forced job) and
        gossip it for the committee."""
        report = WorkReport(job, assignment, result)
        data = encode(report)
        try:
            sent = data if to_gateway is None else encode(to_gateway)
            ack = decode(await self._deliver(job.signer, sent), JobAck)
            for _ in range(BEACON_RETRY_BLOCKS):  # a gateway a block behind us (D94)
                if ack.ok or to_gateway is None or "forced.beacon" not in ack.reason:
                    break
                assert self.forced is not None
                await self.forced.next_block()
                ack = decode(await self._deliver(job.signer, sent), JobAck)
            if not ack.ok:
                log.warning(
                    "gateway refused the result of job %s: %s",
                    assignment.job_id.hex()[:12],
                    ack.reason,
                )
        except (GossipError, WireError) as e:
            log.info(
                "result of job %s not delivered to its gateway: %s", assignment.job_id.hex()[:12], e
            )
        await self.host.publish(topic("receipts"), data)
        if self.double_receipt and job.llm is not None:  # test-only fault: equivocate
            twin = WorkReport(job, assignment, altered_last_token(result, self.identity))
            await self.host.publish(topic("receipts"), encode(twin))
        log.info(
            "job %s done: %d work units", assignment.job_id.hex()[:12], result.receipt.work_units
        )

    async def _deliver(self, gateway: bytes, data: bytes) -> bytes:
        """Send a result to its gateway; a rate-limited send is retried (a few times,
        backing off) rather than losing the work."""
        for attempt in range(RESULT_RETRIES):
            try:
                return await self.send_job(gateway, data, 10.0)
            except RateLimited:
                if attempt + 1 == RESULT_RETRIES:
                    raise
                await trio.sleep(0.25 * 2**attempt)  # the gateway's bucket refills
        raise AssertionError("unreachable")

    async def _run_llm(self, runner, assignment: Assignment, job: Job):
        """Run an LLM job, streaming its tokens to the gateway while it generates (a
        cheater that alters tokens after generating streams none: the gateway would see
        the change at once). None when the stream could not even start."""
        jid = assignment.job_id
        stream = not self.cheat_tokens
        sender = ChunkSender(
            self.send_job,
            job.signer,
            jid,
            assignment_id(assignment),
            self.identity,
        )
        hook = self.token_hook

        def on_token(index: int, token_id: int) -> None:  # on the execution thread
            if hook is not None:  # first: the bench's mark precedes the chunk it times
                hook(jid, index)
            if stream:  # the junk_stream fault streams another token in the vocabulary
                sender.push((0 if token_id else 1) if self.junk_stream else token_id)

        error: Exception | None = None
        async with trio.open_nursery() as nursery:  # the stream is flushed when it exits
            nursery.start_soon(sender.run)
            try:
                result = await trio.to_thread.run_sync(
                    run_llm_job, runner, job, assignment, self.identity, on_token
                )
            except (ModelError, PouwError) as e:
                error = e  # raised outside the nursery (not wrapped in an exception group)
            finally:
                sender.close()
        if error is not None:
            raise error
        if self.cheat_tokens or self.misstream:
            result = altered_last_token(result, self.identity)
        return result

    def _swapped_runner(self, model):
        """Test-only fault: a runner with other weights of the same shape."""
        from aipg.models import DiffusionRunner, LlmRunner

        from .faults import swapped_weights

        if model.id not in self._swapped:
            cls = LlmRunner if model.kind == LLM else DiffusionRunner
            self._swapped[model.id] = cls(swapped_weights(model), threads=self.catalog.threads)
        return self._swapped[model.id]
