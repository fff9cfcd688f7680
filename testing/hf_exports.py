"""Small Hugging Face exports, built offline: what ``optimum-cli export onnx`` writes for a
decoder LLM, with seeded weights, so tests and benches of ``models import`` need no download.

:func:`write_llm_export` writes an export directory: ``config.json`` (a Llama-style config
with grouped-query attention: fewer key/value heads than attention heads),
``generation_config.json``, ``tokenizer.json`` (a byte-level BPE trained here with the
``tokenizers`` library) or ``tokenizer.model`` (sentencepiece), ``tokenizer_config.json``
(with the chat template) and ``special_tokens_map.json``, and the decoder in one of
optimum's layouts:

- ``"model"``: ``model.onnx`` taking ``past_key_values.N.key/value`` (zero-length at the
  first step) and returning ``logits`` and ``present.N.key/value`` (current optimum);
- ``"merged"``: ``decoder_model_merged.onnx``, which also takes the bool
  ``use_cache_branch`` and ignores its past when it is false (an ``If`` node, as optimum's
  merged decoders pick their branch);
- ``"split"``: ``decoder_model.onnx`` (no past) and ``decoder_with_past_model.onnx``.

Every layout of one ``seed`` computes the same function with the same weights. Two styles:
``"llama"`` (``<s>``/``</s>``, BOS added, a Llama-2 chat template, one eos id) and
``"chatml"`` (Qwen-style ``<|im_start|>``/``<|im_end|>``, no BOS, two eos ids, a padded
model vocabulary larger than the tokenizer's).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from onnx import TensorProto, helper

from aipg.models.demo_graph import Graph, attention_bias, value_info, write_external, write_file
from aipg.models.demo_tokenizer import demo_corpus, train_demo_tokenizer

__all__ = [
    "CHATML_TEMPLATE",
    "LAYOUTS",
    "LLAMA2_TEMPLATE",
    "ExportShape",
    "train_bpe",
    "write_llm_export",
]

LAYOUTS = ("model", "merged", "split")

# meta-llama/Llama-2-7b-chat-hf's template, as its tokenizer_config.json has it.
LLAMA2_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}"
    "{% set loop_messages = messages %}{% set system_message = false %}{% endif %}"
    "{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}"
    "{% endif %}{% endfor %}"
)

# Qwen2-Instruct's ChatML template.
CHATML_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

_STYLES = {
    "llama": {
        "specials": ["<unk>", "<s>", "</s>"],
        "bos": "<s>",
        "eos": "</s>",
        "pad": None,
        "eos_ids": [2],
        "template": LLAMA2_TEMPLATE,
        "extra_vocab": 0,
    },
    "chatml": {
        "specials": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        "bos": None,
        "eos": "<|im_end|>",
        "pad": "<|endoftext|>",
        "eos_ids": [2, 0],
        "template": CHATML_TEMPLATE,
        "extra_vocab": 8,
    },
}


@dataclass(frozen=True)
class ExportShape:
    """Sizes of a test decoder (grouped-query attention: ``kv_heads`` divides ``heads``)."""

    layers: int = 2
    hidden: int = 64
    heads: int = 4
    kv_heads: int = 2
    d_ff: int = 128
    context: int = 256

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


def train_bpe(specials: list[str], vocab_size: int = 400):
    """A byte-level BPE (GPT-2 / Llama 3 / Qwen style) trained on the demo corpus, with
    ``specials`` as its first ids."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    lines = [line for line in demo_corpus().splitlines() if line.strip()]
    tok.train_from_iterator(lines, trainer)
    return tok


