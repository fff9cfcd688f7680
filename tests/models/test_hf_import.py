"""`models import` of optimum exports built by the test kit: every layout, what the
manifest takes from each config file, identical greedy ids across layouts, in-place and
copying imports, external data, lying configs, and the diffusers dispatch."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from aipg.models import LlmRunner, ModelError, SamplingParams, load_model_dir
from aipg.models.hf_import import find_layout, import_export
from aipg.testing.hf_exports import LAYOUTS, ExportShape, write_llm_export

PROMPT = "The grid pays for useful work"


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """style -> layout -> model directory (all with the same seed: the same weights)."""
    root = tmp_path_factory.mktemp("hf-import")
    return {
        style: {
            layout: import_export(
                write_llm_export(root / f"{style}-{layout}", layout=layout, style=style),
                root / f"{style}-{layout}-out",
            )
            for layout in LAYOUTS
        }
        for style in ("llama", "chatml")
    }


def test_each_layout_is_found_and_imported(imported):
    roles = {
        layout: {f.role: f.path for f in load_model_dir(path).manifest.files}
        for layout, path in imported["llama"].items()
    }
    assert roles["model"] == {"decoder": "model.onnx", "tokenizer": "tokenizer.json"}
    assert roles["merged"] == {
        "decoder": "decoder_model_merged.onnx",
        "tokenizer": "tokenizer.json",
    }
    assert roles["split"] == {
        "decoder": "decoder_model.onnx",
        "decoder_with_past": "decoder_with_past_model.onnx",
        "tokenizer": "tokenizer.json",
    }


def test_the_manifest_takes_every_field_from_the_export(imported):
    shape = ExportShape()
    m = load_model_dir(imported["chatml"]["model"]).manifest
    llm = m.llm
    # num_heads is the KV cache's: config.json's num_key_value_heads, not num_attention_heads.
    assert (llm.num_layers, llm.num_heads, llm.head_dim) == (
        shape.layers,
        shape.kv_heads,
        shape.head_dim,
    )
    assert llm.num_heads != shape.heads and llm.kv_cache
    assert llm.context_length == shape.context
    tokenizer_json = json.loads((imported["chatml"]["model"] / "tokenizer.json").read_text())
    assert llm.vocab_size == len(tokenizer_json["model"]["vocab"]) + 8  # padded, as in config.json
    assert m.name == "tiny-random-chatml" and m.kind == "llm"
    assert m.chat_template.startswith("{% for message in messages %}")
    assert m.tokenizer.kind == "tokenizers" and m.default_sampling == SamplingParams()
    for f in m.files:
        data = (imported["chatml"]["model"] / f.path).read_bytes()
        assert (f.size, f.sha256) == (len(data), hashlib.sha256(data).digest())


def test_all_layouts_give_the_same_greedy_ids_with_and_without_cache(imported):
    for style, layouts in imported.items():
        results = []
        for path in layouts.values():
            runner = LlmRunner(path)
            ids = runner.tokenizer.encode(PROMPT)
            for kv in (True, False):
                runner.use_kv_cache = kv
                results.append(
                    runner.generate(ids, SamplingParams(max_tokens=24), seed=0).token_ids
                )
        assert len(results[0]) == 24
        assert all(r == results[0] for r in results), style


def test_prefill_agrees_across_layouts(imported):
    logits = []
    for path in imported["llama"].values():
        runner = LlmRunner(path)
        logits.append(runner.prefill(runner.tokenizer.encode(PROMPT)))
    for other in logits[1:]:
        np.testing.assert_allclose(other, logits[0], rtol=0, atol=1e-5)


def test_the_merged_decoder_reads_use_cache_branch(imported):
    # A runner that told the merged graph "no cache" at a later step would drop its past.
    # The plain path (the bound cache, D53, feeds the flag the same way; tests/models/
    # test_kvcache.py checks it gives the plain path's tokens on a merged decoder).
    runner = LlmRunner(imported["llama"]["merged"], io_binding=False)
    ids = runner.tokenizer.encode(PROMPT)
    right = runner.generate(ids, SamplingParams(max_tokens=8), seed=0).token_ids
    run = runner._run
    runner._run = lambda x, past_length, pasts: (
        run(x, past_length, pasts)
        if past_length == 0
        else _wrong_flag(runner, x, past_length, pasts)
    )
    wrong = runner.generate(ids, SamplingParams(max_tokens=8), seed=0).token_ids
    assert wrong[0] == right[0] and wrong != right


def _wrong_flag(runner, ids, past_length, pasts):
    from aipg.models.session import run_session

    graph = runner._graph
    feeds = {
        "input_ids": ids,
        "attention_mask": np.ones((1, ids.shape[1]), np.int64),  # the branch sees no past
        "position_ids": np.arange(past_length, past_length + ids.shape[1], dtype=np.int64)[None],
        "use_cache_branch": np.asarray([False]),
        **dict(zip(graph.past_names, pasts, strict=True)),
    }
    return run_session(runner.session, graph.output_names, feeds, "decoder")


def test_an_import_in_place_writes_only_the_manifest(tmp_path):
    src = write_llm_export(tmp_path / "export", layout="split")
    before = sorted(p.name for p in src.iterdir())
    seen = []
    out = import_export(src, progress=lambda label, done, total: seen.append((label, done, total)))
    assert out == src
    assert sorted(p.name for p in src.iterdir()) == sorted([*before, "manifest.json"])
    assert {label for label, _, _ in seen} == {
        "hashing decoder_model.onnx",
        "hashing decoder_with_past_model.onnx",
        "hashing tokenizer.json",
    }
    assert all(done == total for _, done, total in seen)  # small files: one chunk each
    load_model_dir(out).verify_all()


def test_external_data_is_listed_and_runs(tmp_path):
    src = write_llm_export(tmp_path / "export", layout="model", external_data=True)
    out = import_export(src, tmp_path / "out", name="tiny-external")
    model = load_model_dir(out)
    roles = {f.role: f.path for f in model.manifest.files}
    assert roles["decoder.data"] == "model.onnx_data" and model.manifest.name == "tiny-external"
    runner = LlmRunner(model)
    assert runner.generate(
        runner.tokenizer.encode(PROMPT), SamplingParams(max_tokens=4), seed=0
    ).token_ids


def test_an_export_in_an_onnx_folder_and_a_sentencepiece_tokenizer(tmp_path):
    src = write_llm_export(tmp_path / "export", tokenizer="sentencepiece")
    (src / "onnx").mkdir()
    (src / "model.onnx").rename(src / "onnx" / "model.onnx")
    assert find_layout(src) == ("model", [("decoder", "onnx/model.onnx")])
    model = load_model_dir(import_export(src, tmp_path / "out"))
    assert {f.path for f in model.manifest.files} == {"onnx/model.onnx", "tokenizer.model"}
    assert model.manifest.tokenizer.kind == "sentencepiece"


def test_generation_config_sampling_becomes_the_default(tmp_path):
    src = write_llm_export(tmp_path / "export")
    gen = json.loads((src / "generation_config.json").read_text())
    gen |= {"do_sample": True, "temperature": 0.6, "top_p": 0.9, "top_k": 50}
    (src / "generation_config.json").write_text(json.dumps(gen))
    m = load_model_dir(import_export(src, tmp_path / "out")).manifest
    assert m.default_sampling == SamplingParams(temperature_milli=600, top_p_milli=900, top_k=50)


@pytest.mark.parametrize(
    ("changes", "why"),
    [
        ({"num_key_value_heads": 4}, "num_key_value_heads is 4"),
        ({"num_hidden_layers": 3}, "num_hidden_layers 3"),
        ({"vocab_size": 999}, "vocab_size is 999"),
        ({"head_dim": 8}, "head_dim"),
        ({"num_hidden_layers": "two"}, "num_hidden_layers must be a positive integer"),
        ({"num_attention_heads": 3}, "not a multiple"),
    ],
)
def test_a_config_that_does_not_match_the_graph_is_refused(tmp_path, changes, why):
    src = write_llm_export(tmp_path / "export", config_changes=changes)
    with pytest.raises(ModelError, match=why):
        import_export(src, tmp_path / "out")
    assert (
        not (tmp_path / "out" / "manifest.json").exists() and not (src / "manifest.json").exists()
    )


def test_broken_exports_are_clear_errors(tmp_path):
    src = write_llm_export(tmp_path / "export")
    (src / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{% if %}"}))
    with pytest.raises(ModelError, match="chat template does not compile"):
        import_export(src)
    (src / "tokenizer_config.json").write_text("[]")
    with pytest.raises(ModelError, match="must hold a JSON object"):
        import_export(src)
    (src / "tokenizer_config.json").unlink()
    (src / "tokenizer.json").unlink()
    with pytest.raises(ModelError, match=r"no tokenizer\.json or tokenizer\.model"):
        import_export(src)
    (src / "model.onnx").write_bytes(b"not onnx")
    with pytest.raises(ModelError, match="not an ONNX model"):
        import_export(src)
    (src / "model.onnx").unlink()
    with pytest.raises(ModelError, match="no decoder found"):
        import_export(src)
    with pytest.raises(ModelError, match="not an optimum or diffusers export"):
        import_export(tmp_path)


def test_a_diffusers_export_goes_to_the_diffusers_importer(tmp_path):
    from aipg.models import load_model_dir
    from aipg.testing.diffusers_exports import build_diffusers_export

    src = build_diffusers_export(tmp_path / "sd")
    out = import_export(src, tmp_path / "out", "sd-tiny")
    assert out == tmp_path / "out"
    model = load_model_dir(out)
    assert model.manifest.kind == "diffusion" and model.manifest.name == "sd-tiny"
    # Without --out it goes beside the export, never into it (its files are renamed).
    beside = import_export(src)
    assert beside == tmp_path / "sd-aipg" and not (src / "manifest.json").exists()
    assert load_model_dir(beside).manifest.diffusion == model.manifest.diffusion
