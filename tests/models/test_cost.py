"""MAC counting from ONNX graphs (aipg.models.cost) against hand counts and the demos."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from aipg.models import build_demo_diffusion, build_demo_llm, load_model_dir
from aipg.models.cost import (
    CostError,
    ModelCost,
    check_cost,
    count_macs,
    diffusion_job_macs,
    llm_job_macs,
    measure_cost,
)
from aipg.wire import decode, encode


def _model(nodes, inputs, outputs, inits) -> bytes:
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def _small_graph() -> bytes:
    """x[B,S,8] @ W[8,16] -> Relu -> Gemm-free path; a Conv on img[B,3,H,W] with a
    4x3x3x3 kernel (pad 1); a Gemm of v[2,5] by G[5,7]."""
    f = TensorProto.FLOAT
    w = numpy_helper.from_array(np.ones((8, 16), np.float32), "W")
    k = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "K")
    g = numpy_helper.from_array(np.ones((5, 7), np.float32), "G")
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["xw"]),
        helper.make_node("Relu", ["xw"], ["y"]),
        helper.make_node("Conv", ["img", "K"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Gemm", ["v", "G"], ["gv"]),
    ]
    inputs = [
        helper.make_tensor_value_info("x", f, ["batch", "seq", 8]),
        helper.make_tensor_value_info("img", f, ["batch", 3, "height", "width"]),
        helper.make_tensor_value_info("v", f, [2, 5]),
    ]
    outputs = [
        helper.make_tensor_value_info("y", f, None),
        helper.make_tensor_value_info("c", f, None),
        helper.make_tensor_value_info("gv", f, None),
    ]
    return _model(nodes, inputs, outputs, [w, k, g])


def test_mac_count_matches_a_hand_count():
    dims = {"batch": 2, "seq": 5, "height": 6, "width": 4}
    matmul = 2 * 5 * 8 * 16  # B*S rows, K=8, N=16
    conv = (2 * 4 * 6 * 4) * (3 * 3 * 3)  # every output element: C_in x kernel
    gemm = 2 * 5 * 7
    assert count_macs(_small_graph(), dims) == matmul + conv + gemm


def test_unbound_dimension_and_control_flow_are_refused():
    with pytest.raises(CostError, match="no size for dimension 'seq'"):
        count_macs(_small_graph(), {"batch": 1, "height": 2, "width": 2})
    f = TensorProto.FLOAT
    then = helper.make_graph([], "t", [], [helper.make_tensor_value_info("x", f, [1])])
    node = helper.make_node("If", ["cond"], ["out"], then_branch=then, else_branch=then)
    cond = helper.make_tensor_value_info("cond", TensorProto.BOOL, [])
    model = _model([node], [cond], [helper.make_tensor_value_info("out", f, None)], [])
    with pytest.raises(CostError, match="depends on data"):
        count_macs(model, {})
    with pytest.raises(CostError, match="not an ONNX model"):
        count_macs(b"\xff\x00junk", {})


def test_demo_llm_cost_is_its_layers_by_hand(tmp_path):
    layers, d, ff = 2, 96, 256
    md = load_model_dir(build_demo_llm(tmp_path / "llm", layers=layers, d_model=d, d_ff=ff))
    cost = measure_cost(md)
    vocab = md.manifest.llm.vocab_size
    # q, k, v, o projections and the two feed-forward matrices per layer, then lm_head
    assert cost.token_macs == layers * (4 * d * d + 2 * d * ff) + d * vocab
    # q.k and attn.v: d MACs each per (query, visible key) pair, per layer
    assert cost.pair_macs == layers * 2 * d
    assert cost.max_total_tokens == md.manifest.llm.context_length
    # the same model without a KV cache has the same cost per useful token
    plain = measure_cost(
        load_model_dir(build_demo_llm(tmp_path / "plain", layers=layers, kv_cache=False))
    )
    assert (plain.token_macs, plain.pair_macs) == (cost.token_macs, cost.pair_macs)
    # a bigger model costs more per token; attention grows with the position
    big = measure_cost(load_model_dir(build_demo_llm(tmp_path / "big", layers=4, d_model=192)))
    assert big.token_macs > 2 * cost.token_macs
    assert llm_job_macs(cost, 100, 1) - llm_job_macs(cost, 99, 1) > cost.token_macs
    assert decode(encode(cost), ModelCost) == cost and len(encode(cost)) < 200


def test_diffusion_and_llm_on_one_scale(tmp_path):
    diff = measure_cost(load_model_dir(build_demo_diffusion(tmp_path / "d")))
    llm = measure_cost(load_model_dir(build_demo_llm(tmp_path / "l")))
    assert diff.step_pixel > 0 and diff.decode_pixel > 0 and diff.text_macs > 0
    image = diffusion_job_macs(diff, steps=20, latent_pixels=64, guided=True)
    unguided = diffusion_job_macs(diff, steps=20, latent_pixels=64, guided=False)
    assert image > unguided > diffusion_job_macs(diff, steps=10, latent_pixels=64, guided=False)
    completion = llm_job_macs(llm, 30, 5)
    # a 20-step image is far more arithmetic than a short completion (it was 1 unit vs 35)
    assert image > 100 * completion


def test_a_wrong_cost_is_refused(tmp_path):
    md = load_model_dir(build_demo_llm(tmp_path / "llm"))
    cost = measure_cost(md)
    check_cost(md, cost)
    with pytest.raises(CostError, match="token_macs"):
        check_cost(md, cost.replace(token_macs=cost.token_macs * 1000))
    with pytest.raises(CostError, match="max_total_tokens"):
        check_cost(md, cost.replace(max_total_tokens=10**6))
