"""GroupQueryAttention decoders (D91-D93): one buffer per cache tensor, bound as past and
present, written in place; logits against numpy attention and against the Concat layout
of the same weights; determinism across runs, thread counts and prefill; the capacity;
and a committee verifier accepting an honest GQA receipt and rejecting an altered one."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

from aipg.models import LlmRunner, ModelError, SamplingParams, SessionFactory, build_demo_llm
from aipg.models.kvcache import SharedKvCache, shares_kv
from aipg.pouw import VerdictReason
from aipg.pouw.execute import llm_result, run_llm_job
from aipg.pouw.verify import verify_llm
from aipg.testing.world import World

# Honest paths differ by a few 1e-6 in a logit (prefill vs decode, the two layouts); the
# verifier allows 2**-13 (pouw.commitment.VALUE_TOLERANCE). The tests hold the paths to
# 2e-5, well inside it.
LOGIT_TOL = 2e-5
PROMPTS = ("the validators check", "a", "grid " * 40)
PARAMS = (
    SamplingParams(max_tokens=24),
    SamplingParams(max_tokens=24, temperature_milli=900, top_k=20, top_p_milli=900),
)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("gqa")
    return {
        "gqa": build_demo_llm(root / "gqa", attention="gqa"),
        "concat": build_demo_llm(root / "concat"),
        "gqa_kv2": build_demo_llm(root / "kv2", attention="gqa", kv_heads=2),
    }


def run(runner: LlmRunner, ids: list[int], params: SamplingParams, seed: int):
    logits: list[np.ndarray] = []
    ids = list(ids)
    gen = runner.generate(ids, params, seed, on_token=lambda e: logits.append(e.logits))
    return gen.token_ids, np.stack(logits)


def test_the_builder_writes_gqa_layers_and_the_runner_shares_their_cache(models):
    graph = onnx.load(str(models["gqa"] / "model.onnx")).graph
    ops = [n.op_type for n in graph.node]
    assert ops.count("GroupQueryAttention") == 2 and "Concat" not in ops and "Softmax" not in ops
    gqa, concat = LlmRunner(models["gqa"]), LlmRunner(models["concat"])
    assert gqa.kv_layout == "shared" and concat.kv_layout == "ping-pong"
    assert LlmRunner(models["gqa"], io_binding=False).kv_layout == "plain"
    # A GQA graph whose past is also read elsewhere is not shared: the buffer holds stale
    # positions past the step's length that only GroupQueryAttention knows to skip.
    past, present = gqa._graph.past_names, gqa._graph.output_names[1:]
    assert shares_kv(graph, past, present)
    graph.node.append(helper.make_node("Identity", [past[0]], ["leak"]))
    assert not shares_kv(graph, past, present)


@pytest.mark.parametrize("kv_heads", [4, 2, 1])
def test_one_gqa_node_in_a_shared_buffer_matches_numpy_attention(kv_heads):
    """Prefill 6 tokens then 4 single steps into one buffer per tensor, filled with NaN
    first: the outputs are numpy's causal attention, the first 10 positions hold exactly
    the keys and values, and every later position is untouched (still NaN)."""
    heads, dim, cap, n = 4, 16, 32, 10
    io_names = [("q", heads * dim), ("k", kv_heads * dim), ("v", kv_heads * dim)]
    inputs = [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, "s", w]) for x, w in io_names]
    cache = [1, kv_heads, "m", dim]
    inputs += [helper.make_tensor_value_info(x, TensorProto.FLOAT, cache) for x in ("pk", "pv")]
    inputs += [
        helper.make_tensor_value_info("seqlens_k", TensorProto.INT32, [1]),
        helper.make_tensor_value_info("total", TensorProto.INT32, []),
    ]
    outputs = [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, "s", heads * dim])]
    outputs += [helper.make_tensor_value_info(x, TensorProto.FLOAT, cache) for x in ("ck", "cv")]
    node = helper.make_node(
        "GroupQueryAttention",
        ["q", "k", "v", "pk", "pv", "seqlens_k", "total"],
        ["out", "ck", "cv"],
        domain="com.microsoft",
        num_heads=heads,
        kv_num_heads=kv_heads,
    )
    model = helper.make_model(
        helper.make_graph([node], "one_gqa", inputs, outputs),
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)],
        ir_version=8,
    )
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(5)
    x = {name: rng.standard_normal((1, n, w)).astype(np.float32) for name, w in io_names}
    kbuf, vbuf = (np.full((1, kv_heads, cap, dim), np.nan, np.float32) for _ in range(2))
    io = session.io_binding()
    for name, out, buf in (("pk", "ck", kbuf), ("pv", "cv", vbuf)):
        io.bind_cpu_input(name, buf)
        io.bind_output(out, "cpu", 0, np.float32, list(buf.shape), buf.ctypes.data)
    pieces = []
    for start, end in [(0, 6), *((t, t + 1) for t in range(6, n))]:
        for name, _ in io_names:
            io.bind_cpu_input(name, x[name][:, start:end])
        io.bind_cpu_input("seqlens_k", np.array([end - 1], np.int32))
        io.bind_cpu_input("total", np.array(end, np.int32))
        piece = np.empty((1, end - start, heads * dim), np.float32)
        io.bind_output("out", "cpu", 0, np.float32, list(piece.shape), piece.ctypes.data)
        session.run_with_iobinding(io)
        pieces.append(piece)
    got = np.concatenate(pieces, axis=1)[0]

    q = x["q"][0].reshape(n, heads, dim).transpose(1, 0, 2).astype(np.float64)
    k, v = (x[t][0].reshape(n, kv_heads, dim).transpose(1, 0, 2) for t in ("k", "v"))
    group = heads // kv_heads
    k64, v64 = (np.repeat(t, group, axis=0).astype(np.float64) for t in (k, v))
    scores = q @ k64.transpose(0, 2, 1) / np.sqrt(dim)
    scores = np.where(np.tril(np.ones((n, n), bool)), scores, -np.inf)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    want = (probs @ v64).transpose(1, 0, 2).reshape(n, heads * dim)
    assert np.abs(got - want).max() < 1e-5
    assert np.array_equal(kbuf[0, :, :n], k) and np.array_equal(vbuf[0, :, :n], v)
    assert np.isnan(kbuf[0, :, n:]).all() and np.isnan(vbuf[0, :, n:]).all()


@pytest.mark.parametrize("name", ["gqa", "gqa_kv2"])
def test_shared_decoding_equals_the_plain_path_and_prefill(models, name):
    shared, plain = LlmRunner(models[name]), LlmRunner(models[name], io_binding=False)
    assert shared.kv_layout == "shared"
    for prompt in PROMPTS:
        ids = shared.tokenizer.encode(prompt)
        for seed, params in enumerate(PARAMS):
            tokens, logits = run(shared, ids, params, seed)
            want_tokens, want_logits = run(plain, ids, params, seed)
            assert tokens == want_tokens and len(tokens) > 1
            assert np.array_equal(logits, want_logits)  # the same kernel, bit for bit
            whole = shared.prefill(ids + tokens[:-1])[len(ids) - 1 :]
            assert np.abs(whole - logits).max() < LOGIT_TOL


@pytest.fixture(scope="module")
def pair(models):
    """(shared, plain) runners of the GQA demo model, kept across examples: the shared
    one's pooled cache is reused with whatever the last generation left in it."""
    return LlmRunner(models["gqa_kv2"]), LlmRunner(models["gqa_kv2"], io_binding=False)


