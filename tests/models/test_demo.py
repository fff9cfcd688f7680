"""The demo build: byte-identical every time, and its variants."""

import hashlib
from pathlib import Path

import numpy as np
import onnx
import pytest

from aipg.models import (
    LlmRunner,
    ModelError,
    SamplingParams,
    build_demo,
    build_demo_llm,
    load_model_dir,
    train_demo_tokenizer,
)


def tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_demo_build_is_byte_identical_twice(tmp_path):
    llm_a, diff_a = build_demo(tmp_path / "a")
    llm_b, diff_b = build_demo(tmp_path / "b")
    assert tree_digest(tmp_path / "a") == tree_digest(tmp_path / "b")
    assert len(tree_digest(tmp_path / "a")) == 8  # 2 manifests, 4 onnx, 2 tokenizers
    assert load_model_dir(llm_a).model_id == load_model_dir(llm_b).model_id
    assert load_model_dir(diff_a).model_id == load_model_dir(diff_b).model_id


def test_tokenizer_training_is_deterministic():
    assert train_demo_tokenizer() == train_demo_tokenizer()


def test_demo_files_match_their_manifests(llm_dir, diffusion_dir):
    for root in (llm_dir, diffusion_dir):
        load_model_dir(root).verify_all()


def weights(path: Path) -> dict[str, np.ndarray]:
    model = onnx.load(path / "model.onnx")
    return {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}


def test_other_seed_gives_same_shapes_other_weights(tmp_path, llm_dir):
    other = build_demo_llm(tmp_path / "other", seed=99)
    mine, theirs = weights(llm_dir), weights(other)
    assert {k: v.shape for k, v in mine.items()} == {k: v.shape for k, v in theirs.items()}
    assert not np.array_equal(mine["wte"], theirs["wte"])
    assert load_model_dir(other).model_id != load_model_dir(llm_dir).model_id


def test_float16_variant_is_close_but_not_equal(tmp_path, llm_runner):
    half = LlmRunner(build_demo_llm(tmp_path / "fp16", dtype="float16"))
    ids = llm_runner.tokenizer.encode("Validators lock stake")
    exact, approx = llm_runner.prefill(ids), half.prefill(ids)
    assert not np.array_equal(exact, approx)
    np.testing.assert_allclose(exact, approx, atol=0.2)


def test_int8_variant_is_close_but_not_equal(tmp_path, llm_runner):
    quantized = LlmRunner(build_demo_llm(tmp_path / "int8", dtype="int8"))
    ids = llm_runner.tokenizer.encode("Validators lock stake")
    exact, approx = llm_runner.prefill(ids), quantized.prefill(ids)
    assert not np.array_equal(exact, approx)
    np.testing.assert_allclose(exact, approx, atol=0.5)
    initializers = onnx.load(tmp_path / "int8" / "model.onnx").graph.initializer
    assert onnx.TensorProto.INT8 in {t.data_type for t in initializers}


def test_draft_variant_shares_the_vocabulary(tmp_path, llm_runner):
    draft = LlmRunner(build_demo_llm(tmp_path / "draft", layers=1, d_model=32, heads=2, d_ff=64))
    assert draft.interface.vocab_size == llm_runner.interface.vocab_size
    text = "A worker claims the job"
    assert draft.tokenizer.encode(text) == llm_runner.tokenizer.encode(text)
    out = draft.generate(draft.tokenizer.encode(text), SamplingParams(max_tokens=8), seed=1)
    assert len(out.token_ids) >= 1


def test_builder_rejects_bad_sizes(tmp_path):
    with pytest.raises(ModelError):
        build_demo_llm(tmp_path / "x", d_model=30, heads=4)
    with pytest.raises(ModelError):
        build_demo_llm(tmp_path / "y", dtype="int4")
