"""Benchmark: what verifying costs relative to the work, and the fraud matrix's rates.

Prints one JSON object as its last line:

- ``llm_verify_ratio``: validator CPU time / worker CPU time for a 128-token LLM job
  (median of several jobs; target <= 0.10), on the demo LLM built at d_model 512 / 4
  layers, where decoding is bound by reading the weights as in real models; and
  ``llm_verify_ratio_test_model`` on the tiny test model (d_model 96), where a decode
  step costs about what a prefill token costs, so no prefill-based check reaches 0.10;
- ``diffusion_verify_ratio``: the same for a 20-step 64x64 diffusion job with k = 3
  re-run steps (target <= 0.20), and ``diffusion_verify_ratio_without_decode`` (both
  sides less their decode: the validator's pixels, the worker's pixels and PNG). As in
  Stable Diffusion, the demo's UNet dominates: its VAE decode costs about one UNet
  forward pass (under half a guided step) and a step is not dominated by per-call
  overhead, so the ratio approaches (3 + decode) / (20 + decode) steps;
- ``commitment_bytes_per_token`` (target <= 8);
- ``tolerances``: each tolerance, the largest honest deviation measured (threads 1/2,
  optimization levels 0/99, KV cache vs prefill) and the margin between them;
- ``matrix``: detection rate per fraud-matrix row and the honest rejection rates.

Run: ``.venv/bin/python bench/verify.py [--trials 100] [--honest 1000]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from aipg.models import DiffusionParams, LlmRunner, SamplingParams, build_demo_llm
from aipg.pouw import receipt_id
from aipg.pouw.commitment import TIE_TOLERANCE, VALUE_TOLERANCE
from aipg.pouw.execute import LatentStore, run_diffusion_job, run_llm_job
from aipg.pouw.validate import make_challenge
from aipg.pouw.verify import (
    IMAGE_TOLERANCE,
    STEP_TOLERANCE,
    verify_diffusion,
    verify_llm,
)
from aipg.testing.fraud_matrix import FraudMatrix, as_json
from aipg.testing.models import build_diffusion_models, build_llm_models
from aipg.testing.world import World

W = World()


def cpu(fn):
    start = time.process_time()
    out = fn()
    return time.process_time() - start, out


def llm_ratio(runner, reps: int) -> tuple[float, float, float]:
    """Median validator/worker CPU ratio for 128 generated tokens (sampled at
    temperature 0.7), bytes per token, and the worker's CPU seconds."""
    ratios, per_token, worker_s = [], [], []
    for i in range(4 * reps):
        if len(ratios) == reps:
            break
        job = W.llm_job(
            model_id=runner.model.model_id,
            prompt=f"benchmark prompt number {i} about the grid",
            llm=SamplingParams(max_tokens=128, temperature_milli=700),
            seed=i,
        )
        a = W.assignment(job)
        work, result = cpu(lambda job=job, a=a: run_llm_job(runner, job, a, W.worker))
        if result.receipt.output_tokens != 128:
            continue  # this seed drew end-of-sequence early: not a 128-token job
        check_s, check = cpu(lambda job=job, a=a, r=result: verify_llm(runner, job, a, r))
        assert check.valid, check
        ratios.append(check_s / work)
        worker_s.append(work)
        per_token.append(len(result.commitment_data) / result.receipt.output_tokens)
    return statistics.median(ratios), statistics.median(per_token), statistics.median(worker_s)


def diffusion_ratio(models, reps: int) -> tuple[float, float]:
    """Median validator/worker CPU ratio for 20 steps, k = 3; and without the decode."""
    ratios, without = [], []
    runner = models.real
    for i in range(reps):
        job = W.llm_job(
            model_id=runner.model.model_id,
            prompt=f"a lighthouse, study {i}",
            llm=None,
            diffusion=DiffusionParams(steps=20, width=64, height=64),
            seed=i,
        )
        a = W.assignment(job)
        work, (result, latents) = cpu(
            lambda job=job, a=a: run_diffusion_job(runner, job, a, W.worker)
        )
        store = LatentStore()
        store.put_result(result, latents)
        challenge = make_challenge(W.validators[i % len(W.validators)], receipt_id(result.receipt))
        check_s, check = cpu(
            lambda job=job, a=a, r=result, s=store, c=challenge: verify_diffusion(
                runner, job, a, r, s.serve, c
            )
        )
        assert check.valid, check
        pixels_s, _ = cpu(lambda latents=latents: runner.decode_pixels(latents[-1]))
        decode_s, _ = cpu(lambda latents=latents: runner.decode(latents[-1]))
        ratios.append(check_s / work)
        without.append((check_s - pixels_s) / (work - decode_s))
    return statistics.median(ratios), statistics.median(without)


