"""Tokenizers as the export's configs say: tokenizer.json through Hugging Face's library
(compared with the library itself), sentencepiece, BOS/EOS, special tokens written in text,
several eos ids, optional ids, out-of-range ids, and old manifests that lack the new fields."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer as HfTokenizer

from aipg.models import LlmRunner, ModelError, SamplingParams, Tokenizer, load_model_dir
from aipg.models.hf_import import import_export
from aipg.models.manifest import ModelDir, TokenizerInfo, manifest_from_json
from aipg.testing.hf_exports import write_llm_export

TEXTS = ["Validators lock stake.", "  two  spaces\tand a tab\n", "naïve café ☕ 42", ""]


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf-tok")
    return {
        style: import_export(write_llm_export(root / style, style=style), root / f"{style}-out")
        for style in ("llama", "chatml")
    }


@pytest.fixture(scope="module")
def sp_export(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf-sp")
    src = write_llm_export(root / "src", style="llama", tokenizer="sentencepiece")
    return import_export(src, root / "out")


def tokenizer_of(model_dir) -> tuple[Tokenizer, HfTokenizer]:
    model = load_model_dir(model_dir)
    info = model.manifest.tokenizer
    data = model.read_verified(info.role)
    return Tokenizer(data, info, model.manifest.llm.vocab_size), HfTokenizer.from_str(data.decode())


@settings(max_examples=60, deadline=None)
@given(text=st.text(max_size=40))
def test_tokenizer_json_encodes_as_the_library_does(exports, text):
    for style in ("llama", "chatml"):
        ours, lib = tokenizer_of(exports[style])
        # A prompt: what transformers' tokenizer(text) gives (its post-processor adds BOS
        # for the Llama style, nothing for ChatML) - except that a text starting with the
        # BOS token gets no second one.
        want = lib.encode(text, add_special_tokens=True).ids
        if style == "llama" and want[1:2] == [1]:
            want = want[1:]
        assert ours.encode(text) == want
        assert ours.encode(text, bos=False) == lib.encode(text, add_special_tokens=False).ids
        assert ours.decode(ours.encode(text, bos=False)) == lib.decode(
            lib.encode(text, add_special_tokens=False).ids
        )


def test_bos_eos_and_pad_come_from_the_export(exports):
    llama = load_model_dir(exports["llama"]).manifest.tokenizer
    assert (llama.bos_id, llama.eos_id, llama.extra_eos_ids) == (1, 2, ())
    assert llama.add_bos and not llama.add_eos and llama.pad_id is None
    assert (llama.bos_token, llama.eos_token) == ("<s>", "</s>")
    chatml = load_model_dir(exports["chatml"]).manifest.tokenizer
    assert chatml.bos_id is None and not chatml.add_bos and chatml.bos_token == ""
    # generation_config.json lists two eos ids: <|im_end|> and <|endoftext|>.
    assert (chatml.eos_id, chatml.extra_eos_ids, chatml.pad_id) == (2, (0,), 0)
    ours, _ = tokenizer_of(exports["chatml"])
    assert ours.eos_ids == (2, 0) and ours.is_eos(0) and ours.is_eos(2) and not ours.is_eos(1)
    assert ours.encode("hello")[0] != 1  # no BOS at all
    llama_tok, _ = tokenizer_of(exports["llama"])
    assert llama_tok.encode("hello")[0] == 1
    assert llama_tok.encode("<s>hello") == llama_tok.encode("hello")  # no second BOS


def test_special_tokens_in_text_are_their_ids_only_when_the_config_says_so(exports):
    model = load_model_dir(exports["chatml"])
    info = model.manifest.tokenizer
    data = model.read_verified(info.role)
    on = Tokenizer(data, info)
    off = Tokenizer(data, info.replace(special_text=False))
    text = "<|im_start|>user\nhi<|im_end|>"
    assert on.encode(text)[0] == 1 and on.encode(text)[-1] == 2
    assert 1 not in off.encode(text) and 2 not in off.encode(text)
    assert off.decode(off.encode(text)) == text


def test_sentencepiece_exports_keep_bos_and_read_special_tokens(sp_export):
    model = load_model_dir(sp_export)
    info = model.manifest.tokenizer
    assert info.kind == "sentencepiece" and info.add_bos and info.bos_id == 1
    tok = Tokenizer(model.read_verified(info.role), info)
    plain = tok.encode("hello grid", bos=False)
    assert tok.encode("hello grid") == [1, *plain]
    assert tok.encode("hello grid</s>") == [1, *plain, 2]
    assert tok.encode("<s>hello grid") == [1, *plain]


def test_out_of_range_ids_are_model_errors_and_padding_ids_decode_to_nothing(exports):
    tok, _ = tokenizer_of(exports["chatml"])
    # The ChatML export pads the model's vocabulary 8 ids past the tokenizer's.
    assert tok.id_limit == tok.vocab_size + 8
    assert tok.decode([tok.vocab_size + 3]) == ""
    for bad in (tok.id_limit, 10**9, -1):
        with pytest.raises(ModelError, match="outside the vocabulary"):
            tok.decode([5, bad])


def test_special_ids_outside_the_vocabulary_are_refused(exports):
    model = load_model_dir(exports["llama"])
    info, data = model.manifest.tokenizer, model.read_verified("tokenizer")
    for change in ({"eos_id": 10**6}, {"extra_eos_ids": (3, 10**6)}, {"pad_id": 10**6}):
        with pytest.raises(ModelError, match="outside its vocabulary"):
            Tokenizer(data, info.replace(**change))
    with pytest.raises(ModelError, match="add_bos needs a bos_id"):
        Tokenizer(data, info.replace(bos_id=None))
    with pytest.raises(ModelError, match="not a tokenizers"):
        Tokenizer(b"{not json", info)


def test_any_of_several_eos_ids_stops_generation(exports):
    model = load_model_dir(exports["chatml"])
    runner = LlmRunner(model)
    ids = runner.tokenizer.encode("The grid pays for useful work")
    free = runner.generate(ids, SamplingParams(max_tokens=12), seed=0)
    assert free.finish_reason == "length"
    stop_at = free.token_ids[5]
    first = free.token_ids.index(stop_at)
    info = model.manifest.tokenizer.replace(extra_eos_ids=(0, stop_at))
    stopping = ModelDir(model.manifest.replace(tokenizer=info), model.paths)
    out = LlmRunner(stopping).generate(ids, SamplingParams(max_tokens=12), seed=0)
    assert out.token_ids == free.token_ids[: first + 1] and out.finish_reason == "stop"


def test_manifests_without_the_new_fields_still_load(llm_dir):
    data = json.loads((llm_dir / "manifest.json").read_text())
    for key in ("extra_eos_ids", "add_bos", "add_eos", "special_text", "bos_token", "eos_token"):
        del data["tokenizer"][key]
    del data["chat_template"]
    old = manifest_from_json(json.dumps(data))
    assert old == load_model_dir(llm_dir).manifest
    assert old.tokenizer.add_bos and not old.tokenizer.special_text and old.chat_template == ""


def test_a_tokenizer_kind_nobody_knows_is_refused(llm_dir):
    info = TokenizerInfo(kind="wordpiece", role="tokenizer", bos_id=1, eos_id=2, pad_id=3)
    with pytest.raises(ModelError, match="not supported"):
        Tokenizer(b"", info)
