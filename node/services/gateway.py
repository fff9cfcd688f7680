"""The gateway role: turn client requests into signed jobs, schedule them on workers,
and follow them to their certificates and blocks.

Implements :class:`aipg.node.services.gateway_api.Gateway` for the HTTP API. A request becomes
a Job signed by this node, gossiped on ``jobs``; workers' Claims and Results arrive on
the ``job`` protocol; the pure :class:`aipg.pouw.Scheduler` picks the worker and
reassigns on timeout. A paid-tier job escrows its fee from the client's account (a
signed ESCROW transaction) first: it is published and scheduled only once the escrow is
in the mempool (D32), and a refused escrow fails the request (402) before any work.
"""

from __future__ import annotations

import logging
import secrets
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

import trio

from aipg.gossip import GossipError, GossipHost
from aipg.models import DIFFUSION, LLM, SamplingParams, model_id_text
from aipg.node.apikeys import ApiKeyStore
from aipg.node.protocol.jobs import SendJob
from aipg.node.protocol.messages import JobAck, WorkerStatus, WorkReport, topic
from aipg.pouw import COMMITTEE_LOOKAHEAD, Claim, Job, PouwError, Tier, job_id
from aipg.pouw.bounds import evict_over
from aipg.pouw.schedule import JobState, Reputation, ReputationConfig, Scheduler, SchedulerConfig
from aipg.stake.models import certified_work
from aipg.stake.types import LedgerError
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
    StreamText,
    TextCallback,
    UnknownModel,
)
from .work import TrackedWork, WorkTracker

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
# Paid tier: the price per generated token / per diffusion step. An LLM job escrows
# max_tokens x the price and is charged for the tokens it generated (D34).
PAID_FEE_PER_TOKEN = UNITS_PER_AIPG // 100  # 0.01 AIPG
PAID_FEE_PER_STEP = UNITS_PER_AIPG // 10  # 0.1 AIPG
TRUSTED_MIN_BOND = 1_000 * UNITS_PER_AIPG  # paid-tier workers have this much at stake
WORKER_STATUS_TTL_MS = 20_000  # a worker unheard of for this long is gone


@dataclass
class GatewayJob:
    job: Job
    tier: str
    client: str
    done: trio.Event = field(default_factory=trio.Event)
    report: WorkReport | None = None
    failed: str = ""


class GatewayChain(Protocol):
    """What the gateway reads from the chain and asks of it (the chain service)."""

    @property
    def height(self) -> int: ...

    def bond_of(self, key: bytes) -> int: ...

    def work_paid(self, job_id: bytes) -> int | None: ...

    async def escrow(self, payer: Identity, job_id: bytes, fee: int) -> None: ...