def diffusion_profile(runner, reps: int = 15) -> dict:
    """Median CPU milliseconds of each part of a 64x64 guided job: the text encoder, one
    UNet step (two forward passes), the VAE decode to pixels, and the PNG encoding."""
    params = DiffusionParams(steps=20, width=64, height=64)
    cond = runner.encode_prompt("a lighthouse", params)
    latent = runner.initial_latent(1, params)

    def ms(fn) -> float:
        fn()  # warm
        return 1e3 * statistics.median(cpu(fn)[0] for _ in range(reps))

    step = ms(lambda: runner.step(latent, 3, cond, params))
    pixels = ms(lambda: runner.decode_pixels(latent))
    return {
        "text_encoder_ms": round(ms(lambda: runner.encode_prompt("a lighthouse", params)), 3),
        "unet_step_ms": round(step, 3),
        "vae_decode_ms": round(pixels, 3),
        "png_encode_ms": round(ms(lambda: runner.decode(latent)) - pixels, 3),
        "vae_decode_in_steps": round(pixels / step, 3),
    }


def llm_tolerances(models, prompts: int) -> dict:
    """Largest logit difference between any honest worker path and validator prefill,
    and the smallest per-job deviation of an fp16 worker (what the tolerance must catch)."""
    honest_max = 0.0
    fp16_job_max = []
    params = SamplingParams(max_tokens=16)
    for i in range(prompts):
        prompt = models.real.tokenizer.encode(f"tolerance probe {i} for the useful work grid")
        ref_rows = None
        for runner in models.honest:
            rows = []
            gen = runner.generate(
                prompt, params, i, on_token=lambda e, rows=rows: rows.append(e.logits)
            )
            seq = prompt + gen.token_ids[:-1]
            if ref_rows is None:
                ref_rows = models.real.prefill(seq)[len(prompt) - 1 :]
            honest_max = max(honest_max, float(np.abs(np.stack(rows) - ref_rows).max()))
            honest_max = max(
                honest_max,
                float(np.abs(runner.prefill(seq)[len(prompt) - 1 :] - ref_rows).max()),
            )
        rows = []
        gen = models.fp16.generate(
            prompt, params, i, on_token=lambda e, rows=rows: rows.append(e.logits)
        )
        ref = models.real.prefill(prompt + gen.token_ids[:-1])[len(prompt) - 1 :]
        top = np.argsort(-ref, axis=1)[:, :4]
        dev = np.abs(np.take_along_axis(np.stack(rows) - ref, top, axis=1))
        fp16_job_max.append(float(dev.max()))
    return {
        "value_tolerance": VALUE_TOLERANCE,
        "tie_tolerance": TIE_TOLERANCE,
        "honest_max_logit_diff": honest_max,
        "honest_margin": VALUE_TOLERANCE / honest_max if honest_max else None,
        "fp16_min_job_deviation": min(fp16_job_max),
        "fp16_median_job_deviation": statistics.median(fp16_job_max),
    }


