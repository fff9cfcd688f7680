"""Committee verification re-runs steps with the model's own scheduler: DDIM (v-prediction,
trailing spacing) and Euler discrete (SDXL), on imported diffusers exports."""

from __future__ import annotations

import numpy as np
import pytest

from aipg.models import DiffusionParams, DiffusionRunner
from aipg.models.hf_diffusers import import_diffusers
from aipg.pouw import VerdictReason, receipt_id
from aipg.pouw.commitment import latent_digest
from aipg.pouw.execute import LatentStore, diffusion_result, latent_pixels, run_diffusion_job
from aipg.pouw.validate import make_challenge
from aipg.pouw.verify import verify_diffusion
from aipg.testing.diffusers_exports import DDIM_SD2_V, build_diffusers_export
from aipg.testing.world import World

W = World()
STEPS = 6


@pytest.fixture(scope="module", params=["ddim", "euler"])
def runner(request, tmp_path_factory) -> DiffusionRunner:
    root = tmp_path_factory.mktemp(request.param)
    if request.param == "ddim":
        src = build_diffusers_export(root / "src", scheduler=DDIM_SD2_V, timestep="int64")
    else:
        src = build_diffusers_export(root / "src", sdxl=True)
    r = DiffusionRunner(import_diffusers(src, root / "model"))
    assert r.interface.scheduler.kind == request.param
    return r


def job_for(runner: DiffusionRunner, seed: int = 3):
    return W.llm_job(
        model_id=runner.model.model_id,
        prompt="a lighthouse at dusk",
        llm=None,
        diffusion=DiffusionParams(steps=STEPS, guidance_milli=5000, width=64, height=48),
        seed=seed,
    )


def test_an_honest_job_verifies(runner):
    job = job_for(runner)
    a = W.assignment(job)
    result, latents = run_diffusion_job(runner, job, a, W.worker)
    assert result.receipt.steps == STEPS
    store = LatentStore()
    store.put_result(result, latents)
    for v in W.validators[:2]:
        challenge = make_challenge(v, receipt_id(result.receipt))
        check = verify_diffusion(runner, job, a, result, store.serve, challenge, k=STEPS)
        assert check.valid, check
        assert check.max_error < 1e-6


def test_a_tampered_latent_is_caught(runner):
    """The worker commits to a chain in which one step's latent is off (and the later steps
    follow honestly from it): re-running that step does not give it."""
    job = job_for(runner, seed=11)
    a = W.assignment(job)
    params = job.diffusion
    honest, latents = run_diffusion_job(runner, job, a, W.worker)
    bad_step = 3
    forged = latents[:bad_step]
    x = latents[bad_step] * np.float32(1.001)
    forged.append(x)
    cond = runner.encode_prompt(job.prompt, params)
    for i in range(bad_step, STEPS):
        x = runner.step(x, i, cond, params)
        forged.append(x)
    png = runner.decode(forged[-1])
    digests = tuple(latent_digest(z) for z in forged)
    result = diffusion_result(
        job, a, W.worker, runner.profile, latent_pixels(runner, job), png, digests
    )
    assert result.receipt.commitment != honest.receipt.commitment
    store = LatentStore()
    store.put_result(result, forged)
    challenge = make_challenge(W.validators[0], receipt_id(result.receipt))
    check = verify_diffusion(runner, job, a, result, store.serve, challenge, k=STEPS)
    assert check.reason == VerdictReason.STEP_MISMATCH, check
    assert f"step {bad_step} " in check.detail


def test_a_validator_with_another_scheduler_rejects(runner, tmp_path):
    """The schedule is part of the model: the same graphs under the legacy DDIM settings are
    another model id, so a job for one cannot be checked with the other."""
    job = job_for(runner)
    a = W.assignment(job)
    result, latents = run_diffusion_job(runner, job, a, W.worker)
    store = LatentStore()
    store.put_result(result, latents)
    other = build_diffusers_export(
        tmp_path / "src",
        sdxl=runner.interface.text_encoder_2 is not None,
        scheduler={**DDIM_SD2_V, "prediction_type": "epsilon"},
    )
    other_runner = DiffusionRunner(import_diffusers(other, tmp_path / "m"))
    challenge = make_challenge(W.validators[0], receipt_id(result.receipt))
    check = verify_diffusion(other_runner, job, a, result, store.serve, challenge, k=STEPS)
    assert check.reason == VerdictReason.BINDING and "another model" in check.detail