@settings(max_examples=15, deadline=None)
@given(
    prompt=st.lists(st.integers(0, 511), min_size=1, max_size=300),
    budget=st.integers(1, 40),
    temperature=st.sampled_from([0, 700, 1300]),
    seed=st.integers(0, 2**64 - 1),
)
def test_shared_decoding_equals_plain_for_any_prompt_and_budget(
    pair, prompt, budget, temperature, seed
):
    shared, plain = pair
    params = SamplingParams(max_tokens=budget, temperature_milli=temperature, top_k=40)
    tokens, logits = run(shared, prompt, params, seed)
    want_tokens, want_logits = run(plain, prompt, params, seed)
    assert tokens == want_tokens
    assert np.array_equal(logits, want_logits)


def test_gqa_logits_match_the_concat_layout_of_the_same_weights(models):
    """The Concat layout computes attention with plain ONNX ops (MatMul, Softmax over a
    masked bias): the reference for the fused op, weights being named (so seeded) alike."""
    gqa, concat = LlmRunner(models["gqa"]), LlmRunner(models["concat"])
    for prompt in PROMPTS:
        ids = gqa.tokenizer.encode(prompt)
        assert np.abs(gqa.prefill(ids) - concat.prefill(ids)).max() < LOGIT_TOL
        tokens, logits = run(gqa, ids, PARAMS[0], 0)
        want_tokens, want_logits = run(concat, ids, PARAMS[0], 0)
        assert tokens == want_tokens
        assert np.abs(logits - want_logits).max() < LOGIT_TOL


def test_gqa_tokens_are_the_same_across_runs_and_thread_counts(models):
    runners = {t: LlmRunner(models["gqa"], SessionFactory(threads=t)) for t in (1, 2, 4)}
    ids = runners[1].tokenizer.encode(PROMPTS[2])
    base_tokens, base_logits = run(runners[1], ids, PARAMS[1], 9)
    for threads, runner in runners.items():
        for _ in range(2):  # a second run reuses the pooled cache: stale positions unread
            tokens, logits = run(runner, ids, PARAMS[1], 9)
            assert tokens == base_tokens, threads
            # Bit for bit, as measured: the attention kernel gives each head to one task
            # with a single-threaded GEMM, and the projections' MatMuls came out alike.
            assert np.array_equal(logits, base_logits), threads