def write_llm_export(
    out: Path | str,
    *,
    layout: str = "model",
    style: str = "llama",
    tokenizer: str = "json",
    seed: int = 7,
    shape: ExportShape = ExportShape(),
    external_data: bool = False,
    chat_template: str | None = None,
    config_changes: dict | None = None,
) -> Path:
    """Write an optimum-style export of a tiny decoder into ``out`` (created); returns it.

    ``tokenizer`` is ``"json"`` (tokenizer.json) or ``"sentencepiece"`` (tokenizer.model,
    llama style only). ``chat_template`` overrides the style's (``""``: none).
    ``config_changes`` are merged into config.json (to write a lying config).
    """
    from tokenizers import processors

    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}")
    st = _STYLES[style]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if tokenizer == "json":
        tok = train_bpe(st["specials"])
        if st["bos"]:
            tok.post_processor = processors.TemplateProcessing(
                single=f"{st['bos']} $A",
                pair=f"{st['bos']} $A {st['bos']} $B",
                special_tokens=[(st["bos"], 1)],
            )
        (out / "tokenizer.json").write_text(tok.to_str(), encoding="utf-8")
        vocab = tok.get_vocab_size(with_added_tokens=True)
    elif tokenizer == "sentencepiece" and style == "llama":
        (out / "tokenizer.model").write_bytes(train_demo_tokenizer(512))
        vocab = 512
    else:
        raise ValueError("tokenizer must be 'json', or 'sentencepiece' with style 'llama'")
    vocab += st["extra_vocab"]
    template = st["template"] if chat_template is None else chat_template
    tokenizer_config = {
        "bos_token": st["bos"],
        "eos_token": st["eos"],
        "pad_token": st["pad"],
        "unk_token": "<unk>" if style == "llama" else None,
        "model_max_length": shape.context,
        "clean_up_tokenization_spaces": False,
        "tokenizer_class": "LlamaTokenizerFast" if style == "llama" else "Qwen2TokenizerFast",
    }
    if style == "llama":
        tokenizer_config |= {"add_bos_token": True, "add_eos_token": False}
    if template:
        tokenizer_config["chat_template"] = template
    _write_json(out / "tokenizer_config.json", tokenizer_config)
    specials_map = {k: v for k, v in (("bos_token", st["bos"]), ("eos_token", st["eos"])) if v}
    _write_json(out / "special_tokens_map.json", specials_map)
    eos = st["eos_ids"]
    _write_json(
        out / "generation_config.json",
        {
            "bos_token_id": 1 if st["bos"] else None,
            "eos_token_id": eos if len(eos) > 1 else eos[0],
            **({"pad_token_id": 0} if st["pad"] else {}),
            "transformers_version": "4.46.0",
        },
    )
    config = {
        "architectures": ["LlamaForCausalLM" if style == "llama" else "Qwen2ForCausalLM"],
        "model_type": "llama" if style == "llama" else "qwen2",
        "hidden_size": shape.hidden,
        "intermediate_size": shape.d_ff,
        "num_hidden_layers": shape.layers,
        "num_attention_heads": shape.heads,
        "num_key_value_heads": shape.kv_heads,
        "max_position_embeddings": shape.context,
        "vocab_size": vocab,
        "bos_token_id": 1 if st["bos"] else None,
        "eos_token_id": eos[0],
        "torch_dtype": "float32",
        "use_cache": True,
        "_name_or_path": f"tiny-random-{style}",
    }
    _write_json(out / "config.json", config | (config_changes or {}))
    for filename, past, merged in _LAYOUT_FILES[layout]:
        graph = _decoder_graph(shape, vocab, seed, past, merged)
        if external_data:
            write_external(out / filename, graph, filename + "_data")
        else:
            write_file(out / filename, graph)
    return out


# layout -> [(file, takes past, merged)]
_LAYOUT_FILES = {
    "model": [("model.onnx", True, False)],
    "merged": [("decoder_model_merged.onnx", True, True)],
    "split": [("decoder_model.onnx", False, False), ("decoder_with_past_model.onnx", True, False)],
}


def _write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")


def _decoder_graph(s: ExportShape, vocab: int, seed: int, past: bool, merged: bool) -> bytes:
    """A pre-norm decoder with learned positions and grouped-query attention."""
    g = Graph(seed, "float32")
    inputs = [
        value_info("input_ids", TensorProto.INT64, ["batch_size", "sequence_length"]),
        value_info("attention_mask", TensorProto.INT64, ["batch_size", "total_sequence_length"]),
        value_info("position_ids", TensorProto.INT64, ["batch_size", "sequence_length"]),
    ]
    outputs = [value_info("logits", TensorProto.FLOAT, ["batch_size", "sequence_length", vocab])]
    kv = ["batch_size", s.kv_heads, "past_sequence_length", s.head_dim]
    present = ["batch_size", s.kv_heads, "total_sequence_length", s.head_dim]
    pasts = [f"past_key_values.{i}.{k}" for i in range(s.layers) for k in ("key", "value")]
    if past:
        inputs += [value_info(n, TensorProto.FLOAT, kv) for n in pasts]
    outputs += [
        value_info(n.replace("past_key_values", "present"), TensorProto.FLOAT, present)
        for n in pasts
    ]
    if merged:
        inputs.append(value_info("use_cache_branch", TensorProto.BOOL, [1]))
        pasts = _cache_branch(g, pasts, kv)
    tok = g.op("Gather", [g.weight("embed_tokens", (vocab, s.hidden), 0.5), "input_ids"])
    pos = g.op("Gather", [g.weight("embed_positions", (s.context, s.hidden), 0.1), "position_ids"])
    h = g.op("Add", [tok, pos])
    bias = attention_bias(g)
    for i in range(s.layers):
        layer_past = (pasts[2 * i], pasts[2 * i + 1]) if past else None
        h = _layer(g, s, h, bias, i, layer_past)
    h = g.layer_norm(h, "norm", s.hidden)
    g.nodes.append(
        helper.make_node(
            "MatMul",
            [h, g.weight("lm_head", (s.hidden, vocab), 2.0 / math.sqrt(s.hidden))],
            ["logits"],
            name="lm_head",
        )
    )
    return g.model("tiny_decoder", inputs, outputs)


