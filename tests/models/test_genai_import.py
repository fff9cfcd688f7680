"""`models import` of an onnxruntime-genai model-builder export (D93), built here: the
demo decoder with GroupQueryAttention, a sentencepiece tokenizer and the
``genai_config.json`` the builder writes. The import runs with the shared-buffer cache
and gives the demo model's tokens; names and pipelines the runner cannot feed are refused."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from aipg.models import LlmRunner, ModelError, SamplingParams, build_demo_llm, load_model_dir
from aipg.models.demo_tokenizer import BOS_ID, EOS_ID, PAD_ID
from aipg.models.hf_import import import_export

LAYERS, HEADS, KV_HEADS, D_MODEL, CONTEXT = 2, 4, 2, 96, 384


def genai_config(vocab: int) -> dict:
    """What the builder writes for a small text decoder (CPU, fp32, share buffer)."""
    return {
        "model": {
            "bos_token_id": BOS_ID,
            "context_length": CONTEXT,
            "decoder": {
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
                "filename": "model.onnx",
                "head_size": D_MODEL // HEADS,
                "hidden_size": D_MODEL,
                "inputs": {
                    "input_ids": "input_ids",
                    "attention_mask": "attention_mask",
                    "position_ids": "position_ids",
                    "past_key_names": "past_key_values.%d.key",
                    "past_value_names": "past_key_values.%d.value",
                },
                "outputs": {
                    "logits": "logits",
                    "present_key_names": "present.%d.key",
                    "present_value_names": "present.%d.value",
                },
                "num_attention_heads": HEADS,
                "num_hidden_layers": LAYERS,
                "num_key_value_heads": KV_HEADS,
            },
            "eos_token_id": [EOS_ID],
            "pad_token_id": PAD_ID,
            "type": "llama",
            "vocab_size": vocab,
        },
        "search": {
            "do_sample": False,
            "max_length": CONTEXT,
            "num_beams": 1,
            "past_present_share_buffer": True,
            "temperature": 1.0,
            "top_k": 1,
            "top_p": 1.0,
        },
    }


def write_export(root, rotary: bool):
    """(the demo GQA model directory, a genai export of the same files). ``rotary``: the
    builder's CPU Llama layout (rotary embeddings inside the op, no position_ids input)."""
    sizes = {"d_model": 128, "heads": HEADS} if rotary else {"d_model": D_MODEL, "heads": HEADS}
    demo = build_demo_llm(
        root / "demo", attention="gqa", kv_heads=KV_HEADS, rotary=rotary, context=CONTEXT, **sizes
    )
    src = root / "export"
    src.mkdir()
    for name in ("model.onnx", "tokenizer.model"):
        shutil.copy(demo / name, src / name)
    cfg = genai_config(load_model_dir(demo).manifest.llm.vocab_size)
    decoder = cfg["model"]["decoder"]
    decoder["hidden_size"], decoder["head_size"] = sizes["d_model"], sizes["d_model"] // HEADS
    if rotary:
        del decoder["inputs"]["position_ids"]
    (src / "genai_config.json").write_text(json.dumps(cfg))
    return demo, src


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    return write_export(tmp_path_factory.mktemp("genai"), rotary=False)


def rewrite(src, tmp_path, change) -> object:
    """A copy of the export whose genai_config.json ``change`` edits in place."""
    copy = tmp_path / "edited"
    shutil.copytree(src, copy)
    cfg = json.loads((copy / "genai_config.json").read_text())
    change(cfg)
    (copy / "genai_config.json").write_text(json.dumps(cfg))
    return copy


def test_a_genai_export_imports_and_decodes_in_a_shared_buffer(export, tmp_path):
    demo, src = export
    out = import_export(src, tmp_path / "out")
    m = load_model_dir(out).manifest
    assert (m.llm.num_layers, m.llm.num_heads, m.llm.head_dim) == (LAYERS, KV_HEADS, 24)
    assert m.llm.context_length == CONTEXT and m.llm.kv_cache
    assert (m.tokenizer.bos_id, m.tokenizer.eos_id, m.tokenizer.pad_id) == (BOS_ID, EOS_ID, PAD_ID)
    assert m.name == "export"
    runner, reference = LlmRunner(out), LlmRunner(demo)
    assert runner.kv_layout == "shared"
    ids = runner.tokenizer.encode("the validators check the receipt")
    assert ids == reference.tokenizer.encode("the validators check the receipt")
    params = SamplingParams(max_tokens=16, temperature_milli=800, top_k=30)
    assert runner.generate(ids, params, 4).token_ids == reference.generate(ids, params, 4).token_ids


def test_a_rotary_genai_export_decodes_alike_shared_plain_and_in_one_prefill(tmp_path):
    demo, src = write_export(tmp_path, rotary=True)
    out = import_export(src, tmp_path / "out")
    shared, plain = LlmRunner(out), LlmRunner(out, io_binding=False)
    assert shared.kv_layout == "shared" and not shared._graph.position_ids
    for seed, params in enumerate(
        (
            SamplingParams(max_tokens=20),
            SamplingParams(max_tokens=20, temperature_milli=900, top_k=20),
        )
    ):
        ids = shared.tokenizer.encode("grid " * (7 + 30 * seed))
        logits: list[np.ndarray] = []
        gen = shared.generate(
            ids, params, seed, on_token=lambda e, kept=logits: kept.append(e.logits)
        )
        assert gen.token_ids == plain.generate(ids, params, seed).token_ids
        assert gen.token_ids == LlmRunner(demo).generate(ids, params, seed).token_ids
        whole = plain.prefill(ids + gen.token_ids[:-1])[len(ids) - 1 :]
        assert np.abs(whole - np.stack(logits)).max() < 2e-5


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda c: c["model"]["decoder"]["inputs"].update(past_key_names="past.%d.k"), "named"),
        (lambda c: c["model"]["decoder"]["inputs"].update(inputs_embeds="e"), "inputs_embeds"),
        (lambda c: c["model"].update(vision={"filename": "v.onnx"}), "vision"),
        (lambda c: c["model"]["decoder"].update(filename="../model.onnx"), "file name"),
        (lambda c: c["model"]["decoder"].update(filename="missing.onnx"), "missing.onnx"),
        (lambda c: c["model"]["decoder"].update(num_hidden_layers=3), "num_hidden_layers"),
        (lambda c: c["model"]["decoder"].update(num_key_value_heads=4), "num_key_value_heads"),
        (lambda c: c["model"].update(vocab_size=10), "vocab_size"),
        (lambda c: c["model"].pop("decoder"), "model.decoder"),
        (lambda c: c["model"].update(eos_token_id="2"), "eos_token_id"),
    ],
)
def test_a_genai_export_the_runner_cannot_feed_is_refused(export, tmp_path, change, match):
    _, src = export
    with pytest.raises(ModelError, match=match):
        import_export(rewrite(src, tmp_path, change), tmp_path / "out")
    assert not (tmp_path / "out" / "manifest.json").exists()
