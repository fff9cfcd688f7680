"""IO-bound KV cache decoding (D53): bit-identical to plain ``session.run`` decoding —
the same tokens and the same logits at every step — on demo decoders in every cache
layout the runner takes, and bounded by the capacity it was built for."""

from __future__ import annotations

import numpy as np
import pytest

from aipg.models import LlmRunner, ModelError, SamplingParams, build_demo_llm
from aipg.models.kvcache import BoundKvCache, binds_on

PROMPTS = ("the validators check", "a", "grid " * 40)
PARAMS = (
    SamplingParams(max_tokens=24),
    SamplingParams(max_tokens=24, temperature_milli=900, top_k=20, top_p_milli=900),
)


def run(runner: LlmRunner, prompt: str, params: SamplingParams, seed: int):
    logits: list[np.ndarray] = []
    ids = runner.tokenizer.encode(prompt)
    gen = runner.generate(ids, params, seed, on_token=lambda e: logits.append(e.logits))
    return gen.token_ids, np.stack(logits)


@pytest.mark.parametrize(
    "variant",
    [{}, {"dtype": "float16"}, {"merged": True}, {"layers": 3, "heads": 2}, {"kq_scores": True}],
)
def test_bound_decoding_gives_the_plain_paths_tokens_and_logits_bit_for_bit(tmp_path, variant):
    model = build_demo_llm(tmp_path / "llm", **variant)
    bound, plain = LlmRunner(model), LlmRunner(model, io_binding=False)
    assert bound.io_binding and not plain.io_binding and binds_on(bound.session)
    for prompt in PROMPTS:
        for seed, params in enumerate(PARAMS):
            tokens, logits = run(bound, prompt, params, seed)
            want_tokens, want_logits = run(plain, prompt, params, seed)
            assert tokens == want_tokens and len(tokens) > 1
            assert logits.dtype == want_logits.dtype == np.float32
            assert np.array_equal(logits, want_logits)  # exactly, not within a tolerance


def test_each_steps_logits_are_a_fresh_array(llm_runner):
    """The decode buffer is rewritten every step: what a caller keeps must not change."""
    ids = llm_runner.tokenizer.encode("the validators check")
    kept = []
    llm_runner.generate(
        ids, SamplingParams(max_tokens=6), 0, on_token=lambda e: kept.append(e.logits)
    )
    first = kept[0].copy()
    assert not any(np.shares_memory(a, b) for a in kept for b in kept if a is not b)
    assert np.array_equal(kept[0], first)


def test_a_bound_cache_refuses_tokens_past_its_capacity(llm_runner):
    g = llm_runner._graph
    cache = BoundKvCache(
        llm_runner.session,
        g.past_names,
        g.output_names[1:],
        heads=llm_runner.interface.num_heads,
        head_dim=llm_runner.interface.head_dim,
        vocab=llm_runner.interface.vocab_size,
        capacity=4,
        dtype=g.past_dtype,
        position_ids=g.position_ids,
        use_cache_branch=g.use_cache_branch,
    )
    steps = cache.steps([5, 6, 7])
    next(steps)
    steps.send(8)  # the 4th token fills it
    with pytest.raises(ModelError, match="capacity of 4"):
        steps.send(9)


def test_the_kq_scores_layout_transposes_no_key_cache_and_decodes_alike(tmp_path):
    """bench/inference's context model: scores as (K·qᵀ)ᵀ, the same products as q·Kᵀ."""
    import onnx

    kq = build_demo_llm(tmp_path / "kq", kq_scores=True)
    qk = build_demo_llm(tmp_path / "qk")
    graph = onnx.load(str(kq / "model.onnx")).graph
    transposed = {n.input[0] for n in graph.node if n.op_type == "Transpose"}
    assert not any(name.startswith("present.") for name in transposed)
    old = onnx.load(str(qk / "model.onnx")).graph
    assert any(n.input[0].startswith("present.") for n in old.node if n.op_type == "Transpose")
    a, b = LlmRunner(kq), LlmRunner(qk)
    for prompt in PROMPTS:
        tokens, logits = run(a, prompt, PARAMS[0], 0)
        want_tokens, want_logits = run(b, prompt, PARAMS[0], 0)
        assert tokens == want_tokens
        np.testing.assert_allclose(logits, want_logits, rtol=0, atol=1e-4)