def _cache_branch(g: Graph, pasts: list[str], kv: list) -> list[str]:
    """optimum's merged decoder: with ``use_cache_branch`` false the past is not read (here:
    cut to length zero), so a runner that feeds the flag wrong gets other logits."""
    flag = g.op("Squeeze", ["use_cache_branch", g.const("flag_axis", np.array([0], np.int64))])
    names = [f"{p}__branch" for p in pasts]
    starts = g.const("branch_start", np.array([0], np.int64))
    axes = g.const("branch_axis", np.array([2], np.int64))
    then_nodes = [
        helper.make_node("Identity", [p], [f"{n}_then"]) for p, n in zip(pasts, names, strict=True)
    ]
    else_nodes = [
        helper.make_node("Slice", [p, starts, starts, axes], [f"{n}_else"])
        for p, n in zip(pasts, names, strict=True)
    ]
    then_graph = helper.make_graph(
        then_nodes, "with_past", [], [value_info(f"{n}_then", TensorProto.FLOAT, kv) for n in names]
    )
    else_graph = helper.make_graph(
        else_nodes,
        "without_past",
        [],
        [value_info(f"{n}_else", TensorProto.FLOAT, kv) for n in names],
    )
    g.nodes.append(
        helper.make_node(
            "If",
            [flag],
            names,
            name="use_cache_branch_if",
            then_branch=then_graph,
            else_branch=else_graph,
        )
    )
    return names


def _heads(g: Graph, x: str, n: int, head_dim: int) -> str:
    shape = g.const(g.name("heads_shape"), np.array([0, 0, n, head_dim], np.int64))
    return g.op("Transpose", [g.op("Reshape", [x, shape])], perm=[0, 2, 1, 3])


def _repeat_kv(g: Graph, x: str, s: ExportShape) -> str:
    """[B, kv, T, d] -> [B, heads, T, d], each key/value head serving heads/kv query heads
    (transformers' repeat_kv)."""
    groups = s.heads // s.kv_heads
    if groups == 1:
        return x
    x = g.op("Unsqueeze", [x, g.const(g.name("kv_axis"), np.array([2], np.int64))])
    x = g.op("Expand", [x, g.const(g.name("kv_expand"), np.array([1, 1, groups, 1, 1], np.int64))])
    return g.op(
        "Reshape",
        [x, g.const(g.name("kv_merge"), np.array([0, s.heads, -1, s.head_dim], np.int64))],
    )


def _layer(
    g: Graph, s: ExportShape, h: str, bias: str, i: int, past: tuple[str, str] | None
) -> str:
    p = f"layers.{i}"
    kv_dim = s.kv_heads * s.head_dim
    x = g.layer_norm(h, f"{p}.input_layernorm", s.hidden)
    q = _heads(g, g.linear(x, f"{p}.q_proj", s.hidden, s.hidden, bias=False), s.heads, s.head_dim)
    k = _heads(g, g.linear(x, f"{p}.k_proj", s.hidden, kv_dim, bias=False), s.kv_heads, s.head_dim)
    v = _heads(g, g.linear(x, f"{p}.v_proj", s.hidden, kv_dim, bias=False), s.kv_heads, s.head_dim)
    present_k, present_v = f"present.{i}.key", f"present.{i}.value"
    if past is None:
        g.nodes.append(helper.make_node("Identity", [k], [present_k]))
        g.nodes.append(helper.make_node("Identity", [v], [present_v]))
    else:
        g.nodes.append(helper.make_node("Concat", [past[0], k], [present_k], axis=2))
        g.nodes.append(helper.make_node("Concat", [past[1], v], [present_v], axis=2))
    k, v = _repeat_kv(g, present_k, s), _repeat_kv(g, present_v, s)
    scores = g.op("MatMul", [q, g.op("Transpose", [k], perm=[0, 1, 3, 2])])
    scale = g.const(g.name("attn_scale"), np.array(1.0 / math.sqrt(s.head_dim), np.float32))
    scores = g.op("Add", [g.op("Mul", [scores, scale]), bias])
    attn = g.op("MatMul", [g.op("Softmax", [scores], axis=-1), v])
    merged = g.op(
        "Reshape",
        [
            g.op("Transpose", [attn], perm=[0, 2, 1, 3]),
            g.const(g.name("merge"), np.array([0, 0, s.hidden], np.int64)),
        ],
    )
    h = g.op("Add", [h, g.linear(merged, f"{p}.o_proj", s.hidden, s.hidden, bias=False)])
    x = g.layer_norm(h, f"{p}.post_attention_layernorm", s.hidden)
    up = g.linear(x, f"{p}.up_proj", s.hidden, s.d_ff, bias=False)
    return g.op("Add", [h, g.linear(g.silu(up), f"{p}.down_proj", s.d_ff, s.hidden, bias=False)])
