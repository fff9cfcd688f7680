"""The gateway role: turn client requests into signed jobs, schedule them on workers,
and follow them to their certificates and blocks.

Implements :class:`aipg.node.services.gateway_api.Gateway` for the HTTP API. A request becomes
a Job signed by this node, gossiped on ``jobs``; workers' Claims and Results arrive on
the ``job`` protocol; the pure :class:`aipg.pouw.Scheduler` picks the worker and
reassigns on timeout. A paid-tier job escrows its fee from the client's account (a
signed ESCROW transaction) first: it is published and scheduled only once the escrow is
in the mempool (D32), and a refused escrow fails the request (402) before any work.

Requests are checked against the model's own limits first (:mod:`.limits`, D51). An
LLM job's tokens arrive while the worker generates (``TokenChunk`` on ``job``, D50) and
are forwarded to a streaming client at once; the result must begin with every token
streamed, or the attempt fails. A worker's ``JobRefusal`` (D52) ends its attempt at once. What workers send on ``job``
is handled in :mod:`.gateway_jobs` (the service's base class).
"""

from __future__ import annotations

import logging
import secrets
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Protocol

import trio

from aipg.gossip import GossipError, GossipHost
from aipg.models import DIFFUSION, LLM, ModelError, SamplingParams, chat_prompt
from aipg.node.apikeys import ApiKeyStore
from aipg.node.metrics import Counter, Histogram
from aipg.node.protocol.jobs import SendJob
from aipg.node.protocol.messages import (
    JobAck,
    JobRefusal,
    RefusalCode,
    WorkerStatus,
    WorkReport,
    status_ttl_ms,
    topic,
)
from aipg.pouw import (
    COMMITTEE_LOOKAHEAD,
    Job,
    PouwError,
    Tier,
    assignment_id,
    job_id,
)
from aipg.pouw.bounds import evict_over
from aipg.pouw.schedule import JobState, Reputation, ReputationConfig, Scheduler, SchedulerConfig
from aipg.wire import (
    UNITS_PER_AIPG,
    Address,
    Identity,
    PeerId,
    WireError,
    decode,
    encode,
    format_amount,
    sign,
)

from .catalog import KnownModel, ModelCatalog
from .gateway_api import (
    BadRequest,
    CompletionRequest,
    CompletionResult,
    ImageRequest,
    ImageResult,
    InsufficientFunds,
    JobFailed,
    ModelInfo,
    Overloaded,
    PaidAccount,
    TextCallback,
    UnknownModel,
)
from .gateway_jobs import WORKER_STATUS_TTL_MS, Answer, GatewayJob, WorkerMessages
from .gateway_views import job_view, jobs_by_state
from .limits import check_completion, check_image, check_prompt_ids
from .streaming import TextForwarder, TokenRelay
from .work import TrackedWork, WorkTracker

MAX_FORCED_REMEMBERED = 4096  # forced receipts this gateway delivered (D75), oldest first

log = logging.getLogger("aipg.node.gateway")

JOB_DEADLINE_MS = 90_000  # a job not done by then fails (its escrow can be reclaimed)
TICK_S = 0.1
MAX_OPEN_JOBS = 256  # jobs clients wait on; beyond this a new one is refused (Overloaded)
# Jobs kept for GET /api/v1/jobs: beyond this the oldest finished job is forgotten (the
# tracker still knows its receipt). Open jobs are never evicted: MAX_OPEN_JOBS bounds them.
MAX_GATEWAY_JOBS = 4 * MAX_OPEN_JOBS
# The workers table: models (only models the catalog knows can be asked for) and workers
# per model, the least recently heard dropped first; entries older than the status TTL go
# at the model's next status.
MAX_WORKER_MODELS = 512
MAX_WORKERS_PER_MODEL = 256
# The workers heard are counted (over every model's table) at most this often: counting
# at every status cost O(workers) a status at every node (D103).
HEARD_RECOUNT_MS = 1_000
# Paid tier: the price per generated token / per diffusion step. An LLM job escrows
# max_tokens x the price and is charged for the tokens it generated (D34).
PAID_FEE_PER_TOKEN = UNITS_PER_AIPG // 100  # 0.01 AIPG
PAID_FEE_PER_STEP = UNITS_PER_AIPG // 10  # 0.1 AIPG
TRUSTED_MIN_BOND = 1_000 * UNITS_PER_AIPG  # paid-tier workers have this much at stake
# Time to first token (job created -> first token at this gateway), in seconds.
# How a paid job finds its worker (D84): at once ("latency", the default: it earns its fee
# only) or by waiting for the beacon's draw like a free job ("drawn": fee and pool share).
PAID_ROUTES = ("latency", "drawn")
MAX_OUTBOX = 64  # stream evidence waiting to be gossiped; beyond it, only blocks carry it
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class GatewayChain(Protocol):
    """What the gateway reads from the chain and asks of it (the chain service)."""

    @property
    def height(self) -> int: ...

    def bond_of(self, key: bytes) -> int: ...

    def work_paid(self, job_id: bytes) -> int | None: ...

    async def escrow(self, payer: Identity, job_id: bytes, fee: int) -> None: ...

    async def commit_job(self, sender: Identity, job_id: bytes) -> None: ...

    def claim_order(self, job: Job, claimants: list[bytes]) -> list[bytes] | None: ...


