"""The fraud matrix: randomized honest and fraudulent workers against the verifiers.

Used by tests/pouw/test_fraud_matrix.py (which asserts the rates) and by
bench/verify.py (which prints them). Each row builds fraudulent Results the way a
cheating worker would, on the demo models, and counts how many the validator rejects.
Rows that only tamper with an honest result derive their trials from a pool of honest
generations made once; rows that need another model run it per trial.
"""

from __future__ import annotations

import collections
import dataclasses
import zlib

import numpy as np

from aipg.models import DiffusionParams, SamplingParams
from aipg.pouw import Job, Result, VerdictReason, assignment_id, receipt_id
from aipg.pouw.commitment import commit_topk, latent_digest, llm_commitment_hash
from aipg.pouw.execute import LatentStore, diffusion_result, llm_result, run_diffusion_job
from aipg.pouw.records import job_id, output_hash_tokens, params_hash
from aipg.pouw.validate import make_challenge
from aipg.pouw.verify import verify_diffusion, verify_llm
from aipg.pouw.work import work_units
from aipg.wire import Identity, sign

from .models import DiffusionModels, LlmModels
from .world import World, identity

WORDS = [
    "grid",
    "power",
    "node",
    "worker",
    "job",
    "token",
    "model",
    "image",
    "light",
    "river",
    "stone",
    "cloud",
    "market",
    "useful",
    "work",
    "proof",
    "block",
    "chain",
    "peer",
    "gossip",
    "seed",
    "fox",
    "lamp",
    "tower",
    "garden",
]

COMMITTEE = [identity(f"matrix-validator-{i}") for i in range(5)]
# Equal stakes: no certificate once 2 of 5 members vote invalid (3/5 < 2/3).
COMMITTEE_BLOCKS = 2


@dataclasses.dataclass
class Row:
    """Outcome of one matrix row: trials and how many the verifier rejected."""

    name: str
    trials: int = 0
    rejected: int = 0
    reasons: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    # Diffusion rows: rejections by a committee of 5 with independent challenges.
    committee_rejected: int = 0

    def add(self, reason: VerdictReason) -> None:
        self.trials += 1
        self.rejected += reason != VerdictReason.OK
        self.reasons[reason.name] += 1

    @property
    def rate(self) -> float:
        return self.rejected / self.trials if self.trials else 0.0

    @property
    def committee_rate(self) -> float:
        return self.committee_rejected / self.trials if self.trials else 0.0


@dataclasses.dataclass
class Honest:
    job: Job
    assignment: object
    result: Result


