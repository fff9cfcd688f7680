"""The LLM runner: determinism, KV cache vs prefill, sampling, stops, bad input."""

import json
import shutil

import numpy as np
import pytest

from aipg.models import LlmRunner, ModelError, SamplingParams, SessionFactory, build_demo_llm
from aipg.models.manifest import file_entry, load_model_dir, write_manifest

PROMPT = "The validators check the receipt"
SAMPLED = SamplingParams(temperature_milli=900, top_k=50, top_p_milli=950, max_tokens=40)


def test_same_job_same_tokens_across_runs_sessions_and_threads(llm_dir, llm_runner):
    ids = llm_runner.tokenizer.encode(PROMPT)
    for params in (SamplingParams(max_tokens=40), SAMPLED):
        first = llm_runner.generate(ids, params, seed=5)
        assert llm_runner.generate(ids, params, seed=5).token_ids == first.token_ids
        for threads in (1, 2):
            other = LlmRunner(llm_dir, SessionFactory(threads=threads))
            assert other.generate(ids, params, seed=5).token_ids == first.token_ids


def test_logits_are_bitwise_equal_with_1_and_2_threads(llm_dir, llm_runner):
    ids = llm_runner.tokenizer.encode(PROMPT * 4)
    two = LlmRunner(llm_dir, threads=2)
    assert np.array_equal(llm_runner.prefill(ids), two.prefill(ids))


def test_kv_cache_no_cache_and_prefill_agree_on_every_greedy_token(tmp_path, llm_dir, llm_runner):
    ids = llm_runner.tokenizer.encode(PROMPT)
    events = []
    cached = llm_runner.generate(ids, SamplingParams(max_tokens=60), 3, on_token=events.append)
    assert len(cached.token_ids) == 60 and cached.finish_reason == "length"
    recomputed = LlmRunner(llm_dir, use_kv_cache=False).generate(
        ids, SamplingParams(max_tokens=60), 3
    )
    no_cache_model = LlmRunner(build_demo_llm(tmp_path / "nocache", kv_cache=False))
    exported_without = no_cache_model.generate(ids, SamplingParams(max_tokens=60), 3)
    assert recomputed.token_ids == cached.token_ids == exported_without.token_ids

    logits = llm_runner.prefill(ids + cached.token_ids)
    assert logits.shape == (len(ids) + 60, llm_runner.interface.vocab_size)
    rows = logits[len(ids) - 1 : -1]
    assert np.argmax(rows, axis=1).tolist() == cached.token_ids
    streamed = np.stack([e.logits for e in events])
    assert [e.index for e in events] == list(range(60))
    np.testing.assert_allclose(streamed, rows, atol=1e-4)


def test_sampling_is_reproducible_and_differs_across_seeds(llm_runner):
    ids = llm_runner.tokenizer.encode(PROMPT)
    runs = [llm_runner.generate(ids, SAMPLED, seed=s).token_ids for s in (1, 1, 2, 3)]
    assert runs[0] == runs[1]
    assert runs[0] != runs[2] and runs[0] != runs[3]


def test_stop_string_cuts_the_text(llm_runner):
    ids = llm_runner.tokenizer.encode(PROMPT)
    full = llm_runner.generate(ids, SamplingParams(max_tokens=30), 1)
    stop = full.text[10:13]
    cut = llm_runner.generate(ids, SamplingParams(max_tokens=30, stop=(stop,)), 1)
    assert cut.finish_reason == "stop"
    assert cut.text == full.text[: full.text.find(stop)]
    assert cut.token_ids == full.token_ids[: len(cut.token_ids)]
    assert len(cut.token_ids) < len(full.token_ids)


def test_end_of_sequence_stops(llm_runner, monkeypatch):
    ids = llm_runner.tokenizer.encode(PROMPT)
    full = llm_runner.generate(ids, SamplingParams(max_tokens=20), 1)
    monkeypatch.setattr(llm_runner.tokenizer, "eos_id", full.token_ids[4])
    stopped = llm_runner.generate(ids, SamplingParams(max_tokens=20), 1)
    assert stopped.finish_reason == "stop"
    assert stopped.token_ids == full.token_ids[: full.token_ids.index(full.token_ids[4]) + 1]
    assert stopped.text == llm_runner.tokenizer.decode(stopped.token_ids) != ""
    never = SamplingParams(max_tokens=20, stop=("\0never\0",))
    assert llm_runner.generate(ids, never, 1).text == stopped.text


def test_generation_stops_at_the_end_of_the_context(llm_runner):
    context = llm_runner.context_length
    ids = [5] * (context - 3)
    out = llm_runner.generate(ids, SamplingParams(max_tokens=100), 1)
    assert len(out.token_ids) == 3 and out.finish_reason == "length"


