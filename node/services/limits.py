"""A model's own limits, checked at the gateway before a job exists (D51).

The API checks what every request must satisfy (types, generic ranges); what depends on
the model is checked here, from its manifest, with the rules its runner applies:

- LLM: prompt + ``max_tokens`` within the model's context; every prompt token id inside
  the vocabulary (the tokenizer's and the graph's);
- diffusion: both image sides multiples of the VAE's scale factor from the manifest's
  ``min_size`` to ``max_size``; steps from 1 to the schedule's training timesteps.

Each check raises :class:`BadRequest` naming the request field and the limit. The same
checks judge a worker's refusal (:func:`job_violation`): a refusal for a job that breaks
no limit is the worker's own failure, not the gateway's.
"""

from __future__ import annotations

from collections.abc import Sequence

from aipg.models import DIFFUSION, DiffusionParams, Manifest
from aipg.pouw import Job

from .gateway_api import BadRequest

__all__ = ["check_completion", "check_image", "check_prompt_ids", "job_violation"]


def check_prompt_ids(manifest: Manifest, ids: Sequence[int], tokenizer_vocab: int) -> None:
    """Every id inside the model's vocabulary (400 naming ``prompt`` otherwise)."""
    assert manifest.llm is not None
    vocab = min(manifest.llm.vocab_size, tokenizer_vocab)
    for i, t in enumerate(ids):
        if not 0 <= t < vocab:
            raise BadRequest(
                f"prompt[{i}] is token id {t}, outside this model's vocabulary of {vocab} "
                f"(ids 0 to {vocab - 1})",
                "prompt",
            )


def check_completion(manifest: Manifest, prompt_tokens: int, max_tokens: int) -> None:
    """Prompt and output within the model's context (400 naming ``max_tokens``)."""
    assert manifest.llm is not None
    context = manifest.llm.context_length
    if prompt_tokens + max_tokens > context:
        raise BadRequest(
            f"this model's maximum context length is {context} tokens: a prompt of "
            f"{prompt_tokens} tokens and max_tokens {max_tokens} need {prompt_tokens + max_tokens}",
            "max_tokens" if prompt_tokens < context else "prompt",
        )


def check_image(manifest: Manifest, params: DiffusionParams) -> None:
    """Sides and steps the model supports (400 naming ``size`` or ``steps``)."""
    d = manifest.diffusion
    assert d is not None
    step = d.vae_scale_factor
    for side, value in (("width", params.width), ("height", params.height)):
        if not d.min_size <= value <= d.max_size or value % step:
            raise BadRequest(
                f"image {side} {value} is not supported by {manifest.name}: sides are "
                f"multiples of {step} from {d.min_size} to {d.max_size}",
                "size",
            )
    if not 1 <= params.steps <= d.train_timesteps:
        raise BadRequest(
            f"steps {params.steps} is not supported by {manifest.name}: at most "
            f"{d.train_timesteps} (its schedule's training timesteps)",
            "steps",
        )


def job_violation(manifest: Manifest, job: Job, prompt_tokens: int | None) -> str | None:
    """Which model limit ``job`` breaks, or None (``prompt_tokens``: its prompt's length
    in tokens, None when unknown)."""
    try:
        if manifest.kind == DIFFUSION:
            if job.diffusion is None:
                return "an LLM job for a diffusion model"
            check_image(manifest, job.diffusion)
        else:
            if job.llm is None:
                return "a diffusion job for an LLM"
            if prompt_tokens is not None:
                check_completion(manifest, prompt_tokens, job.llm.max_tokens)
    except BadRequest as e:
        return str(e)
    return None