class FraudMatrix:
    def __init__(self, llm: LlmModels, diffusion: DiffusionModels, seed: int = 5):
        self.llm = llm
        self.diff = diffusion
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self.world = World()
        self.worker: Identity = self.world.worker
        self._pool: list[Honest] = []

    def start(self, name: str) -> Row:
        """A new row, with its own random stream: each row's trials are the same
        whichever rows ran before it."""
        self.rng = np.random.default_rng([self.seed, zlib.crc32(name.encode())])
        return Row(name)

    # -- jobs ------------------------------------------------------------------------------

    def prompt(self) -> str:
        n = int(self.rng.integers(1, 7))
        return " ".join(self.rng.choice(WORDS, n))

    def sampling(self) -> SamplingParams:
        max_tokens = int(self.rng.integers(4, 13))
        if self.rng.random() < 0.5:
            return SamplingParams(max_tokens=max_tokens)
        return SamplingParams(
            max_tokens=max_tokens,
            temperature_milli=int(self.rng.integers(300, 1500)),
            top_k=int(self.rng.choice([0, 20, 100])),
            top_p_milli=int(self.rng.choice([1000, 950, 800])),
        )

    def llm_job(self, **over) -> Job:
        fields = dict(
            model_id=self.llm.real.model.model_id,
            prompt=self.prompt(),
            llm=self.sampling(),
            seed=int(self.rng.integers(0, 2**63)),
        )
        fields.update(over)
        return self.world.llm_job(**fields)

    def diffusion_job(self, steps: int | None = None) -> Job:
        side = int(self.rng.choice([32, 64]))
        params = DiffusionParams(
            steps=steps or int(self.rng.integers(4, 21)),
            guidance_milli=int(self.rng.choice([0, 7500])),
            width=side,
            height=side,
        )
        return self.world.llm_job(
            model_id=self.diff.real.model.model_id,
            prompt=self.prompt(),
            llm=None,
            diffusion=params,
            seed=int(self.rng.integers(0, 2**63)),
        )

    def validator(self):
        # The validator's own configuration varies too: any honest runner's prefill.
        runners = [self.llm.real, *self.llm.honest]
        return runners[int(self.rng.integers(len(runners)))]

    def verify(self, job: Job, a, result: Result) -> VerdictReason:
        return verify_llm(self.validator(), job, a, result).reason

    # -- honest ----------------------------------------------------------------------------

    def generate(self, runner, job: Job, a, *, logits_from=None) -> Result:
        """What a worker running ``runner`` returns, claiming the real model's profile.

        ``logits_from``: commit to logits of a prefill on this runner instead (the
        draft-model cheat)."""
        assert job.llm is not None
        prompt_ids = runner.tokenizer.encode(job.prompt)
        rows: list[np.ndarray] = []
        gen = runner.generate(
            prompt_ids, job.llm, job.seed, on_token=lambda e: rows.append(e.logits)
        )
        logits = np.stack(rows)
        if logits_from is not None:
            seq = prompt_ids + gen.token_ids[:-1]
            logits = logits_from.prefill(seq)[len(prompt_ids) - 1 :]
        return llm_result(
            job,
            a,
            self.worker,
            self.llm.real.profile,
            prompt_ids,
            gen.token_ids,
            gen.text,
            logits,
        )

    def honest_llm(self, trials: int) -> Row:
        row = self.start("honest_llm")
        for i in range(trials):
            job = self.llm_job()
            a = self.world.assignment(job)
            runner = self.llm.honest[i % len(self.llm.honest)]
            result = self.generate(runner, job, a)
            row.add(self.verify(job, a, result))
            if len(self._pool) < 120:
                self._pool.append(Honest(job, a, result))
        return row

    def pool(self) -> list[Honest]:
        if len(self._pool) < 100:
            rng = self.rng
            self.honest_llm(120)
            self.rng = rng
        return self._pool

    def pick(self) -> Honest:
        pool = self.pool()
        return pool[int(self.rng.integers(len(pool)))]

    def resign(self, h: Honest, **changes) -> Result:
        """``h``'s result with receipt fields changed and signed again by the worker."""
        receipt = sign(h.result.receipt.replace(**changes), self.worker)
        return h.result.replace(receipt=receipt)

    # -- LLM rows --------------------------------------------------------------------------

    def alter_token(self, trials: int) -> Row:
        """(1) One output token changed; everything re-hashed and re-signed."""
        row = self.start("alter_token")
        vocab = self.llm.real.interface.vocab_size
        for _ in range(trials):
            h = self.pick()
            out = list(h.result.output_token_ids)
            pos = int(self.rng.integers(len(out)))
            out[pos] = (out[pos] + int(self.rng.integers(1, vocab))) % vocab
            text = self.llm.real.tokenizer.decode(out)
            result = self.resign(h, output_hash=output_hash_tokens(out))
            result = result.replace(output_token_ids=tuple(out), text=text)
            row.add(self.verify(h.job, h.assignment, result))
        return row

    def run_other(self, name: str, runners, trials: int, **kw) -> Row:
        """(2), (3), (8): generate with another runner, claim the real model."""
        row = self.start(name)
        for i in range(trials):
            job = self.llm_job()
            a = self.world.assignment(job)
            result = self.generate(runners[i % len(runners)], job, a, **kw)
            row.add(self.verify(job, a, result))
        return row

    def other_model(self, trials: int) -> Row:
        return self.run_other("other_model", [self.llm.other], trials)

    def lower_precision(self, trials: int) -> Row:
        return self.run_other("lower_precision", [self.llm.fp16, self.llm.int8], trials)

    def draft_model(self, trials: int) -> Row:
        return self.run_other("draft_model", [self.llm.draft], trials, logits_from=self.llm.real)

    def inflate_counts(self, trials: int) -> Row:
        """(4) Claims more tokens than it generated: inflated counts, or padded outputs."""
        row = self.start("inflate_counts")
        for i in range(trials):
            h = self.pick()
            r, job = h.result.receipt, h.job
            extra = int(self.rng.integers(1, 6))
            if i % 3 == 0:  # the receipt counts more output tokens than the result has
                n = r.output_tokens + extra
                units = work_units(
                    job.kind, job.cost_milli, prompt_tokens=r.prompt_tokens, output_tokens=n
                )
                result = self.resign(h, output_tokens=n, work_units=units)
            elif i % 3 == 1:  # ... or more prompt tokens
                p = r.prompt_tokens + extra
                units = work_units(
                    job.kind, job.cost_milli, prompt_tokens=p, output_tokens=r.output_tokens
                )
                result = self.resign(h, prompt_tokens=p, work_units=units)
            else:  # generates fewer tokens, pads to max_tokens with made-up ones
                job, a, result = self._padded(extra)
                row.add(self.verify(job, a, result))
                continue
            row.add(self.verify(job, h.assignment, result))
        return row

    def _padded(self, extra: int):
        """A worker that runs ``max_tokens - extra`` tokens and makes up the rest, with
        commitment data to match."""
        vocab = self.llm.real.interface.vocab_size
        job = self.llm_job()
        a = self.world.assignment(job)
        m = job.llm.max_tokens
        short = job.replace(llm=job.llm.replace(max_tokens=max(1, m - extra)))
        prompt_ids = self.llm.real.tokenizer.encode(job.prompt)
        rows: list[np.ndarray] = []
        gen = self.llm.real.generate(
            prompt_ids, short.llm, job.seed, on_token=lambda e: rows.append(e.logits)
        )
        pad = [int(t) for t in self.rng.integers(0, vocab, m - len(gen.token_ids))]
        out = gen.token_ids + pad
        fake = self.rng.normal(0, 1, (len(pad), vocab)).astype(np.float32)
        logits = np.concatenate([np.stack(rows), fake])
        text = self.llm.real.tokenizer.decode(out)
        profile = self.llm.real.profile
        return job, a, llm_result(job, a, self.worker, profile, prompt_ids, out, text, logits)

    def fabricate_commitment(self, trials: int) -> Row:
        """(5) Real tokens, made-up commitment (random, noisy, another model's, shifted)."""
        row = self.start("fabricate_commitment")
        for i in range(trials):
            h = self.pick()
            prompt = list(h.result.prompt_token_ids)
            out = list(h.result.output_token_ids)
            n = len(out)
            kind = i % 4
            if kind == 0:
                data = self.rng.bytes(8 * n)
            else:
                base = self.llm.real.prefill(prompt + out[:-1])[len(prompt) - 1 :]
                if kind == 1:  # the right logits, blurred: values it did not compute
                    logits = base + self.rng.normal(0, 1e-3, base.shape).astype(np.float32)
                elif kind == 2:  # a cheaper model's logits on the same tokens
                    logits = self.llm.draft.prefill(prompt + out[:-1])[len(prompt) - 1 :]
                else:  # logits of the wrong positions
                    logits = np.roll(base, 1, axis=0) if n > 1 else base[:, ::-1].copy()
                data = commit_topk(logits)
            result = self.resign(h, commitment=llm_commitment_hash(data))
            row.add(self.verify(h.job, h.assignment, result.replace(commitment_data=data)))
        return row

    def replay(self, trials: int) -> Row:
        """(6) A result made for one job handed in for another."""
        row = self.start("replay")
        for i in range(trials):
            h = self.pick()
            if i % 2 == 0:  # another prompt
                job = self.llm_job(llm=h.job.llm)
            else:  # same prompt and sampling, another seed: sampled tokens differ
                params = h.job.llm.replace(temperature_milli=1000)
                job = self.llm_job(prompt=h.job.prompt, llm=params)
            a = self.world.assignment(job)
            if i % 4 < 2:
                result = h.result  # the receipt as it was
            else:  # re-bound to the new job and signed again
                result = self.resign(
                    h,
                    job_id=job_id(job),
                    assignment_id=assignment_id(a),
                    params_hash=params_hash(job),
                    seed=job.seed,
                )
            row.add(self.verify(job, a, result))
        return row

    # -- diffusion ---------------------------------------------------------------------------

    def honest_diffusion(self, trials: int) -> Row:
        row = self.start("honest_diffusion")
        for i in range(trials):
            job = self.diffusion_job()
            a = self.world.assignment(job)
            runner = self.diff.honest[i % len(self.diff.honest)]
            result, latents = run_diffusion_job(runner, job, a, self.worker)
            self._committee_check(row, job, a, result, latents, runner=self.diff.real)
        return row

    def _committee_check(self, row: Row, job, a, result, latents, runner=None) -> None:
        """Verify with every member of a 5-validator committee (own challenges); the row
        counts one verifier's verdict, and the committee's outcome separately."""
        store = LatentStore()
        store.put_result(result, latents)
        rid = receipt_id(result.receipt)
        reasons = [
            verify_diffusion(
                runner or self.diff.real, job, a, result, store.serve, make_challenge(v, rid)
            ).reason
            for v in COMMITTEE
        ]
        row.add(reasons[0])
        invalid = sum(r != VerdictReason.OK for r in reasons)
        row.committee_rejected += invalid >= COMMITTEE_BLOCKS

    def _denoise(self, runner, job: Job, step_fn) -> tuple[list[np.ndarray], bytes]:
        """Latents 0..n of a custom denoising loop, and the decoded image."""
        params = job.diffusion
        cond = runner.encode_prompt(job.prompt, params)
        latents = [runner.initial_latent(job.seed, params)]
        for i in range(params.steps):
            latents.append(step_fn(latents, i, lambda x, i=i: runner.step(x, i, cond, params)))
        return latents, runner.decode(latents[-1])

    def _cheat_result(self, job: Job, a, latents, png) -> Result:
        digests = [latent_digest(x) for x in latents]
        _, _, h, w = self.diff.real.latent_shape(job.diffusion)
        return diffusion_result(job, a, self.worker, self.diff.real.profile, h * w, png, digests)

    def skip_steps(self, trials: int, kind: int) -> Row:
        """(7) Skips or reuses diffusion steps, three ways:

        - reuse: some steps copy the latent before them (no UNet run);
        - interpolate: run half the steps (a DDIM schedule of n/2) and fill in the rest
          as midpoints, so every step is wrong;
        - extrapolate: skip every other step, guessing x_i = 2 x_{i-1} - x_{i-2}.
        """
        row = self.start(f"skip_steps_{('reuse', 'interpolate', 'extrapolate')[kind]}")
        runner = self.diff.real
        for _ in range(trials):
            job = self.diffusion_job(steps=2 * int(self.rng.integers(3, 11)))
            a = self.world.assignment(job)
            n = job.diffusion.steps
            if kind == 0:
                skipped = set(self.rng.choice(np.arange(n), int(self.rng.integers(1, n // 2))))
                latents, png = self._denoise(
                    runner,
                    job,
                    lambda ls, i, step, skipped=skipped: (
                        ls[-1].copy() if i in skipped else step(ls[-1])
                    ),
                )
            elif kind == 1:
                half: list[np.ndarray] = []
                runner.generate(
                    job.prompt,
                    job.diffusion.replace(steps=n // 2),
                    job.seed,
                    on_step=lambda e, half=half: half.append(e.latent),
                )
                start = runner.initial_latent(job.seed, job.diffusion)
                coarse = [start, *half]
                latents = [start]
                for j in range(n // 2):
                    latents.append((coarse[j] + coarse[j + 1]) / np.float32(2))
                    latents.append(coarse[j + 1])
                png = runner.decode(latents[-1])
            else:
                latents, png = self._denoise(
                    runner,
                    job,
                    lambda ls, i, step: (
                        np.float32(2) * ls[-1] - ls[-2] if i % 2 == 1 else step(ls[-1])
                    ),
                )
            self._committee_check(row, job, a, self._cheat_result(job, a, latents, png), latents)
        return row

    def diffusion_other_model(self, trials: int, fp16: bool = False) -> Row:
        """(2)/(3) for diffusion: other weights or fp16 weights, claiming the real model."""
        row = self.start("diffusion_fp16" if fp16 else "diffusion_other_model")
        runner = self.diff.fp16 if fp16 else self.diff.other
        for _ in range(trials):
            job = self.diffusion_job()
            a = self.world.assignment(job)
            latents, png = self._denoise(runner, job, lambda ls, i, step: step(ls[-1]))
            self._committee_check(row, job, a, self._cheat_result(job, a, latents, png), latents)
        return row


def as_json(rows: list[Row]) -> dict:
    return {
        r.name: {
            "trials": r.trials,
            "rejected": r.rejected,
            "rate": round(r.rate, 4),
            **({"committee_rate": round(r.committee_rate, 4)} if r.committee_rejected else {}),
            "reasons": dict(r.reasons),
        }
        for r in rows
    }