def test_the_shared_cache_holds_the_presents_in_place(models):
    """After a generation, the buffers hold exactly the presents a plain prefill of the
    same tokens returns, and nothing past them was written (NaN before, NaN after)."""
    runner = LlmRunner(models["gqa"])
    g = runner._graph
    cache = SharedKvCache(
        runner.session,
        g.past_names,
        g.output_names[1:],
        heads=runner.interface.num_heads,
        head_dim=runner.interface.head_dim,
        vocab=runner.interface.vocab_size,
        capacity=64,
        dtype=g.past_dtype,
        position_ids=g.position_ids,
    )
    cache.buffers[...] = np.nan
    address = cache.buffers.ctypes.data
    ids = runner.tokenizer.encode(PROMPTS[0])
    steps = cache.steps(ids)
    tokens = []
    logits = next(steps)
    for _ in range(8):
        tokens.append(int(np.argmax(logits)))
        logits = steps.send(tokens[-1])
    total = len(ids) + len(tokens)
    seq = np.asarray([ids + tokens], np.int64)
    empty = np.zeros((1, runner.interface.num_heads, 0, runner.interface.head_dim), np.float32)
    feeds = {
        "input_ids": seq,
        "attention_mask": np.ones_like(seq),
        "position_ids": np.arange(total)[None],
    }
    feeds |= {name: empty for name in g.past_names}
    presents = runner.session.run(list(g.output_names[1:]), feeds)
    assert cache.buffers.ctypes.data == address
    for buf, present in zip(cache.buffers, presents, strict=True):
        assert np.abs(buf[:, :, :total] - present).max() < 1e-5
        assert np.isnan(buf[:, :, total:]).all()


def test_a_shared_cache_refuses_tokens_past_its_capacity(models):
    runner = LlmRunner(models["gqa"])
    cache = runner._bound_cache(4)
    assert isinstance(cache, SharedKvCache)
    steps = cache.steps([5, 6, 7])
    next(steps)
    steps.send(8)  # the 4th token fills it
    with pytest.raises(ModelError, match="capacity of 4"):
        steps.send(9)
    with pytest.raises(ModelError, match="capacity of 4"):
        next(runner._bound_cache(4).steps([5, 6, 7, 8, 9]))


def test_the_builder_refuses_gqa_options_it_cannot_build(tmp_path):
    for bad in (
        {"kv_cache": False},
        {"merged": True},
        {"kq_scores": True},
        {"heads": 5, "d_model": 100},
    ):
        with pytest.raises(ModelError, match="gqa layout"):
            build_demo_llm(tmp_path / "x", attention="gqa", **bad)
    with pytest.raises(ModelError, match="kv_heads"):
        build_demo_llm(tmp_path / "x", attention="gqa", kv_heads=3)
    with pytest.raises(ModelError, match="kv_heads"):
        build_demo_llm(tmp_path / "x", kv_heads=2)
    with pytest.raises(ModelError, match="rotary"):
        build_demo_llm(tmp_path / "x", rotary=True, d_model=128)
    with pytest.raises(ModelError, match="rotary"):
        build_demo_llm(tmp_path / "x", attention="gqa", rotary=True)  # head size 24
    with pytest.raises(ModelError, match="attention must be"):
        build_demo_llm(tmp_path / "x", attention="flash")


def test_a_verifier_accepts_an_honest_gqa_receipt_and_rejects_an_altered_one(models):
    world = World()
    worker, validator = LlmRunner(models["gqa"]), LlmRunner(models["gqa"], io_binding=False)
    assert worker.kv_layout == "shared"
    for params in PARAMS:
        job = world.llm_job(
            model_id=worker.model.model_id, prompt="the grid pays for useful work", llm=params
        )
        a = world.assignment(job)
        honest = run_llm_job(worker, job, a, world.worker)
        check = verify_llm(validator, job, a, honest)
        assert check.valid, check
        assert check.max_error < LOGIT_TOL
        # Alter one token to the least likely one, and commit to the logits of the altered
        # sequence (the cheater's best): the rule picks another token there.
        prompt, out = list(honest.prompt_token_ids), list(honest.output_token_ids)
        assert len(out) > 3
        logits = validator.prefill(prompt + out[:-1])[len(prompt) - 1 :]
        out[2] = int(np.argmin(logits[2]))
        logits = validator.prefill(prompt + out[:-1])[len(prompt) - 1 :]
        text = worker.tokenizer.decode(out)
        altered = llm_result(
            job, a, world.worker, honest.receipt.profile, prompt, out, text, logits
        )
        check = verify_llm(validator, job, a, altered)
        assert check.reason == VerdictReason.TOKEN_MISMATCH, check