class GatewayService(WorkerMessages):
    """``send_job`` reaches workers on the ``job`` protocol; ``local_jobs`` hands each
    new job to this node's own worker (gossip does not deliver our own messages back)."""

    def __init__(
        self,
        identity: Identity,
        host: GossipHost,
        catalog: ModelCatalog,
        chain: GatewayChain,
        tracker: WorkTracker,
        api_keys: ApiKeyStore,
        send_job: SendJob,
        local_jobs: Callable[[Job], Awaitable[None]],
        now_ms: Callable[[], int],
        *,
        reputation: Reputation | None = None,
        paid_route: str = "latency",
    ):
        """``reputation``: the workers' scores and bans this gateway starts from (the
        node's, loaded from its data dir; a fresh table when None). ``paid_route``:
        "latency" assigns a paid job at once (D84: its fee only, no pool share);
        "drawn" makes it wait for the beacon's draw like a free job."""
        if paid_route not in PAID_ROUTES:
            raise ValueError(f"paid_route: one of {', '.join(PAID_ROUTES)}, got {paid_route!r}")
        self.paid_route = paid_route
        self.identity = identity
        self.host = host
        self.catalog = catalog
        self.chain = chain
        self.tracker = tracker
        self._forced: OrderedDict[bytes, None] = OrderedDict()  # receipts delivered as forced
        self.api_keys = api_keys
        self.send_job = send_job
        self.local_jobs = local_jobs
        self.now_ms = now_ms
        self.scheduler = Scheduler(
            identity,
            bond_of=chain.bond_of,
            # Paid jobs go to workers with a bond and at least a newcomer's reputation.
            config=SchedulerConfig(
                claim_window_ms=150,
                attempt_timeout_ms=45_000,
                trusted_min_bond=TRUSTED_MIN_BOND,
                trusted_min_reputation=ReputationConfig().initial,
            ),
            reputation=reputation,
            order=chain.claim_order,  # the chain's draw, not the claims (D58)
        )
        tracker.on_outcome.append(self._on_outcome)
        tracker.on_review.append(self._on_review)
        self.jobs: OrderedDict[bytes, GatewayJob] = OrderedDict()  # oldest first
        # model id -> {worker key: last status time (ms)}, from the workers topic; both
        # levels least recently heard first
        self.workers: OrderedDict[bytes, OrderedDict[bytes, int]] = OrderedDict()
        self.status_ttl_ms = WORKER_STATUS_TTL_MS  # longer as more workers are heard (D88)
        self._heard = 0
        self.unsigned = 0  # outputs delivered early whose receipt never came (D94)
        self._contradicted: OrderedDict[bytes, TokenRelay] = OrderedDict()
        self._heard_counted_ms = -HEARD_RECOUNT_MS  # when the workers were last counted
        self._nonce = secrets.randbits(48)
        self._wake = trio.Event()  # set: tick now (a job came, a claim window closed early)
        self.ticks = 0  # the scheduler's advances (none while no job is open: tests)
        # what this gateway gossips on `receipts` from sync code (stream evidence, D85)
        self._outbox, self._outbox_recv = trio.open_memory_channel[bytes](MAX_OUTBOX)
        self.ttft = Histogram(
            "aipg_gateway_time_to_first_token_seconds",
            "Seconds from a job's creation to its first token at this gateway.",
            TTFT_BUCKETS,
        )
        self.refusals = Counter(
            "aipg_gateway_refusals",
            "Assignments workers refused, by reason code (D52).",
            ("code",),
        )

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._gossip_outbox)
            task_status.started()
            while True:
                if self._idle():  # nothing to advance: sleep until a job comes (idle cost)
                    await self._wake.wait()
                else:
                    with trio.move_on_after(TICK_S):  # a tick every TICK_S, or when woken
                        await self._wake.wait()
                self._wake = trio.Event()
                self.ticks += 1
                await self._tick()

    def _idle(self) -> bool:
        return self.scheduler.idle() and all(e.done.is_set() for e in self.jobs.values())

    async def _gossip_outbox(self) -> None:
        async for data in self._outbox_recv:
            try:
                await self.host.publish(topic("receipts"), data)
            except GossipError as e:
                log.info("could not gossip stream evidence: %s", e)

    async def _tick(self) -> None:
        now = self.now_ms()
        height = self.chain.height
        if height < COMMITTEE_LOOKAHEAD:
            return  # no committee can be seeded yet: jobs wait for the chain's first blocks
        for assignment in self.scheduler.tick(now, height):
            worker = PeerId.from_public_key(assignment.worker)
            try:
                answer = await self.send_job(assignment.worker, encode(assignment), 5.0)
                ack = decode(answer, (JobAck, JobRefusal))
                if isinstance(ack, JobRefusal):
                    self._refused(assignment.job_id, assignment.worker, ack)
                elif not ack.ok:  # a plain refusal ("this node runs no jobs" ...): the same
                    aid = assignment_id(assignment)
                    code = int(RefusalCode.NOT_FOR_US)
                    refusal = JobRefusal(assignment.job_id, aid, code, ack.reason)
                    self._refused(assignment.job_id, assignment.worker, refusal)
            except (GossipError, WireError) as e:
                log.info(
                    "assignment of job %s to %s not delivered: %s",
                    assignment.job_id.hex()[:12],
                    worker.short(),
                    e,
                )
        for jid, entry in list(self.jobs.items()):
            if not entry.done.is_set() and entry.early is None and self._failed(jid):
                entry.finish(failed="no worker finished the job before its deadline")
        self.expire_unsigned(self.tracker.chain.height)

    def _failed(self, jid: bytes) -> bool:
        try:
            return self.scheduler.state(jid) is JobState.FAILED
        except PouwError:
            return True  # the scheduler forgets only finished jobs: this one failed

    def _on_review(self, tracked: TrackedWork) -> None:
        """A block decided a conviction's review: an overturned one lifts the ban."""
        if tracked.review is not None and tracked.review.upheld is False:
            self.scheduler.on_exonerated(tracked.report.result.receipt.signer)

    def _on_outcome(self, tracked: TrackedWork) -> None:
        """A committee decided on a job: certified work raises the worker's reputation
        here, proven fraud bars the worker from this gateway's jobs."""
        worker = tracked.report.result.receipt.signer
        if tracked.certified:
            self.scheduler.on_certified(worker)
        elif tracked.receipt_id in self._forced:
            pass  # our own forced job (D75): the evidence is the trap working, not fraud
        elif tracked.appealed:
            pass  # an undecided audit sent to a review (D96): nobody accused the worker
        else:
            self.scheduler.on_fraud(worker)

    # -- workers topic -------------------------------------------------------------------

    async def on_worker_status(self, status: WorkerStatus) -> None:
        now = self.now_ms()
        horizon = now - self.status_ttl_ms
        for mid in status.models:
            if self.catalog.get(mid) is None:
                continue  # nobody announced it: no client can ask for it
            seen = self.workers.setdefault(mid, OrderedDict())
            self.workers.move_to_end(mid)
            seen[status.signer] = now
            seen.move_to_end(status.signer)
            while seen and next(iter(seen.values())) < horizon:
                seen.popitem(last=False)  # expired: the least recently heard go first
            evict_over(seen, MAX_WORKERS_PER_MODEL)
        evict_over(self.workers, MAX_WORKER_MODELS)
        # A worker that stopped serving a model is forgotten at its next status.
        for mid, seen in list(self.workers.items()):
            if mid not in status.models:
                seen.pop(status.signer, None)
                if not seen:
                    del self.workers[mid]
        if now - self._heard_counted_ms >= HEARD_RECOUNT_MS:  # D103: not at every status
            self._count_heard(now)

    def _count_heard(self, now: int) -> None:
        self._heard_counted_ms = now
        heard = len({w for seen in self.workers.values() for w in seen})
        self.status_ttl_ms = max(WORKER_STATUS_TTL_MS, status_ttl_ms(heard))
        self._heard = heard

    def workers_heard(self) -> int:
        """Workers this gateway has heard within its TTL (any model): what paces the
        workers' status refreshes (D88); counted now (a worker asks once an interval)."""
        self._count_heard(self.now_ms())
        return self._heard

    def live_workers(self, mid: bytes) -> int:
        horizon = self.now_ms() - self.status_ttl_ms
        return sum(1 for t in self.workers.get(mid, {}).values() if t >= horizon)

    # -- Gateway protocol: models ----------------------------------------------------------

    def _info(self, m: KnownModel) -> ModelInfo:
        return ModelInfo(
            m.id_text,
            m.manifest.name,
            "llm" if m.kind == LLM else "diffusion",
            m.context_length,
            m.first_seen,
        )

    def list_models(self) -> list[ModelInfo]:
        return [self._info(m) for m in self.catalog.all()]

    def resolve_model(self, name_or_id: str) -> ModelInfo | None:
        m = self.catalog.resolve(name_or_id)
        return self._info(m) if m else None

    def _model(self, name_or_id: str, kind: str) -> KnownModel:
        m = self.catalog.resolve(name_or_id)
        if m is None:
            raise UnknownModel(f"the model {name_or_id!r} does not exist")
        if m.kind != kind:
            raise BadRequest(f"{m.manifest.name} is a {m.kind} model", "model")
        if not self.live_workers(m.id):
            raise Overloaded(
                f"no worker serves {m.manifest.name} right now; try again later", retry_after_s=5
            )
        return m

    def count_tokens(self, model: ModelInfo, text: str) -> int:
        m = self._model(model.id, LLM)
        tok = self.catalog.tokenizer(m)
        return len(tok.encode(text)) if tok else len(text.split())

    def render_chat(self, model: ModelInfo, messages: list[dict]) -> str:
        # The model's own chat template (its manifest's), else the plain transcript
        # (aipg.models.chat.PLAIN_TEMPLATE); a template that fails is the request's 400.
        m = self._model(model.id, LLM)
        try:
            return chat_prompt(m.manifest, messages)
        except ModelError as e:
            raise BadRequest(str(e), "messages") from None

    def authenticate(self, api_key: str) -> PaidAccount | None:
        client = self.api_keys.authenticate(api_key)
        return PaidAccount(client.address, client.name) if client else None

    # -- Gateway protocol: jobs ------------------------------------------------------------

    async def complete(
        self, req: CompletionRequest, on_text: TextCallback | None = None
    ) -> CompletionResult:
        model = self._model(req.model, LLM)
        tokenizer = self.catalog.tokenizer(model)
        vocab = tokenizer.vocab_size if tokenizer else model.manifest.llm.vocab_size
        if req.prompt_ids is not None:
            check_prompt_ids(model.manifest, req.prompt_ids, vocab)
        try:
            prompt = (
                req.prompt
                if req.prompt_ids is None or tokenizer is None
                else tokenizer.decode(req.prompt_ids)
            )
        except ModelError as e:  # an id outside the model's vocabulary
            raise BadRequest(str(e), "prompt") from None
        prompt_tokens = len(tokenizer.encode(prompt)) if tokenizer else len(prompt.split())
        check_completion(model.manifest, prompt_tokens, req.max_tokens)
        params = SamplingParams(
            temperature_milli=req.temperature_milli,
            top_k=req.top_k,
            top_p_milli=req.top_p_milli,
            max_tokens=req.max_tokens,
            stop=tuple(req.stop),
        )
        fee = PAID_FEE_PER_TOKEN * req.max_tokens if req.tier == "paid" else 0
        relay = TokenRelay(req.max_tokens, min(vocab, model.manifest.llm.vocab_size))
        entry = await self._submit(
            model, prompt, params, None, req.seed, req.tier, req.account, req.client, fee, relay
        )
        if on_text is None:
            answer = await self._answered(entry)
        else:
            answer = await self._relay(entry, TextForwarder(tokenizer, params.stop, on_text))
        finish = "length" if len(answer.output_token_ids) >= req.max_tokens else "stop"
        return CompletionResult(
            job_id=job_id(entry.job).hex(),
            model=model.id_text,
            text=answer.text,
            prompt_tokens=answer.prompt_tokens,
            completion_tokens=len(answer.output_token_ids),
            finish_reason=finish,
            worker=str(PeerId.from_public_key(answer.worker)),
        )

    async def _relay(self, entry: GatewayJob, forward: TextForwarder) -> Answer:
        """Forward the job's tokens as they arrive, then the rest of its output."""
        relay = entry.relay
        assert relay is not None
        with trio.move_on_after(JOB_DEADLINE_MS / 1000 + 5):
            while not entry.answered.is_set():
                changed = relay.changed  # taken before reading: a change while we send wakes us
                await forward.push(relay.tokens)
                if not entry.answered.is_set():
                    await changed.wait()
        answer = await self._answered(entry)
        await forward.finish(answer.output_token_ids, answer.text)
        return answer

    async def generate_image(self, req: ImageRequest) -> ImageResult:
        model = self._model(req.model, DIFFUSION)
        params = req.diffusion_params(model.manifest.default_diffusion)
        check_image(model.manifest, params)
        fee = PAID_FEE_PER_STEP * params.steps if req.tier == "paid" else 0
        entry = await self._submit(
            model, req.prompt, None, params, req.seed, req.tier, req.account, req.client, fee
        )
        report = await self._wait(entry)
        return ImageResult(
            job_id=job_id(entry.job).hex(),
            model=model.id_text,
            png=report.result.image,
            worker=str(PeerId.from_public_key(report.result.receipt.signer)),
        )

    async def _submit(
        self, model, prompt, llm, diffusion, seed, tier, account, client, fee, relay=None
    ) -> GatewayJob:
        open_jobs = sum(1 for e in self.jobs.values() if not e.done.is_set())
        if open_jobs >= MAX_OPEN_JOBS:
            raise Overloaded("this gateway has too many jobs in flight", retry_after_s=2)
        paid = None
        if tier == "paid":
            paid = self.api_keys.by_address(account.address) if account else None
            if paid is None:
                raise InsufficientFunds("the paid tier needs an API key bound to an account")
        now = self.now_ms()
        self._nonce += 1
        job = sign(
            Job(
                model_id=model.id,
                prompt=prompt,
                llm=llm,
                diffusion=diffusion,
                seed=secrets.randbits(63) if seed is None else seed,
                tier=int(Tier.PAID if tier == "paid" else Tier.FREE),
                fee=fee,
                client=(paid.identity.address if paid else self.identity.address).raw,
                cost_milli=model.cost_milli,
                created_ms=now,
                deadline_ms=now + JOB_DEADLINE_MS,
                nonce=self._nonce,
            ),
            self.identity,
        )
        jid = job_id(job)
        if paid is not None:  # nothing is published or scheduled before its escrow (D32)
            await self._escrow(paid, job)  # which also commits the job (D56)
        else:
            await self._commit(jid)
        entry = GatewayJob(job, tier, client, relay=relay)
        self.jobs[jid] = entry
        evict_over(self.jobs, MAX_GATEWAY_JOBS, lambda e: e.done.is_set())
        # Free jobs wait for the beacon's draw (D58); paid ones take the latency route
        # unless this gateway routes them by the draw too (D84).
        wait_draw = tier != "paid" or self.paid_route == "drawn"
        self.scheduler.submit(job, self.now_ms(), wait_draw=wait_draw)
        self._wake.set()  # the tick loop sleeps while no job is open
        await self.host.publish(topic("jobs"), encode(job))
        # Workers on this node see their own gateway's jobs too.
        await self.local_jobs(job)
        return entry

    async def _commit(self, jid: bytes) -> None:
        """Commit a free job on chain: its committee is drawn from the beacon two blocks
        after the commitment (D56); without one the job could never be certified."""
        try:
            await self.chain.commit_job(self.identity, jid)
        except ValueError as e:
            raise Overloaded(f"cannot commit the job on chain: {e}", retry_after_s=2) from None

    async def _escrow(self, paid, job: Job) -> None:
        """Lock ``job``'s fee from the paid client's account; raises InsufficientFunds
        (402) with the ledger's reason when it is refused."""
        try:
            await self.chain.escrow(paid.identity, job_id(job), job.fee)
        except ValueError as e:
            raise InsufficientFunds(
                f"cannot escrow the {format_amount(job.fee)} AIPG fee from {Address(job.client)}: {e}"
            ) from None

    async def _wait(self, entry: GatewayJob) -> WorkReport:
        with trio.move_on_after(JOB_DEADLINE_MS / 1000 + 5):
            await entry.done.wait()
        if entry.report is None:
            raise JobFailed(entry.failed or "the job did not finish before its deadline")
        return entry.report

    async def _answered(self, entry: GatewayJob) -> Answer:
        """The client's answer: an LLM job's output as soon as it comes, before its
        receipt on a chain with forced errors (D94)."""
        with trio.move_on_after(JOB_DEADLINE_MS / 1000 + 5):
            await entry.answered.wait()
        answer = entry.answer()
        if answer is None:
            raise JobFailed(entry.failed or "the job did not finish before its deadline")
        return answer

    # -- Gateway protocol: views -----------------------------------------------------------

    def job_view(self, job_id_text: str) -> dict | None:
        return job_view(self, job_id_text)

    def jobs_by_state(self) -> dict[str, int]:
        """How many of this gateway's jobs are in each state (for /metrics)."""
        return jobs_by_state(self)
