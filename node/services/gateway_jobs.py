"""The gateway's side of the ``job`` protocol: what workers send it (claims, streamed
tokens, results, refusals) and how each ends or advances an attempt.

:class:`WorkerMessages` is a part of :class:`~.gateway.GatewayService` (its base), kept
here so that the service stays readable; it uses the service's scheduler, job table,
tracker, catalog and metrics. Rules: D50 (a result must agree with its stream), D52
(refusals), D85 (signed chunks; a stream the receipt contradicts is evidence), D94 (on a
chain with forced errors the output comes before its receipt: the client is answered at
once, the receipt must follow within ``RECEIPT_DUE_BLOCKS`` of the job's seed beacon).
"""

from __future__ import annotations

import contextlib
import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from aipg.node.metrics import Counter, Histogram
from aipg.node.protocol.messages import (
    EarlyResult,
    ForcedResult,
    JobRefusal,
    RefusalCode,
    TokenChunk,
    WorkReport,
    status_ttl_ms,
)
from aipg.pouw import (
    COMMITTEE_DELAY,
    Claim,
    Job,
    JobState,
    PouwError,
    assignment_id,
    job_id,
    receipt_id,
    validate_stream_evidence,
)
from aipg.pouw.bounds import evict_over
from aipg.pouw.forced import check_forced_result
from aipg.pouw.schedule import Scheduler
from aipg.wire import PeerId, WireError, encode, require_signature

from .catalog import KnownModel, ModelCatalog
from .forced import BEACON_WAIT_BLOCKS, RECEIPT_DUE_BLOCKS
from .limits import job_violation
from .streaming import TokenRelay
from .work import WorkTracker

log = logging.getLogger("aipg.node.gateway")

MAX_FORCED_REMEMBERED = 4096  # forced receipts this gateway delivered (D75), oldest first
MAX_CONTRADICTED = 256  # streams an early output disagreed with, kept for evidence (D94)
WORKER_STATUS_TTL_MS = status_ttl_ms(0)  # a worker unheard of this long is gone (at least)


@dataclass(frozen=True)
class Answer:
    """What the client is told: a receipt's (true) output, or an early one (D94)."""

    text: str
    prompt_tokens: int
    output_token_ids: tuple[int, ...]
    worker: bytes


@dataclass
class GatewayJob:
    job: Job
    tier: str
    client: str
    done: trio.Event = field(default_factory=trio.Event)  # the job's receipt came, or it failed
    report: WorkReport | None = None
    failed: str = ""
    relay: TokenRelay | None = None  # LLM jobs: the tokens streamed so far (D50)
    # D94: the output, delivered before its receipt, and the height it came at; the
    # client is answered (``answered``) when it comes, or the report, or the failure
    answered: trio.Event = field(default_factory=trio.Event)
    early: EarlyResult | None = None
    delivered_at: int = 0

    def finish(self, report: WorkReport | None = None, failed: str = "") -> None:
        self.report = report or self.report
        self.failed = failed or self.failed
        self.done.set()
        self.answer_now()

    def answer_now(self) -> None:
        self.answered.set()
        if self.relay is not None:
            self.relay.notify()

    def answer(self) -> Answer | None:
        """The client's answer: the early output when there was one (what the client may
        already have seen), else the report's; None while neither came."""
        if self.early is not None:
            e = self.early
            return Answer(e.text, e.prompt_tokens, tuple(e.output_token_ids), e.signer)
        if self.report is None:
            return None
        r = self.report.result
        return Answer(r.text, len(r.prompt_token_ids), tuple(r.output_token_ids), r.receipt.signer)


