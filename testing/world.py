"""A small signed pouw world: a gateway, a worker, validators and a chain of finalized
block hashes, with builders for every record of one job's life."""

from __future__ import annotations

import hashlib

from aipg.models import DiffusionParams, ExecutionProfile, SamplingParams
from aipg.pouw import (
    Assignment,
    Certificate,
    Job,
    Receipt,
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


def identity(label: str) -> Identity:
    return Identity.from_seed(hashlib.sha256(label.encode()).digest())


class World:
    def __init__(self, n_validators: int = 7, stakes: list[int] | None = None):
        self.gateway = identity("gateway")
        self.worker = identity("worker")
        self.validators = [identity(f"validator-{i}") for i in range(n_validators)]
        stakes = stakes or [10_000 * 10**8 * (i + 1) for i in range(n_validators)]
        self.stakes = {v.public_bytes: s for v, s in zip(self.validators, stakes, strict=True)}
        self.by_key = {v.public_bytes: v for v in self.validators}
        self.block_hashes = {h: hashlib.sha256(b"block %d" % h).digest() for h in range(100)}

    def finalized_hash(self, height: int) -> bytes | None:
        return self.block_hashes.get(height)

    def llm_job(self, *, max_tokens: int = 16, seed: int = 7, **over) -> Job:
        fields = dict(
            model_id=hashlib.sha256(b"model").digest(),
            prompt="hello grid",
            llm=SamplingParams(max_tokens=max_tokens),
            diffusion=None,
            seed=seed,
            tier=0,
            fee=0,
            client=bytes(20),
            cost_milli=1000,
            created_ms=1_000,
            deadline_ms=61_000,
        )
        fields.update(over)
        return sign(Job(**fields), self.gateway)

    def diffusion_job(self, *, steps: int = 20, **over) -> Job:
        return self.llm_job(
            llm=None, diffusion=DiffusionParams(steps=steps, width=64, height=64), **over
        )

    def assignment(self, job: Job, *, height: int = 10, worker: Identity | None = None):
        a = Assignment(
            job_id=job_id(job),
            worker=(worker or self.worker).public_bytes,
            height=height,
            attempt=0,
            assigned_ms=2_000,
            deadline_ms=30_000,
        )
        return sign(a, self.gateway)

    def receipt(self, job: Job, assignment: Assignment, **over) -> Receipt:
        prompt_ids = [5, 6, 7]
        out_ids = [9, 10, 11, 12]
        llm = job.llm is not None
        counts = dict(
            prompt_tokens=len(prompt_ids) if llm else 0,
            output_tokens=len(out_ids) if llm else 0,
            steps=0 if llm else job.diffusion.steps,
            latent_pixels=0 if llm else 64,
        )
        fields = dict(
            job_id=job_id(job),
            model_id=job.model_id,
            assignment_id=assignment_id(assignment),
            input_hash=input_hash_llm(prompt_ids),
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
            output_hash=output_hash_tokens(out_ids),
            **counts,
            work_units=work_units(job.kind, job.cost_milli, **counts),
            elapsed_ms=100,
            first_output_ms=10,
            commitment=bytes(32),
        )
        fields.update(over)
        return sign(Receipt(**fields), self.worker)

    def committee(self, job: Job, assignment: Assignment, size: int = 5):
        return committee_for(job_id(job), assignment, self.stakes, self.finalized_hash, size=size)

    def verdict(self, key: bytes, receipt: Receipt, valid: bool = True):
        reason = VerdictReason.OK if valid else VerdictReason.TOKEN_MISMATCH
        return make_verdict(self.by_key[key], receipt, reason, recomputed=b"check")

    def certificate(self, *, size: int = 5, kind: str = "llm") -> Certificate:
        job = self.llm_job() if kind == "llm" else self.diffusion_job()
        a = self.assignment(job)
        r = self.receipt(job, a)
        committee = self.committee(job, a, size)
        verdicts = tuple(self.verdict(k, r) for k in sorted(committee))
        return Certificate(job, a, r, verdicts)
