"""Jobs on imported Hugging Face exports: a worker's chat job on a ChatML model that stops
at one of its several eos ids is valid in each layout (the same tokens from
``model.onnx`` and split decoders), and a result that runs on past an eos id is refused."""

from __future__ import annotations

import pytest

from aipg.models import LlmRunner, SamplingParams, chat_prompt, load_model_dir
from aipg.models.hf_import import import_export
from aipg.models.manifest import ModelDir, write_manifest
from aipg.pouw import VerdictReason
from aipg.pouw.execute import run_llm_job
from aipg.pouw.verify import verify_llm
from aipg.testing.hf_exports import write_llm_export
from aipg.testing.world import World

W = World()
CHAT = [{"role": "user", "content": "What does the grid pay for?"}]


@pytest.fixture(scope="module")
def chatml(tmp_path_factory):
    """The same ChatML export in two layouts, each with a third eos id: a token its greedy
    chat answer reaches after a few tokens (so the stop rule is exercised)."""
    root = tmp_path_factory.mktemp("imported")
    dirs = {
        layout: import_export(
            write_llm_export(root / layout, layout=layout, style="chatml"), root / f"{layout}-m"
        )
        for layout in ("model", "split")
    }
    probe = LlmRunner(dirs["model"])
    prompt = probe.tokenizer.encode(chat_prompt(probe.model.manifest, CHAT))
    free = probe.generate(prompt, SamplingParams(max_tokens=16), seed=0).token_ids
    stop = next(t for t in free[3:] if t not in (0, 2))
    runners = {}
    for layout, path in dirs.items():
        m = load_model_dir(path).manifest
        tok = m.tokenizer.replace(extra_eos_ids=(*m.tokenizer.extra_eos_ids, stop))
        write_manifest(path, m.replace(tokenizer=tok))
        runners[layout] = LlmRunner(path)
    return runners, stop, free


def test_a_chat_job_stopping_at_an_extra_eos_is_valid_and_layouts_agree(chatml):
    runners, stop, free = chatml
    for layout, runner in runners.items():
        job = W.llm_job(
            model_id=runner.model.model_id,
            prompt=chat_prompt(runner.model.manifest, CHAT),
            llm=SamplingParams(max_tokens=16),
            seed=0,
        )
        a = W.assignment(job)
        result = run_llm_job(runner, job, a, W.worker)
        # Each layout's worker stops at the extra eos id, on the same tokens.
        assert list(result.output_token_ids) == free[: free.index(stop) + 1], layout
        assert result.prompt_token_ids[0] == 1  # <|im_start|>: a special token's id
        # A validator (a fresh runner on the same model) certifies it.
        check = verify_llm(LlmRunner(runner.model), job, a, result)
        assert check.valid, (layout, check)


def test_tokens_after_an_extra_eos_break_the_stop_rule(chatml):
    runners, stop, _ = chatml
    runner = runners["model"]
    # The same model without the extra eos id: its worker runs on past ``stop``.
    m = runner.model.manifest
    plain = m.replace(tokenizer=m.tokenizer.replace(extra_eos_ids=(0,)))
    lax = LlmRunner(ModelDir(plain, runner.model.paths))
    job = W.llm_job(
        model_id=lax.model.model_id,
        prompt=chat_prompt(m, CHAT),
        llm=SamplingParams(max_tokens=16),
        seed=0,
    )
    a = W.assignment(job)
    result = run_llm_job(lax, job, a, W.worker)
    assert stop in list(result.output_token_ids)[:-1]
    # A validator whose manifest says ``stop`` ends a generation (same files, same id
    # binding replaced) refuses the tokens that follow it.
    strict = LlmRunner(ModelDir(plain, runner.model.paths))
    strict.tokenizer.extra_eos_ids = (0, stop)
    check = verify_llm(strict, job, a, result)
    assert check.reason == VerdictReason.TOKEN_MISMATCH and "end-of-sequence" in check.detail