def diffusion_tolerances(models, jobs: int) -> dict:
    """Largest honest deviation of a re-run step (other threads / levels), relative to
    the latent's scale, and of the decoded image; and what fp16 weights give."""
    honest, fp16, image_max = [], [], 0
    ref = models.real
    for i in range(jobs):
        params = DiffusionParams(steps=10, width=64, height=64)
        latents = []
        out = ref.generate(
            f"probe {i}", params, i, on_step=lambda e, ls=latents: ls.append(e.latent)
        )
        latents.insert(0, out.latents_initial)
        for runner, acc in [*((r, honest) for r in models.honest), (models.fp16, fp16)]:
            cond = runner.encode_prompt(f"probe {i}", params)
            for s in range(params.steps):
                x = runner.step(latents[s], s, cond, params)
                scale = max(1.0, float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))))
                acc.append(float(np.abs(x - latents[s + 1]).max()) / scale)
        for runner in models.honest:
            a = np.asarray(_png(runner.decode(latents[-1])), np.int16)
            image_max = max(image_max, int(np.abs(a - np.asarray(_png(out.png), np.int16)).max()))
    return {
        "step_tolerance": STEP_TOLERANCE,
        "honest_max_step_diff": max(honest),
        "honest_margin": STEP_TOLERANCE / max(honest) if max(honest) else None,
        "fp16_steps_over_tolerance": sum(d > STEP_TOLERANCE for d in fp16) / len(fp16),
        "image_tolerance": IMAGE_TOLERANCE,
        "honest_max_image_diff": image_max,
    }


def _png(data: bytes):
    import io

    from PIL import Image

    return Image.open(io.BytesIO(data)).convert("RGB")


def matrix_rates(llm, diffusion, trials: int, honest: int) -> dict:
    m = FraudMatrix(llm, diffusion)
    rows = [
        m.honest_llm(honest),
        m.honest_diffusion(trials),
        m.alter_token(trials),
        m.other_model(trials),
        m.lower_precision(trials),
        m.inflate_counts(trials),
        m.fabricate_commitment(trials),
        m.replay(trials),
        m.skip_steps(trials, 0),
        m.skip_steps(trials, 1),
        m.skip_steps(trials, 2),
        m.draft_model(trials),
        m.diffusion_other_model(trials),
        m.diffusion_other_model(trials, fp16=True),
    ]
    return as_json(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=100, help="trials per fraud row")
    ap.add_argument("--honest", type=int, default=1000, help="honest LLM trials")
    ap.add_argument("--reps", type=int, default=9, help="jobs per cost ratio (median)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        llm = build_llm_models(Path(tmp) / "llm")
        diffusion = build_diffusion_models(Path(tmp) / "diffusion")
        # The test-size demo LLM (d_model 96) is so small that one decode step costs
        # about what one token of prefill costs; a model of d_model 512, built by the
        # same builder, is where decoding is bound by reading the weights, as it is for
        # every real LLM, and prefill is the cheap pass the verifier relies on.
        bench_dir = build_demo_llm(Path(tmp) / "llm-bench", d_model=512, layers=4, d_ff=2048)
        llm_r, bytes_per_token, worker_s = llm_ratio(LlmRunner(bench_dir), args.reps)
        small_r, _, small_worker_s = llm_ratio(llm.real, args.reps)
        diff_r, diff_r_nodecode = diffusion_ratio(diffusion, args.reps)
        diff_profile = diffusion_profile(diffusion.real)
        tolerances = {
            "llm": llm_tolerances(llm, 20),
            "diffusion": diffusion_tolerances(diffusion, 3),
        }
        matrix = matrix_rates(llm, diffusion, args.trials, args.honest)
    report = {
        "llm_verify_ratio": round(llm_r, 4),
        "llm_worker_cpu_s_128_tokens": round(worker_s, 4),
        "llm_verify_ratio_test_model": round(small_r, 4),
        "llm_test_model_worker_cpu_s_128_tokens": round(small_worker_s, 4),
        "diffusion_verify_ratio": round(diff_r, 4),
        "diffusion_verify_ratio_without_decode": round(diff_r_nodecode, 4),
        "diffusion_profile": diff_profile,
        "commitment_bytes_per_token": bytes_per_token,
        "tolerances": tolerances,
        "matrix": {
            k: {
                "trials": v["trials"],
                "rate": v["rate"],
                **({"committee_rate": v["committee_rate"]} if "committee_rate" in v else {}),
            }
            for k, v in matrix.items()
        },
    }
    for name, row in matrix.items():
        print(f"{name:28s} {row['rejected']:5d}/{row['trials']:<5d} {row['reasons']}")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
