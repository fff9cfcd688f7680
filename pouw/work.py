"""Work units: the measure of useful work that block rewards pay for.

- LLM: (prompt tokens + generated tokens) x the model's cost factor;
- diffusion: steps x latent pixels x the model's cost factor.

The cost factor comes from the model's manifest as a fixed-point integer ``cost_milli``
(1000 = one work unit per token, or per step and latent pixel); the job carries it so
that a certificate can be paid without the manifest at hand. Integer arithmetic only.
"""

from __future__ import annotations

from .records import JobKind
from .types import WorkUnits

COST_SCALE = 1000  # cost factors are milli-units


def llm_work_units(prompt_tokens: int, output_tokens: int, cost_milli: int) -> WorkUnits:
    """Work units of an LLM job that read ``prompt_tokens`` and generated ``output_tokens``."""
    return WorkUnits((prompt_tokens + output_tokens) * cost_milli // COST_SCALE)


def diffusion_work_units(steps: int, latent_pixels: int, cost_milli: int) -> WorkUnits:
    """Work units of a diffusion job of ``steps`` denoising steps over ``latent_pixels``."""
    return WorkUnits(steps * latent_pixels * cost_milli // COST_SCALE)


def work_units(
    kind: JobKind,
    cost_milli: int,
    *,
    prompt_tokens: int = 0,
    output_tokens: int = 0,
    steps: int = 0,
    latent_pixels: int = 0,
) -> WorkUnits:
    """Work units of one job of ``kind``; takes the counts that apply to that kind."""
    if kind == JobKind.LLM:
        return llm_work_units(prompt_tokens, output_tokens, cost_milli)
    return diffusion_work_units(steps, latent_pixels, cost_milli)
