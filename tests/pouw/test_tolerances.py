"""The tolerances sit well above honest variation and below what cheaper compute gives.

Honest paths: thread counts 1/2, ORT optimization levels 0/99, LLM with and without KV
cache, all against the validator's own prefill / step. bench/verify.py prints the
same figures (with the margins) for the report.
"""

from __future__ import annotations

import numpy as np

from aipg.models import DiffusionParams, SamplingParams
from aipg.pouw.commitment import TOPK, VALUE_TOLERANCE
from aipg.pouw.verify import IMAGE_TOLERANCE, STEP_TOLERANCE

# Honest variation must stay this far below the tolerance (measured: ~40x for LLM
# logits, ~10x for diffusion steps; bench/verify.py prints both).
LLM_MARGIN = 20
STEP_MARGIN = 5


def test_llm_logit_tolerance_margins(llm_models):
    params = SamplingParams(max_tokens=12)
    honest, fp16 = 0.0, []
    for i in range(4):
        prompt = llm_models.real.tokenizer.encode(f"margin probe {i} of the grid")
        rows: list[np.ndarray] = []
        gen = llm_models.real.generate(
            prompt, params, i, on_token=lambda e, r=rows: r.append(e.logits)
        )
        seq = prompt + gen.token_ids[:-1]
        ref = llm_models.real.prefill(seq)[len(prompt) - 1 :]
        for runner in llm_models.honest:
            got: list[np.ndarray] = []
            runner.generate(prompt, params, i, on_token=lambda e, g=got: g.append(e.logits))
            honest = max(honest, float(np.abs(np.stack(got) - ref).max()))
        got = []
        gen16 = llm_models.fp16.generate(
            prompt, params, i, on_token=lambda e, g=got: g.append(e.logits)
        )
        ref16 = llm_models.real.prefill(prompt + gen16.token_ids[:-1])[len(prompt) - 1 :]
        top = np.argsort(-ref16, axis=1)[:, :TOPK]
        fp16.append(float(np.abs(np.take_along_axis(np.stack(got) - ref16, top, axis=1)).max()))
    assert honest * LLM_MARGIN <= VALUE_TOLERANCE, honest
    assert min(fp16) > 2 * VALUE_TOLERANCE, fp16


def test_diffusion_step_tolerance_margin(diffusion_models):
    ref = diffusion_models.real
    params = DiffusionParams(steps=8, width=32, height=32)
    latents: list[np.ndarray] = []
    out = ref.generate("margin probe", params, 11, on_step=lambda e: latents.append(e.latent))
    latents.insert(0, out.latents_initial)
    worst = 0.0
    for runner in diffusion_models.honest:
        cond = runner.encode_prompt("margin probe", params)
        for s in range(params.steps):
            x = runner.step(latents[s], s, cond, params)
            scale = max(1.0, float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))))
            worst = max(worst, float(np.abs(x - latents[s + 1]).max()) / scale)
        # Same bits across thread counts; a fused convolution (level 99) may flip a rounding.
        ours = runner.decode_pixels(latents[-1]).astype(np.int16)
        assert np.abs(ours - ref.decode_pixels(latents[-1])).max() <= IMAGE_TOLERANCE
    assert worst * STEP_MARGIN <= STEP_TOLERANCE, worst
