"""The model's own limits (D51): each check names the field and the limit, and a job
that breaks one is named by job_violation (how the gateway judges a worker's refusal)."""

from __future__ import annotations

import pytest

from aipg.models import (
    DiffusionParams,
    SamplingParams,
    build_demo_diffusion,
    build_demo_llm,
    load_model_dir,
)
from aipg.node.services.gateway_api import BadRequest
from aipg.node.services.limits import (
    check_completion,
    check_image,
    check_prompt_ids,
    job_violation,
)
from aipg.pouw import Job


@pytest.fixture(scope="module")
def manifests(tmp_path_factory):
    root = tmp_path_factory.mktemp("limits")
    llm = load_model_dir(build_demo_llm(root / "llm")).manifest
    diffusion = load_model_dir(build_demo_diffusion(root / "diffusion")).manifest
    return llm, diffusion


def test_image_sides_must_be_multiples_of_the_vae_factor_within_the_models_sizes(manifests):
    _, manifest = manifests
    d = manifest.diffusion
    check_image(manifest, DiffusionParams(steps=2, width=d.min_size, height=d.max_size))
    for width in (d.min_size - d.vae_scale_factor, d.max_size + d.vae_scale_factor, d.min_size + 1):
        with pytest.raises(BadRequest, match=f"multiples of {d.vae_scale_factor}") as e:
            check_image(manifest, DiffusionParams(steps=2, width=width, height=d.min_size))
        assert e.value.param == "size" and str(d.max_size) in str(e.value)


def test_steps_are_bounded_by_the_schedules_training_timesteps(manifests):
    _, manifest = manifests
    short = manifest.replace(diffusion=manifest.diffusion.replace(train_timesteps=10))
    check_image(short, DiffusionParams(steps=10, width=64, height=64))
    with pytest.raises(BadRequest, match="at most 10") as e:
        check_image(short, DiffusionParams(steps=11, width=64, height=64))
    assert e.value.param == "steps"


def test_prompt_ids_and_context_are_checked_against_the_model(manifests):
    manifest, _ = manifests
    vocab, context = manifest.llm.vocab_size, manifest.llm.context_length
    check_prompt_ids(manifest, [0, vocab - 1], vocab)
    with pytest.raises(BadRequest, match=f"vocabulary of {vocab - 1}") as e:
        check_prompt_ids(manifest, [0, vocab - 1], vocab - 1)  # a smaller tokenizer wins
    assert e.value.param == "prompt"
    check_completion(manifest, 10, context - 10)
    with pytest.raises(BadRequest, match=f"maximum context length is {context}") as e:
        check_completion(manifest, 10, context - 9)
    assert e.value.param == "max_tokens"


def test_job_violation_names_the_limit_a_job_breaks(manifests):
    llm, diffusion = manifests
    d = diffusion.diffusion
    job = Job(
        model_id=b"\0" * 32,
        prompt="x",
        llm=None,
        diffusion=DiffusionParams(steps=2, width=d.max_size + 8, height=64),
        seed=1,
        tier=0,
        fee=0,
        client=b"\0" * 20,
        cost_milli=1,
        created_ms=0,
        deadline_ms=1,
        nonce=1,
    )
    assert "width" in job_violation(diffusion, job, None)
    fits = job.replace(diffusion=DiffusionParams(steps=2, width=64, height=64))
    assert job_violation(diffusion, fits, None) is None
    assert job_violation(llm, fits, None) == "a diffusion job for an LLM"
    text = fits.replace(diffusion=None, llm=SamplingParams(max_tokens=llm.llm.context_length))
    assert job_violation(llm, text, 1) is not None and job_violation(llm, text, None) is None