class GatewayService:
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
    ):
        """``reputation``: the workers' scores and bans this gateway starts from (the
        node's, loaded from its data dir; a fresh table when None)."""
        self.identity = identity
        self.host = host
        self.catalog = catalog
        self.chain = chain
        self.tracker = tracker
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
        )
        tracker.on_outcome.append(self._on_outcome)
        tracker.on_review.append(self._on_review)
        self.jobs: OrderedDict[bytes, GatewayJob] = OrderedDict()  # oldest first
        # model id -> {worker key: last status time (ms)}, from the workers topic; both
        # levels least recently heard first
        self.workers: OrderedDict[bytes, OrderedDict[bytes, int]] = OrderedDict()
        self._nonce = secrets.randbits(48)

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await trio.sleep(TICK_S)
            await self._tick()

    async def _tick(self) -> None:
        now = self.now_ms()
        height = self.chain.height
        if height < COMMITTEE_LOOKAHEAD:
            return  # no committee can be seeded yet: jobs wait for the chain's first blocks
        for assignment in self.scheduler.tick(now, height):
            worker = PeerId.from_public_key(assignment.worker)
            try:
                answer = await self.send_job(assignment.worker, encode(assignment), 5.0)
                ack = decode(answer, JobAck)
                if not ack.ok:
                    log.info(
                        "worker %s refused job %s: %s",
                        worker.short(),
                        assignment.job_id.hex()[:12],
                        ack.reason,
                    )
            except (GossipError, WireError) as e:
                log.info(
                    "assignment of job %s to %s not delivered: %s",
                    assignment.job_id.hex()[:12],
                    worker.short(),
                    e,
                )
        for jid, entry in list(self.jobs.items()):
            if not entry.done.is_set() and self._failed(jid):
                entry.failed = "no worker finished the job before its deadline"
                entry.done.set()

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
        else:
            self.scheduler.on_fraud(worker)

    # -- job protocol (claims and results from workers) ----------------------------------

    def on_claim(self, claim: Claim) -> None:
        self.scheduler.on_claim(claim, self.now_ms())

    def on_report(self, report: WorkReport) -> None:
        jid = report.result.receipt.job_id
        entry = self.jobs.get(jid)
        if entry is None:
            raise PouwError("report.job_id", "not a job of this gateway")
        self.tracker.check_report(report)
        self.scheduler.on_receipt(report.result.receipt, self.now_ms())
        entry.report = report
        entry.done.set()

    # -- workers topic -------------------------------------------------------------------

    async def on_worker_status(self, status: WorkerStatus) -> None:
        now = self.now_ms()
        horizon = now - WORKER_STATUS_TTL_MS
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

    def live_workers(self, mid: bytes) -> int:
        horizon = self.now_ms() - WORKER_STATUS_TTL_MS
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
        # The demo models have no chat template of their own: a plain transcript.
        lines = [f"{m['role']}: {m['content']}" for m in messages]
        return "\n".join([*lines, "assistant:"])

    def authenticate(self, api_key: str) -> PaidAccount | None:
        client = self.api_keys.authenticate(api_key)
        return PaidAccount(client.address, client.name) if client else None

    # -- Gateway protocol: jobs ------------------------------------------------------------

    async def complete(
        self, req: CompletionRequest, on_text: TextCallback | None = None
    ) -> CompletionResult:
        model = self._model(req.model, LLM)
        tokenizer = self.catalog.tokenizer(model)
        prompt = (
            req.prompt
            if req.prompt_ids is None or tokenizer is None
            else tokenizer.decode(req.prompt_ids)
        )
        params = SamplingParams(
            temperature_milli=req.temperature_milli,
            top_k=req.top_k,
            top_p_milli=req.top_p_milli,
            max_tokens=req.max_tokens,
            stop=tuple(req.stop),
        )
        fee = PAID_FEE_PER_TOKEN * req.max_tokens if req.tier == "paid" else 0
        entry = await self._submit(
            model, prompt, params, None, req.seed, req.tier, req.account, req.client, fee
        )
        report = await self._wait(entry)
        result = report.result
        if on_text is not None:
            await self._stream(
                tokenizer, list(result.output_token_ids), result.text, params.stop, on_text
            )
        finish = "length" if len(result.output_token_ids) >= req.max_tokens else "stop"
        return CompletionResult(
            job_id=job_id(entry.job).hex(),
            model=model.id_text,
            text=result.text,
            prompt_tokens=len(result.prompt_token_ids),
            completion_tokens=len(result.output_token_ids),
            finish_reason=finish,
            worker=str(PeerId.from_public_key(result.receipt.signer)),
        )

    async def _stream(
        self, tokenizer, tokens: list[int], text: str, stop, on_text: TextCallback
    ) -> None:
        """Send ``text`` as it decodes token by token (the worker's tokens, in order)."""
        stream = StreamText(stop)
        for i in range(1, len(tokens) + 1):
            piece = stream.push(tokenizer.decode(tokens[:i]) if tokenizer else text)
            if piece:
                await on_text(piece)
        rest = stream.finish(text)
        if rest:
            await on_text(rest)

    async def generate_image(self, req: ImageRequest) -> ImageResult:
        model = self._model(req.model, DIFFUSION)
        params = req.diffusion_params(model.manifest.default_diffusion)
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
        self, model, prompt, llm, diffusion, seed, tier, account, client, fee
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
            await self._escrow(paid, job)
        entry = GatewayJob(job, tier, client)
        self.jobs[jid] = entry
        evict_over(self.jobs, MAX_GATEWAY_JOBS, lambda e: e.done.is_set())
        self.scheduler.submit(job, self.now_ms())
        await self.host.publish(topic("jobs"), encode(job))
        # Workers on this node see their own gateway's jobs too.
        await self.local_jobs(job)
        return entry

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

    # -- Gateway protocol: views -----------------------------------------------------------

    def _work_units(self, job: Job, receipt) -> int:
        """The units the ledger pays ``receipt`` by: its model's registered cost (D60;
        0 without one), not the receipt's own figure (which stays in ``receipt``)."""
        state = getattr(self.chain, "state", None)
        if state is None:
            return receipt.work_units
        try:
            return certified_work(state, job, receipt)
        except LedgerError:
            return 0

    def job_view(self, job_id_text: str) -> dict | None:
        try:
            jid = bytes.fromhex(job_id_text)
        except ValueError:
            return None
        entry = self.jobs.get(jid)
        tracked = self.tracker.for_job(jid)
        if entry is None and tracked is None:
            return None
        job = entry.job if entry else tracked.report.job
        view: dict = {
            "id": jid.hex(),
            "model": model_id_text(job.model_id),
            "tier": "paid" if job.tier == Tier.PAID else "free",
            "fee": format_amount(job.fee),
            "status": self._status_of(jid, entry, tracked),
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
            view["work_units"] = self._work_units(job, receipt)
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
                view["certificate"] = {
                    "kind": "certificate" if tracked.certified else "fraud_evidence"
                }
            view["block_height"] = tracked.block_height
            if tracked.set_aside:
                view["unpaid_reason"] = tracked.set_aside
            if tracked.block_height is not None:
                paid = self.chain.work_paid(jid)
                view["reward"] = format_amount(paid) if paid is not None else None
        elif entry is not None and entry.report is not None:
            view["worker"] = str(PeerId.from_public_key(entry.report.result.receipt.signer))
        return view

    def jobs_by_state(self) -> dict[str, int]:
        """How many of this gateway's jobs are in each state (for /metrics)."""
        out: dict[str, int] = {}
        for jid, entry in self.jobs.items():
            state = self._status_of(jid, entry, self.tracker.for_job(jid))
            out[state] = out.get(state, 0) + 1
        return out

    def _status_of(self, jid: bytes, entry: GatewayJob | None, tracked: TrackedWork | None) -> str:
        if tracked is not None:
            if tracked.block_height is not None:
                if tracked.certified:
                    return "paid"
                review = tracked.review
                if review is None or not review.settled or review.upheld is None:
                    return "reviewing"  # a conviction: nobody is slashed before its review
                return "slashed" if review.upheld else "exonerated"
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
            try:
                return self.scheduler.state(jid).value
            except PouwError:
                return "unknown"
        return "unknown"
