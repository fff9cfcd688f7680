"""The worker side: run an assigned job, commit to its execution, sign the receipt.

:func:`run_llm_job` and :func:`run_diffusion_job` take a loaded runner (aipg.models), the
job and its assignment, and return the :class:`Result` (with the signed Receipt inside).
A diffusion worker also gets the per-step latents, which it keeps in a
:class:`LatentStore` until the receipt is final, to serve validators' challenges.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Sequence

import numpy as np

from aipg.models import DiffusionRunner, ExecutionProfile, LlmRunner, StepEvent, TokenEvent
from aipg.wire import Identity, sign

from .bounds import evict_over
from .commitment import chain_head, commit_topk, latent_digest, llm_commitment_hash
from .errors import PouwError
from .records import (
    Assignment,
    Job,
    LatentReply,
    LatentRequest,
    Receipt,
    Result,
    assignment_id,
    input_hash_diffusion,
    input_hash_llm,
    job_id,
    output_hash_image,
    output_hash_tokens,
    params_hash,
    receipt_id,
)
from .work import work_units

__all__ = [
    "LatentStore",
    "diffusion_result",
    "latent_pixels",
    "llm_result",
    "run_diffusion_job",
    "run_llm_job",
]


def _ms(ns: int) -> int:
    return min(2**32 - 1, ns // 1_000_000)


def run_llm_job(
    runner: LlmRunner,
    job: Job,
    assignment: Assignment,
    identity: Identity,
    on_token: Callable[[int, int], None] | None = None,
) -> Result:
    """Generate the job's tokens, committing to the top-k logits of every position.

    ``on_token(index, token_id)`` hears every token as soon as it is chosen (the worker
    streams them to the gateway); it runs on the generating thread.

    Raises PouwError when the job is not an LLM job for this model, ModelError (from the
    runner) when the prompt does not fit the model.
    """
    _check_job(job, assignment, identity, runner.model.model_id)
    if job.llm is None:
        raise PouwError("job.llm", "not an LLM job")
    prompt_ids = runner.tokenizer.encode(job.prompt)
    rows: list[np.ndarray] = []
    first: list[int] = []
    start = time.perf_counter_ns()

    def on_event(event: TokenEvent) -> None:
        if not first:
            first.append(time.perf_counter_ns())
        rows.append(event.logits)
        if on_token is not None:
            on_token(event.index, event.token_id)

    gen = runner.generate(prompt_ids, job.llm, job.seed, on_token=on_event)
    elapsed = time.perf_counter_ns() - start
    return llm_result(
        job,
        assignment,
        identity,
        runner.profile,
        prompt_ids,
        gen.token_ids,
        gen.text,
        np.stack(rows),
        elapsed_ns=elapsed,
        first_ns=first[0] - start,
    )


def llm_result(
    job: Job,
    assignment: Assignment,
    identity: Identity,
    profile: ExecutionProfile,
    prompt_ids: Sequence[int],
    token_ids: Sequence[int],
    text: str,
    logits: np.ndarray,
    *,
    elapsed_ns: int = 0,
    first_ns: int = 0,
) -> Result:
    """The signed Result of an LLM job from its tokens and the (n, vocab) logits that
    produced them."""
    data = commit_topk(logits)
    receipt = Receipt(
        job_id=job_id(job),
        model_id=job.model_id,
        assignment_id=assignment_id(assignment),
        input_hash=input_hash_llm(prompt_ids),
        params_hash=params_hash(job),
        seed=job.seed,
        profile=profile,
        output_hash=output_hash_tokens(token_ids),
        prompt_tokens=len(prompt_ids),
        output_tokens=len(token_ids),
        steps=0,
        latent_pixels=0,
        work_units=work_units(
            job.kind, job.cost_milli, prompt_tokens=len(prompt_ids), output_tokens=len(token_ids)
        ),
        elapsed_ms=_ms(elapsed_ns),
        first_output_ms=_ms(first_ns),
        commitment=llm_commitment_hash(data),
    )
    return Result(
        receipt=sign(receipt, identity),
        prompt_token_ids=tuple(prompt_ids),
        output_token_ids=tuple(token_ids),
        text=text,
        commitment_data=data,
        image=b"",
        latent_digests=(),
    )


def latent_pixels(runner: DiffusionRunner, job: Job) -> int:
    """Latent height x width of a diffusion job on this model (what work units count)."""
    assert job.diffusion is not None
    _, _, h, w = runner.latent_shape(job.diffusion)
    return h * w


def run_diffusion_job(
    runner: DiffusionRunner, job: Job, assignment: Assignment, identity: Identity
) -> tuple[Result, list[np.ndarray]]:
    """Generate the job's image, chaining a hash over every step's latent.

    Returns the Result and the latents (index 0 = initial, n = final), which the worker
    keeps (:class:`LatentStore`) until the receipt is final.
    """
    _check_job(job, assignment, identity, runner.model.model_id)
    params = job.diffusion
    if params is None:
        raise PouwError("job.diffusion", "not a diffusion job")
    latents: list[np.ndarray] = []
    first: list[int] = []
    start = time.perf_counter_ns()

    def on_step(event: StepEvent) -> None:
        if not first:
            first.append(time.perf_counter_ns())
        latents.append(event.latent)

    out = runner.generate(job.prompt, params, job.seed, on_step=on_step)
    elapsed = time.perf_counter_ns() - start
    latents.insert(0, out.latents_initial)
    digests = tuple(latent_digest(x) for x in latents)
    result = diffusion_result(
        job,
        assignment,
        identity,
        runner.profile,
        latent_pixels(runner, job),
        out.png,
        digests,
        elapsed_ns=elapsed,
        first_ns=first[0] - start,
    )
    return result, latents


def diffusion_result(
    job: Job,
    assignment: Assignment,
    identity: Identity,
    profile: ExecutionProfile,
    pixels: int,
    png: bytes,
    digests: Sequence[bytes],
    *,
    elapsed_ns: int = 0,
    first_ns: int = 0,
) -> Result:
    """The signed Result of a diffusion job from its image and latent digests
    (index 0 = initial latent); ``pixels`` is the latent height x width."""
    assert job.diffusion is not None
    receipt = Receipt(
        job_id=job_id(job),
        model_id=job.model_id,
        assignment_id=assignment_id(assignment),
        input_hash=input_hash_diffusion(job.prompt, job.diffusion.negative_prompt),
        params_hash=params_hash(job),
        seed=job.seed,
        profile=profile,
        output_hash=output_hash_image(png),
        prompt_tokens=0,
        output_tokens=0,
        steps=len(digests) - 1,
        latent_pixels=pixels,
        work_units=work_units(
            job.kind, job.cost_milli, steps=len(digests) - 1, latent_pixels=pixels
        ),
        elapsed_ms=_ms(elapsed_ns),
        first_output_ms=_ms(first_ns),
        commitment=chain_head(digests),
    )
    return Result(
        receipt=sign(receipt, identity),
        prompt_token_ids=(),
        output_token_ids=(),
        text="",
        commitment_data=b"",
        image=png,
        latent_digests=tuple(digests),
    )


def _check_job(job: Job, assignment: Assignment, identity: Identity, model_id: bytes) -> None:
    if assignment.job_id != job_id(job):
        raise PouwError("assignment.job_id", "assignment is for another job")
    if assignment.worker != identity.public_bytes:
        raise PouwError("assignment.worker", "job is assigned to another worker")
    if job.model_id != model_id:
        raise PouwError("job.model_id", "this runner hosts another model")


# Diffusion receipts whose latents a worker keeps: a worker runs one job at a time, so
# this many covers the receipts its committees are still checking (a few blocks' worth).
MAX_KEPT_LATENTS = 64


class LatentStore:
    """The latents of a worker's diffusion receipts, kept until each receipt is final.

    Bounded: at most ``capacity`` receipts; the oldest is dropped first (a receipt
    whose latents are gone can no longer be verified, so size it above the number of
    receipts awaiting certification).
    """

    def __init__(self, capacity: int = MAX_KEPT_LATENTS):
        self.capacity = capacity
        self._latents: OrderedDict[bytes, list[bytes]] = OrderedDict()

    def put(self, receipt_id_: bytes, latents: Sequence[np.ndarray]) -> None:
        self._latents[receipt_id_] = [np.ascontiguousarray(x, "<f4").tobytes() for x in latents]
        self._latents.move_to_end(receipt_id_)
        evict_over(self._latents, self.capacity)

    def __len__(self) -> int:
        return len(self._latents)

    def put_result(self, result: Result, latents: Sequence[np.ndarray]) -> None:
        self.put(receipt_id(result.receipt), latents)

    def release(self, receipt_id_: bytes) -> None:
        """The receipt is final (certified or convicted): its latents may go."""
        self._latents.pop(receipt_id_, None)

    def serve(self, request: LatentRequest) -> LatentReply:
        """The latents a validator asked for. Raises PouwError for an unknown receipt or
        a step out of range."""
        stored = self._latents.get(request.receipt_id)
        if stored is None:
            raise PouwError("latent_request.receipt_id", "no latents kept for this receipt")
        bad = [s for s in request.steps if s >= len(stored)]
        if bad:
            raise PouwError("latent_request.steps", f"step {bad[0]} is out of range")
        return LatentReply(
            receipt_id=request.receipt_id,
            steps=request.steps,
            latents=tuple(stored[s] for s in request.steps),
        )