def test_bad_prompts_are_refused_before_work(llm_runner):
    context = llm_runner.context_length
    with pytest.raises(ModelError, match="context"):
        llm_runner.generate([5] * context, SamplingParams(), 1)
    with pytest.raises(ModelError, match="context"):
        llm_runner.prefill([5] * (context + 1))
    with pytest.raises(ModelError, match="vocabulary"):
        llm_runner.generate([1, 10**6], SamplingParams(), 1)
    with pytest.raises(ModelError, match="empty"):
        llm_runner.generate([], SamplingParams(), 1)
    with pytest.raises(ModelError, match="seed"):
        llm_runner.generate([1, 2], SamplingParams(), -1)


def copy_with_manifest(src, dst, edit):
    shutil.copytree(src, dst)
    data = json.loads((dst / "manifest.json").read_text())
    edit(data)
    (dst / "manifest.json").write_text(json.dumps(data))
    return dst


def test_manifest_lying_about_the_interface_is_caught(tmp_path, llm_dir):
    def more_layers(m):
        m["llm"]["num_layers"] = 3

    with pytest.raises(ModelError, match=r"past_key_values\.2"):
        LlmRunner(copy_with_manifest(llm_dir, tmp_path / "a", more_layers))

    def other_heads(m):
        m["llm"]["num_heads"] = 8

    with pytest.raises(ModelError, match="heads"):
        LlmRunner(copy_with_manifest(llm_dir, tmp_path / "b", other_heads))

    def no_cache(m):
        m["llm"]["kv_cache"] = False

    with pytest.raises(ModelError, match="kv_cache"):
        LlmRunner(copy_with_manifest(llm_dir, tmp_path / "c", no_cache))


def test_onnx_file_with_wrong_inputs_is_caught(tmp_path, llm_dir, diffusion_dir):
    target = copy_with_manifest(llm_dir, tmp_path / "m", lambda m: None)
    shutil.copy(diffusion_dir / "unet/model.onnx", target / "model.onnx")
    manifest = load_model_dir(target).manifest
    files = tuple(
        file_entry(target, f.role, f.path) if f.role == "decoder" else f for f in manifest.files
    )
    write_manifest(target, manifest.replace(files=files))
    with pytest.raises(ModelError, match="input_ids"):
        LlmRunner(target)


def test_corrupt_or_missing_file_is_caught(tmp_path, llm_dir):
    target = copy_with_manifest(llm_dir, tmp_path / "m", lambda m: None)
    data = bytearray((target / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 1
    (target / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(ModelError, match="sha256"):
        LlmRunner(target)
    (target / "model.onnx").unlink()
    with pytest.raises(ModelError, match=r"model\.onnx"):
        LlmRunner(target)


def test_diffusion_model_is_not_an_llm(diffusion_dir):
    with pytest.raises(ModelError, match="not an llm"):
        LlmRunner(diffusion_dir)


def test_merged_decoder_gets_use_cache_branch(tmp_path, llm_runner):
    merged = LlmRunner(build_demo_llm(tmp_path / "merged", merged=True))
    assert "use_cache_branch" in {i.name for i in merged.session.get_inputs()}
    ids = llm_runner.tokenizer.encode(PROMPT)
    params = SamplingParams(max_tokens=12)
    assert (
        merged.generate(ids, params, 1).token_ids == llm_runner.generate(ids, params, 1).token_ids
    )
    assert np.array_equal(merged.prefill(ids), llm_runner.prefill(ids))


def test_external_data_must_be_listed_and_intact(tmp_path, llm_runner):
    source = build_demo_llm(tmp_path / "ext", external_data=True)
    ids = llm_runner.tokenizer.encode(PROMPT)
    params = SamplingParams(max_tokens=10)
    assert (
        LlmRunner(source).generate(ids, params, 1).token_ids
        == llm_runner.generate(ids, params, 1).token_ids
    )

    unlisted = copy_with_manifest(
        source, tmp_path / "unlisted", lambda m: m.update(files=m["files"][:2])
    )
    with pytest.raises(ModelError, match="external data"):
        LlmRunner(unlisted)

    corrupt = copy_with_manifest(source, tmp_path / "corrupt", lambda m: None)
    data = bytearray((corrupt / "model.onnx_data").read_bytes())
    data[-1] ^= 1
    (corrupt / "model.onnx_data").write_bytes(bytes(data))
    with pytest.raises(ModelError, match="sha256"):
        LlmRunner(corrupt)


def test_external_data_named_by_the_graph_must_be_the_listed_file(tmp_path):
    source = build_demo_llm(tmp_path / "ext", external_data=True)

    def list_another_file(m):
        m["files"][2]["path"] = "other.bin"

    target = copy_with_manifest(source, tmp_path / "other", list_another_file)
    shutil.copy(target / "model.onnx_data", target / "other.bin")
    with pytest.raises(ModelError, match="does not list"):
        LlmRunner(target)
