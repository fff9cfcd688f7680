"""A small signed pouw world: a gateway, a worker, validators and a chain of finalized
block hashes, with builders for every record of one job's life.

The builders (:func:`signed_job`, :func:`signed_assignment`, :func:`signed_receipt`,
:func:`signed_verdict`) take the identities that sign, so that every kit builds its
records the same way: :class:`World` with its own gateway and worker, and
:mod:`aipg.testing.chainkit` with a chain's validators. The records hold fixed,
recognisable contents (the prompt "hello grid", prompt tokens 5 6 7, output tokens
9 10 11 12); a test changes the fields it is about.
"""

from __future__ import annotations

import hashlib

from aipg.models import DiffusionParams, ExecutionProfile, SamplingParams
from aipg.pouw import (
    Assignment,
    Certificate,
    Job,
    Receipt,
    Verdict,
    VerdictReason,
    assignment_id,
    committee_for,
    job_id,
    make_verdict,
    params_hash,
    work_units,
)
from aipg.pouw.records import input_hash_llm, output_hash_tokens
from aipg.wire import Identity, sign

# What every receipt claims the worker ran and produced.
PROMPT_IDS = (5, 6, 7)
OUTPUT_IDS = (9, 10, 11, 12)
LATENT_PIXELS = 64


def identity(label: str) -> Identity:
    """The identity named ``label`` (its seed is the label's SHA-256)."""
    return Identity.from_seed(hashlib.sha256(label.encode()).digest())


def signed_job(gateway: Identity, **over) -> Job:
    """A free-tier LLM job for 16 tokens, signed by ``gateway``; ``over`` replaces fields."""
    fields = dict(
        model_id=hashlib.sha256(b"model").digest(),
        prompt="hello grid",
        llm=SamplingParams(max_tokens=16),
        diffusion=None,
        seed=7,
        tier=0,
        fee=0,
        client=bytes(20),
        cost_milli=1000,
        created_ms=1_000,
        deadline_ms=61_000,
    )
    fields.update(over)
    return sign(Job(**fields), gateway)


def signed_assignment(
    gateway: Identity,
    job: Job,
    worker: Identity,
    *,
    height: int,
    assigned_ms: int = 2_000,
    deadline_ms: int = 30_000,
) -> Assignment:
    """``job`` assigned by ``gateway`` to ``worker`` (first attempt) at ``height``."""
    a = Assignment(
        job_id=job_id(job),
        worker=worker.public_bytes,
        height=height,
        attempt=0,
        assigned_ms=assigned_ms,
        deadline_ms=deadline_ms,
    )
    return sign(a, gateway)


def signed_receipt(
    worker: Identity, job: Job, assignment: Assignment, *, extra_output_tokens: int = 0, **over
) -> Receipt:
    """``worker``'s receipt for ``job``: the fixed token hashes, counts that fit the job's
    kind, and the work units those counts earn. ``extra_output_tokens`` claims that many
    more output tokens than the output hash covers (and is paid for them); ``over``
    replaces fields after the work units are computed."""
    llm = job.llm is not None
    counts = dict(
        prompt_tokens=len(PROMPT_IDS) if llm else 0,
        output_tokens=len(OUTPUT_IDS) + extra_output_tokens if llm else 0,
        steps=0 if llm else job.diffusion.steps,
        latent_pixels=0 if llm else LATENT_PIXELS,
    )
    fields = dict(
        job_id=job_id(job),
        model_id=job.model_id,
        assignment_id=assignment_id(assignment),
        input_hash=input_hash_llm(list(PROMPT_IDS)),
        params_hash=params_hash(job),
        seed=job.seed,
        profile=ExecutionProfile(
            ort_version="1.0",
            provider="CPUExecutionProvider",
            graph_optimization_level=99,
            threads=1,
            deterministic_compute=True,
            model_id=job.model_id,
        ),
        output_hash=output_hash_tokens(list(OUTPUT_IDS)),
        **counts,
        work_units=work_units(job.kind, job.cost_milli, **counts),
        elapsed_ms=100,
        first_output_ms=10,
        commitment=bytes(32),
    )
    fields.update(over)
    return sign(Receipt(**fields), worker)


def signed_verdict(validator: Identity, receipt: Receipt, valid: bool = True) -> Verdict:
    """``validator``'s verdict on ``receipt``: OK, or a token mismatch when not ``valid``."""
    reason = VerdictReason.OK if valid else VerdictReason.TOKEN_MISMATCH
    return make_verdict(validator, receipt, reason, recomputed=b"check")


class World:
    """One gateway, one worker, and ``n_validators`` validators with ``stakes`` (by
    default 10,000 AIPG times their index + 1); blocks 0-99 are finalized."""

    def __init__(self, n_validators: int = 7, stakes: list[int] | None = None):
        self.gateway = identity("gateway")
        self.worker = identity("worker")
        self.validators = [identity(f"validator-{i}") for i in range(n_validators)]
        stakes = stakes or [10_000 * 10**8 * (i + 1) for i in range(n_validators)]
        self.stakes = {v.public_bytes: s for v, s in zip(self.validators, stakes, strict=True)}
        self.by_key = {v.public_bytes: v for v in self.validators}
        self.block_hashes = {h: hashlib.sha256(b"block %d" % h).digest() for h in range(100)}
        # the beacon that draws this world's committees (on chain: D56's seed block's)
        self.beacon = hashlib.sha256(b"beacon").digest()

    def finalized_hash(self, height: int) -> bytes | None:
        return self.block_hashes.get(height)

    def llm_job(self, *, max_tokens: int = 16, seed: int = 7, **over) -> Job:
        fields = dict(llm=SamplingParams(max_tokens=max_tokens), seed=seed)
        fields.update(over)  # a diffusion job replaces llm
        return signed_job(self.gateway, **fields)

    def diffusion_job(self, *, steps: int = 20, **over) -> Job:
        return self.llm_job(
            llm=None, diffusion=DiffusionParams(steps=steps, width=64, height=64), **over
        )

    def assignment(self, job: Job, *, height: int = 10, worker: Identity | None = None):
        return signed_assignment(self.gateway, job, worker or self.worker, height=height)

    def receipt(self, job: Job, assignment: Assignment, **over) -> Receipt:
        return signed_receipt(self.worker, job, assignment, **over)

    def committee(self, job: Job, assignment: Assignment, size: int = 5):
        return committee_for(job, assignment, self.stakes, self.beacon, size=size)

    def verdict(self, key: bytes, receipt: Receipt, valid: bool = True) -> Verdict:
        return signed_verdict(self.by_key[key], receipt, valid)

    def certificate(self, *, size: int = 5, kind: str = "llm") -> Certificate:
        job = self.llm_job() if kind == "llm" else self.diffusion_job()
        a = self.assignment(job)
        r = self.receipt(job, a)
        committee = self.committee(job, a, size)
        verdicts = tuple(self.verdict(k, r) for k in sorted(committee.members))
        return Certificate(job, a, r, verdicts)
