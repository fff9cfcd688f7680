"""The demo LLM: a tiny decoder with the layout Hugging Face optimum exports (KV cache optional),
or with ONNX Runtime's GroupQueryAttention over a fixed-capacity cache (onnxruntime-genai's)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from onnx import TensorProto, helper

from .demo_graph import (
    LICENSE,
    MS_DOMAIN,
    Graph,
    attention_bias,
    value_info,
    write_external,
    write_file,
)
from .demo_tokenizer import TOKENIZER_FILE, VOCAB_SIZE, demo_tokenizer_info, train_demo_tokenizer
from .errors import ModelError
from .manifest import LLM, LlmInterface, Manifest, file_entry, write_manifest
from .sampling import SamplingParams

DEMO_LLM_SEED = 1
EXTERNAL_DATA_FILE = "model.onnx_data"
ATTENTION_LAYOUTS = ("concat", "gqa")  # optimum's present = Concat(past, new); or GQA


@dataclass(frozen=True)
class LlmShape:
    """Sizes of a demo decoder."""

    layers: int = 2
    d_model: int = 96
    heads: int = 4
    d_ff: int = 256
    context: int = 384
    vocab: int = VOCAB_SIZE
    kv_heads: int = 0  # 0: as many as ``heads`` (GQA layout only may have fewer)

    @property
    def cache_heads(self) -> int:
        return self.kv_heads or self.heads

    @property
    def head_dim(self) -> int:
        return self.d_model // self.heads


def build_demo_llm(
    out_dir: Path | str,
    *,
    seed: int = DEMO_LLM_SEED,
    dtype: str = "float32",
    layers: int = 2,
    d_model: int = 96,
    heads: int = 4,
    d_ff: int = 256,
    context: int = 384,
    kv_cache: bool = True,
    merged: bool = False,
    external_data: bool = False,
    kq_scores: bool = False,
    attention: str = "concat",
    kv_heads: int = 0,
    rotary: bool = False,
    name: str = "aipg-demo-llm",
    version: str = "1",
) -> Path:
    """Build the demo decoder into ``out_dir`` (created) and return it.

    Writes ``model.onnx`` (optimum decoder interface, with KV cache unless ``kv_cache`` is
    False), ``tokenizer.model`` and ``manifest.json``. Change ``seed`` for a model of the
    same shape with other weights, ``dtype="float16"`` (or ``"int8"``) for cheaper weights, and the
    sizes for a smaller "draft" model with the same vocabulary; ``merged=True`` adds the
    ``use_cache_branch`` input of optimum's merged decoders; ``external_data=True`` keeps the
    weights in ``model.onnx_data`` (role ``decoder.data``), as large exports do.
    ``kq_scores=True`` computes the attention scores as (K·qᵀ)ᵀ instead of q·Kᵀ: the same
    products, but the transpose is of the one-row result, not of the whole key cache (a
    copy of it every step). ``attention="gqa"`` builds every layer's attention as ONNX
    Runtime's ``com.microsoft`` GroupQueryAttention, the layout onnxruntime-genai's model
    builder exports (D91): the same weights and I/O names, a cache the runner binds as one
    buffer per tensor, past and present alike (:class:`~.kvcache.SharedKvCache`);
    ``kv_heads`` (a divisor of ``heads``) gives it fewer key/value heads than query heads;
    ``rotary=True`` replaces the learned positions by rotary embeddings applied inside the
    op (``do_rotary``, cos/sin caches of the context's length; a head size divisible by
    16), and the graph takes no ``position_ids``: the genai builder's CPU Llama layout.
    Raises ModelError for bad sizes.
    """
    shape = LlmShape(layers, d_model, heads, d_ff, context, kv_heads=kv_heads)
    if min(layers, d_model, heads, d_ff) < 1 or d_model % heads or context < 8:
        raise ModelError("demo llm: need positive sizes, d_model divisible by heads, context >= 8")
    if attention not in ATTENTION_LAYOUTS:
        raise ModelError(f"demo llm: attention must be one of {', '.join(ATTENTION_LAYOUTS)}")
    gqa = attention == "gqa"
    if gqa and (not kv_cache or merged or kq_scores or shape.head_dim % 8):
        raise ModelError(
            "demo llm: the gqa layout has a kv cache, no merged branch, no kq_scores, "
            "and a head size divisible by 8"
        )
    if kv_heads and (not gqa or kv_heads < 0 or heads % kv_heads):
        raise ModelError("demo llm: kv_heads must divide heads, and only with attention='gqa'")
    if rotary and (not gqa or shape.head_dim % 16):
        raise ModelError("demo llm: rotary needs attention='gqa' and a head size divisible by 16")
    out = Path(out_dir)
    if gqa:
        graph = _gqa_graph(shape, seed, dtype, rotary)
    else:
        graph = _llm_graph(shape, seed, dtype, kv_cache, merged, kq_scores)
    files = []
    if external_data:
        write_external(out / "model.onnx", graph, EXTERNAL_DATA_FILE)
        files.append(file_entry(out, "decoder.data", EXTERNAL_DATA_FILE))
    else:
        write_file(out / "model.onnx", graph)
    write_file(out / TOKENIZER_FILE, train_demo_tokenizer(shape.vocab))
    files[:0] = [
        file_entry(out, "decoder", "model.onnx"),
        file_entry(out, "tokenizer", TOKENIZER_FILE),
    ]
    manifest = Manifest(
        name=name,
        version=version,
        kind=LLM,
        files=tuple(files),
        tokenizer=demo_tokenizer_info(),
        llm=LlmInterface(
            num_layers=layers,
            num_heads=shape.cache_heads,  # the manifest counts key/value heads
            head_dim=shape.head_dim,
            vocab_size=shape.vocab,
            context_length=context,
            kv_cache=kv_cache,
        ),
        diffusion=None,
        default_sampling=SamplingParams(max_tokens=64),
        default_diffusion=None,
        license=LICENSE,
    )
    write_manifest(out, manifest)
    return out


def _llm_graph(
    s: LlmShape, seed: int, dtype: str, kv_cache: bool, merged: bool, kq_scores: bool = False
) -> bytes:
    g = Graph(seed, dtype)
    inputs = [
        value_info("input_ids", TensorProto.INT64, ["batch_size", "sequence_length"]),
        value_info("attention_mask", TensorProto.INT64, ["batch_size", "total_sequence_length"]),
        value_info("position_ids", TensorProto.INT64, ["batch_size", "sequence_length"]),
    ]
    outputs = [value_info("logits", TensorProto.FLOAT, ["batch_size", "sequence_length", s.vocab])]
    kv_shape = ["batch_size", s.heads, "past_sequence_length", s.head_dim]
    present_shape = ["batch_size", s.heads, "total_sequence_length", s.head_dim]
    for i in range(s.layers if kv_cache else 0):
        for kind in ("key", "value"):
            inputs.append(value_info(f"past_key_values.{i}.{kind}", TensorProto.FLOAT, kv_shape))
            outputs.append(value_info(f"present.{i}.{kind}", TensorProto.FLOAT, present_shape))

    tok = g.op("Gather", [g.weight("wte", (s.vocab, s.d_model), 0.5), "input_ids"])
    pos = g.op("Gather", [g.weight("wpe", (s.context, s.d_model), 0.1), "position_ids"])
    h = g.op("Add", [tok, pos])
    if merged:
        # optimum's merged decoders take use_cache_branch; this one reads it (times zero)
        # so that a runner which forgets to feed it fails.
        inputs.append(value_info("use_cache_branch", TensorProto.BOOL, [1]))
        flag = g.op("Cast", ["use_cache_branch"], to=TensorProto.FLOAT)
        h = g.op("Add", [h, g.op("Mul", [flag, g.const("zero_flag", np.array(0.0, np.float32))])])
    bias = attention_bias(g)
    for i in range(s.layers):
        h = _decoder_layer(g, s, h, bias, i, kv_cache, kq_scores)
    _lm_head(g, s, h)
    return g.model("aipg_demo_llm", inputs, outputs)


def _lm_head(g: Graph, s: LlmShape, h: str) -> None:
    """The final layer norm and the vocabulary projection into ``logits``."""
    h = g.layer_norm(h, "ln_f", s.d_model)
    g.nodes.append(
        helper.make_node(
            "MatMul",
            [h, g.weight("lm_head", (s.d_model, s.vocab), 2.0 / math.sqrt(s.d_model))],
            ["logits"],
            name="lm_head_matmul",
        )
    )


def _split_heads(g: Graph, x: str, s: LlmShape) -> str:
    shape = g.const(g.name("heads_shape"), np.array([0, 0, s.heads, s.head_dim], np.int64))
    return g.op("Transpose", [g.op("Reshape", [x, shape])], perm=[0, 2, 1, 3])


def _decoder_layer(
    g: Graph, s: LlmShape, h: str, bias: str, i: int, kv_cache: bool, kq_scores: bool = False
) -> str:
    p = f"h{i}"
    x = g.layer_norm(h, f"{p}.ln_1", s.d_model)
    q = _split_heads(g, g.linear(x, f"{p}.q", s.d_model, s.d_model), s)
    k = _split_heads(g, g.linear(x, f"{p}.k", s.d_model, s.d_model), s)
    v = _split_heads(g, g.linear(x, f"{p}.v", s.d_model, s.d_model), s)
    if kv_cache:
        g.nodes.append(
            helper.make_node(
                "Concat", [f"past_key_values.{i}.key", k], [f"present.{i}.key"], axis=2
            )
        )
        g.nodes.append(
            helper.make_node(
                "Concat", [f"past_key_values.{i}.value", v], [f"present.{i}.value"], axis=2
            )
        )
        k, v = f"present.{i}.key", f"present.{i}.value"
    if kq_scores:  # (K qᵀ)ᵀ: transposes q and the scores (one row each), never the keys
        kq = g.op("MatMul", [k, g.op("Transpose", [q], perm=[0, 1, 3, 2])])
        scores = g.op("Transpose", [kq], perm=[0, 1, 3, 2])
    else:
        scores = g.op("MatMul", [q, g.op("Transpose", [k], perm=[0, 1, 3, 2])])
    scale = g.const(g.name("attn_scale"), np.array(1.0 / math.sqrt(s.head_dim), np.float32))
    scores = g.op("Add", [g.op("Mul", [scores, scale]), bias])
    attn = g.op("MatMul", [g.op("Softmax", [scores], axis=-1), v])
    merged = g.op(
        "Reshape",
        [
            g.op("Transpose", [attn], perm=[0, 2, 1, 3]),
            g.const(g.name("merge"), np.array([0, 0, s.d_model], np.int64)),
        ],
    )
    h = g.op("Add", [h, g.linear(merged, f"{p}.o", s.d_model, s.d_model)])
    x = g.layer_norm(h, f"{p}.ln_2", s.d_model)
    ff = g.linear(g.silu(g.linear(x, f"{p}.fc1", s.d_model, s.d_ff)), f"{p}.fc2", s.d_ff, s.d_model)
    return g.op("Add", [h, ff])


def _rotary_caches(g: Graph, s: LlmShape) -> tuple[str, str]:
    """cos and sin of position x inverse frequency (base 10,000, as Llama's), (context,
    head_dim / 2) float32, rounded from float64."""
    inv_freq = 1.0 / (10000.0 ** (np.arange(0, s.head_dim, 2, dtype=np.float64) / s.head_dim))
    angles = np.outer(np.arange(s.context, dtype=np.float64), inv_freq)
    cos = g.const("cos_cache", np.cos(angles).astype(np.float32))
    return cos, g.const("sin_cache", np.sin(angles).astype(np.float32))


def _gqa_graph(s: LlmShape, seed: int, dtype: str, rotary: bool = False) -> bytes:
    """The decoder with GroupQueryAttention layers (D91). Past and present are
    (batch, kv_heads, length, head_dim) as in optimum's layout; fed a past of a fixed
    capacity, the op returns a present of that capacity, so a runner can bind one buffer
    as both. ``seqlens_k`` (tokens in the cache after this step, minus one) and
    ``total_sequence_length`` are computed from ``attention_mask`` as the genai builder
    computes them (an all-ones mask of the sequence so far: no padding)."""
    g = Graph(seed, dtype)
    kv = s.cache_heads
    inputs = [
        value_info("input_ids", TensorProto.INT64, ["batch_size", "sequence_length"]),
        value_info("attention_mask", TensorProto.INT64, ["batch_size", "total_sequence_length"]),
    ]
    if not rotary:
        inputs.append(
            value_info("position_ids", TensorProto.INT64, ["batch_size", "sequence_length"])
        )
    outputs = [value_info("logits", TensorProto.FLOAT, ["batch_size", "sequence_length", s.vocab])]
    past_shape = ["batch_size", kv, "past_sequence_length", s.head_dim]
    present_shape = ["batch_size", kv, "total_sequence_length", s.head_dim]
    for i in range(s.layers):
        for kind in ("key", "value"):
            inputs.append(value_info(f"past_key_values.{i}.{kind}", TensorProto.FLOAT, past_shape))
            outputs.append(value_info(f"present.{i}.{kind}", TensorProto.FLOAT, present_shape))
    one = g.const("one_i64_1d", np.array([1], np.int64))
    seen = g.op("ReduceSum", ["attention_mask", one], keepdims=0)
    seqlens_k = g.op("Cast", [g.op("Sub", [seen, one])], to=TensorProto.INT32)
    total = g.op("Gather", [g.op("Shape", ["attention_mask"]), g.const("one_i64", np.array(1))])
    total = g.op("Cast", [total], to=TensorProto.INT32)

    h = g.op("Gather", [g.weight("wte", (s.vocab, s.d_model), 0.5), "input_ids"])
    rope: list[str] = []
    if rotary:
        rope = list(_rotary_caches(g, s))
    else:
        pos = g.op("Gather", [g.weight("wpe", (s.context, s.d_model), 0.1), "position_ids"])
        h = g.op("Add", [h, pos])
    kv_dim = kv * s.head_dim
    for i in range(s.layers):
        p = f"h{i}"
        x = g.layer_norm(h, f"{p}.ln_1", s.d_model)
        q = g.linear(x, f"{p}.q", s.d_model, s.d_model)
        k = g.linear(x, f"{p}.k", s.d_model, kv_dim)
        v = g.linear(x, f"{p}.v", s.d_model, kv_dim)
        attn = g.name("gqa")
        g.nodes.append(
            helper.make_node(
                "GroupQueryAttention",
                [
                    q,
                    k,
                    v,
                    *(f"past_key_values.{i}.{t}" for t in ("key", "value")),
                    seqlens_k,
                    total,
                    *rope,
                ],
                [attn, f"present.{i}.key", f"present.{i}.value"],
                name=attn,
                domain=MS_DOMAIN,
                num_heads=s.heads,
                kv_num_heads=kv,
                scale=1.0 / math.sqrt(s.head_dim),
                do_rotary=int(rotary),
            )
        )
        h = g.op("Add", [h, g.linear(attn, f"{p}.o", s.d_model, s.d_model)])
        x = g.layer_norm(h, f"{p}.ln_2", s.d_model)
        ff = g.linear(
            g.silu(g.linear(x, f"{p}.fc1", s.d_model, s.d_ff)), f"{p}.fc2", s.d_ff, s.d_model
        )
        h = g.op("Add", [h, ff])
    _lm_head(g, s, h)
    return g.model("aipg_demo_llm_gqa", inputs, outputs)