class WorkerMessages:
    """Claims, chunks, results and refusals from workers (the ``job`` protocol)."""

    scheduler: Scheduler
    jobs: OrderedDict[bytes, GatewayJob]
    workers: OrderedDict[bytes, OrderedDict[bytes, int]]
    tracker: WorkTracker
    catalog: ModelCatalog
    refusals: Counter
    ttft: Histogram
    status_ttl_ms: int  # longer as more workers are heard (D88)
    _wake: trio.Event
    _forced: OrderedDict[bytes, None]  # receipts delivered as forced (D75)
    _outbox: trio.MemorySendChannel[bytes]
    unsigned: int  # outputs delivered early whose receipt never came (D94)
    _contradicted: OrderedDict[bytes, TokenRelay]  # assignment id -> its stream (D94)
    now_ms: Callable[[], int]

    def on_claim(self, claim: Claim) -> None:
        self.scheduler.on_claim(claim, self.now_ms())
        # Every live worker of the model has claimed: waiting out the claim window could
        # bring no better claimant, only a later first token (D50).
        horizon = self.now_ms() - self.status_ttl_ms
        live = {k for k, t in self.workers.get(claim.model_id, {}).items() if t >= horizon}
        if live and live <= self.scheduler.claimants(claim.job_id):
            self.scheduler.close_window(claim.job_id)
            self._wake.set()

    def on_report(self, report: WorkReport) -> None:
        self._accept_report(report, report)

    def on_forced_result(self, forced: ForcedResult) -> None:
        """A forced job (D75): the worker's receipt carries the prescribed change, its
        true output comes beside it. Check the proof and the change, then deliver the
        true output; the worker is not faulted for the mismatch."""
        report = forced.report
        chain = self.tracker.chain
        committed = chain.committed_at(report.result.receipt.job_id)
        beacon = None if committed is None else chain.beacon_at(committed + COMMITTEE_DELAY)
        if beacon is None:
            raise PouwError("forced.beacon", "the job's committee beacon is not final here")
        check_forced_result(
            report.result.receipt,
            report.assignment,
            beacon,
            forced.vrf_proof,
            forced.true_token_ids,
            forced.vocab_size,
            chain.forced_error_bps,
        )
        true = report.result.replace(output_token_ids=forced.true_token_ids, text=forced.true_text)
        self._accept_report(report, report.replace(result=true))
        self._forced[receipt_id(report.result.receipt)] = None
        evict_over(self._forced, MAX_FORCED_REMEMBERED)

    def _accept_report(self, report: WorkReport, delivered: WorkReport) -> None:
        """Accept ``report`` (what the committee checks) and answer the client with
        ``delivered`` (the same, but for a forced job's true output)."""
        jid = report.result.receipt.job_id
        entry = self.jobs.get(jid)
        if entry is None:
            raise PouwError("report.job_id", "not a job of this gateway")
        if entry.done.is_set() and entry.early is not None:
            raise PouwError("report", f"the job's receipt is no longer awaited: {entry.failed}")
        self.tracker.check_report(report)
        aid = assignment_id(report.assignment)
        stashed = self._contradicted.pop(aid, None)
        if stashed is not None:  # its early output disagreed with its stream (D94)
            self._junk_stream(stashed, aid, report)
            raise PouwError(
                "report.result", "the attempt ended: its output disagreed with its stream"
            )
        if entry.relay is not None and not entry.relay.agrees(
            aid, delivered.result.output_token_ids
        ):
            # It streamed other tokens than its result holds: a failed attempt (D50), and
            # a signed chunk its signed receipt contradicts is evidence for a block (D85).
            self._junk_stream(entry.relay, aid, report)
            entry.relay.drop()
            self._end_attempt(entry, report.assignment.worker, penalize=True)
            if entry.early is not None:  # answered already (D94): nothing to reassign
                self.scheduler.on_fraud(report.assignment.worker)
                entry.finish(failed="the receipt contradicts the tokens streamed")
            raise PouwError("report.result", "the result disagrees with the tokens it streamed")
        if entry.early is not None:
            self._check_early(entry, report, delivered)
        else:
            self.scheduler.on_receipt(report.result.receipt, self.now_ms())
        if entry.relay is not None and not entry.relay.started:
            self._first_token(entry)
        entry.finish(delivered)

    def on_early_result(self, peer: PeerId, early: EarlyResult) -> None:
        """An LLM job's output before its receipt (D94): checked against the stream and
        delivered to the client at once; the attempt is over (never reassigned), and
        the receipt is awaited until :meth:`receipt_due`."""
        entry = self._assignee_entry(peer, early.job_id, early.assignment_id)
        if entry.relay is None:
            raise PouwError("early.job_id", "not an LLM job")
        if self.tracker.chain.forced_error_bps <= 0:
            raise PouwError("early", "this chain has no forced errors: send the receipt")
        assignment = self.scheduler.assignment(early.job_id)
        assert assignment is not None
        try:
            require_signature(early, assignment.worker)
        except WireError as e:
            raise PouwError("early.signature", e.reason) from None
        tokens = early.output_token_ids
        if not tokens or len(tokens) > entry.relay.max_tokens:
            raise PouwError("early.output", f"expected 1 to {entry.relay.max_tokens} tokens")
        if any(t >= entry.relay.vocab_size for t in tokens):
            raise PouwError("early.output", "a token id outside the vocabulary")
        if not entry.relay.agrees(early.assignment_id, tokens):
            # Its receipt, when it comes, may contradict the signed chunks: keep them
            # for the evidence (D85) that the receipt path builds.
            self._contradicted[early.assignment_id] = entry.relay.copy()
            evict_over(self._contradicted, MAX_CONTRADICTED)
            entry.relay.drop()
            self._end_attempt(entry, assignment.worker, penalize=True)
            raise PouwError("early.output", "the output disagrees with the tokens it streamed")
        self.scheduler.on_delivered(early.job_id, assignment.worker, self.now_ms())
        entry.early, entry.delivered_at = early, self.tracker.chain.height
        if not entry.relay.started:
            self._first_token(entry)
        entry.answer_now()

    def _check_early(self, entry: GatewayJob, report: WorkReport, delivered: WorkReport) -> None:
        """The receipt of an output delivered early must be for that output (its true
        tokens, for a forced one): the client already has it. One that is not (a worker
        that told the client one thing and signed another; where its stream shows it,
        the stream evidence above was built) bars the worker from this gateway's jobs."""
        early = entry.early
        assert early is not None
        worker = report.result.receipt.signer
        if assignment_id(report.assignment) != early.assignment_id or worker != early.signer:
            # another attempt's receipt (a late first worker): not the one awaited
            raise PouwError("report.assignment", "not the attempt whose output was delivered")
        if tuple(delivered.result.output_token_ids) != tuple(early.output_token_ids):
            self.scheduler.on_fraud(worker)
            entry.finish(failed="the receipt contradicts the output delivered")
            raise PouwError("report.result", "the receipt contradicts the output delivered early")

    def receipt_due(self, jid: bytes, entry: GatewayJob) -> int:
        """The last height at which the receipt of an output delivered early is awaited
        (D94): ``RECEIPT_DUE_BLOCKS`` after the job's seed beacon block once it is final
        here, else ``BEACON_WAIT_BLOCKS`` + that after the delivery."""
        chain = self.tracker.chain
        committed = chain.committed_at(jid)
        if committed is not None and chain.beacon_at(committed + COMMITTEE_DELAY) is not None:
            return committed + COMMITTEE_DELAY + RECEIPT_DUE_BLOCKS
        return entry.delivered_at + BEACON_WAIT_BLOCKS + RECEIPT_DUE_BLOCKS

    def expire_unsigned(self, height: int) -> None:
        """End the jobs whose worker delivered an output and did not sign its receipt by
        :meth:`receipt_due` (D94): the client has its answer; the job is not
        reassigned, and is paid to nobody unless a block still certifies a receipt."""
        for jid, entry in list(self.jobs.items()):
            if entry.early is None or entry.done.is_set():
                continue
            if height > self.receipt_due(jid, entry):
                self.unsigned += 1
                self.scheduler.on_unsigned(entry.early.signer)
                log.warning(
                    "worker %s delivered job %s and never signed its receipt",
                    PeerId.from_public_key(entry.early.signer).short(),
                    jid.hex()[:12],
                )
                entry.finish(failed="the worker delivered the output but never signed it")

    def on_tokens(self, peer: PeerId, chunk: TokenChunk) -> None:
        """Tokens the assignee generated so far (D50); raises PouwError to refuse them."""
        entry = self._assignee_entry(peer, chunk.job_id, chunk.assignment_id)
        if entry.relay is None:
            raise PouwError("chunk.job_id", "not an LLM job")
        assignment = self.scheduler.assignment(chunk.job_id)
        assert assignment is not None
        try:  # signed by the assignee (D85): a chunk is a statement it answers for
            require_signature(chunk, assignment.worker)
        except WireError as e:
            raise PouwError("chunk.signature", e.reason) from None
        if entry.relay.accept(chunk.assignment_id, chunk.start, chunk.tokens, chunk):
            self._first_token(entry)

    def _junk_stream(self, relay: TokenRelay, aid: bytes, report: WorkReport) -> None:
        evidence = relay.evidence(aid, report.result)
        if evidence is None:
            return
        try:
            validate_stream_evidence(evidence)
        except PouwError as e:  # cannot happen for chunks we checked; never submit junk
            log.warning("stream evidence of job %s invalid: %s", report.job.id.hex()[:12], e)
            return
        log.warning(
            "worker %s streamed tokens its receipt contradicts (job %s): evidence for a block",
            PeerId.from_public_key(report.result.receipt.signer).short(),
            report.job.id.hex()[:12],
        )
        self.tracker.add_junk_stream(evidence)
        # Every proposer should carry it before the receipt's certificate: gossip it on
        # `receipts` (each node's tracker holds that certificate back while it waits).
        with contextlib.suppress(trio.WouldBlock):  # a burst: our own proposals carry it
            self._outbox.send_nowait(encode(evidence))

    def on_refusal(self, peer: PeerId, refusal: JobRefusal) -> None:
        """The assignee cannot run its assignment (D52): end the attempt now."""
        self._assignee_entry(peer, refusal.job_id, refusal.assignment_id)
        assignment = self.scheduler.assignment(refusal.job_id)
        assert assignment is not None
        self._refused(refusal.job_id, assignment.worker, refusal)

    def _assignee_entry(self, peer: PeerId, jid: bytes, aid: bytes) -> GatewayJob:
        """The open job ``jid`` if ``peer`` holds its current assignment ``aid``."""
        entry = self.jobs.get(jid)
        if entry is None or entry.done.is_set():
            raise PouwError("job_id", "no open job of this gateway")
        assignment = self.scheduler.assignment(jid)
        if assignment is None or assignment_id(assignment) != aid:
            raise PouwError("assignment_id", "not the job's current assignment")
        if PeerId.from_public_key(assignment.worker) != peer:
            raise PouwError("assignment_id", "sent by another peer than the assignee")
        return entry

    def _refused(self, jid: bytes, worker: bytes, refusal: JobRefusal) -> None:
        """End a refused attempt (D52). A refusal the gateway's own limits confirm fails
        the job at once (any worker would refuse it); any other goes to the next
        claimant. Neither costs reputation, unless the worker had already streamed
        tokens (then it is a failed attempt like any other)."""
        entry = self.jobs.get(jid)
        if entry is None or entry.done.is_set():
            return
        self.refusals.inc(code=str(refusal.code))
        log.info(
            "worker %s refused job %s (code %d): %s",
            PeerId.from_public_key(worker).short(),
            jid.hex()[:12],
            refusal.code,
            refusal.detail,
        )
        violation = None
        model = self.catalog.get(entry.job.model_id)
        if refusal.code == RefusalCode.OVER_LIMITS and model is not None:
            violation = job_violation(
                model.manifest, entry.job, self._prompt_tokens(model, entry.job)
            )
        if violation is not None:
            self.scheduler.fail(jid)
            entry.finish(failed=f"the job does not fit the model: {violation}")
            return
        streamed = entry.relay is not None and entry.relay.streamed_by(refusal.assignment_id)
        if streamed and entry.relay is not None:
            entry.relay.drop()
        self._end_attempt(entry, worker, penalize=bool(streamed), why=refusal.detail)

    def _end_attempt(self, entry: GatewayJob, worker: bytes, *, penalize: bool, why="") -> None:
        try:
            state = self.scheduler.end_attempt(job_id(entry.job), worker, penalize=penalize)
        except PouwError:
            return
        if state is JobState.FAILED:
            reason = f": {why}" if why else ""
            entry.finish(failed=f"no worker could run the job{reason}"[:300])

    def _prompt_tokens(self, model: KnownModel, job: Job) -> int | None:
        tokenizer = self.catalog.tokenizer(model) if job.llm is not None else None
        return len(tokenizer.encode(job.prompt)) if tokenizer else None

    def _first_token(self, entry: GatewayJob) -> None:
        self.ttft.observe(max(0, self.now_ms() - entry.job.created_ms) / 1000)
