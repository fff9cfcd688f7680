"""Demo models built offline from seeded weights: a tiny LLM and a tiny diffusion model.

Both use the real interfaces (the decoder layout Hugging Face optimum exports, with or
without KV cache; the Stable Diffusion text_encoder / unet / vae_decoder layout), so the
runners that serve them serve real exports too. They know nothing; they exist so that
tests and devnets exercise the whole path in seconds with nothing downloaded.

Determinism: weights come from SHAKE-256 of (seed, tensor name) mapped to uniforms with
exact integer arithmetic (no RNG library whose stream could change between versions), the
sentencepiece model is trained single-threaded on ``data/corpus.txt`` without shuffling,
and ONNX files are written with fixed producer fields, so a build is byte-identical every
time and the model ids never change.

The builders take knobs so that tests can make look-alike models: another weight seed
(same shapes), float16 or int8 weights, a smaller "draft" model with the same vocabulary, or a
decoder without KV cache.
"""

from __future__ import annotations

import hashlib
import io
import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import onnx
import sentencepiece as spm
from onnx import TensorProto, helper, numpy_helper

from .errors import ModelError
from .manifest import (
    DIFFUSION,
    LLM,
    DiffusionInterface,
    DiffusionParams,
    LlmInterface,
    Manifest,
    TokenizerInfo,
    file_entry,
    write_manifest,
)
from .sampling import SamplingParams

__all__ = [
    "DEMO_DIFFUSION_SEED",
    "DEMO_LLM_SEED",
    "build_demo",
    "build_demo_diffusion",
    "build_demo_llm",
    "demo_corpus",
    "train_demo_tokenizer",
]

DEMO_LLM_SEED = 1
DEMO_DIFFUSION_SEED = 2
OPSET = 17
IR_VERSION = 8  # readable by every onnxruntime >= 1.14
PRODUCER = "aipg-node demo"
LICENSE = "Apache-2.0"
TOKENIZER_FILE = "tokenizer.model"
EXTERNAL_DATA_FILE = "model.onnx_data"
VOCAB_SIZE = 768
DTYPES = ("float32", "float16", "int8")
BOS_ID, EOS_ID, PAD_ID = 1, 2, 3
UNET_BLOCKS = 3
# At most 14 channels (a 3x3 reduction of <= 126 terms: one block whatever the threads).
VAE_NARROW = 12
VAE_OUT_GAIN = 4.0


# -- tokenizer -----------------------------------------------------------------------------


def demo_corpus() -> str:
    """The text the demo tokenizer is trained on (shipped as package data)."""
    return resources.files("aipg.models").joinpath("data/corpus.txt").read_text("utf-8")


def train_demo_tokenizer(vocab_size: int = VOCAB_SIZE) -> bytes:
    """A sentencepiece BPE model trained on :func:`demo_corpus`; the same bytes every time.

    One thread and no input shuffling or sampling make training deterministic; byte
    fallback means any text encodes without unknown tokens.
    """
    lines = [line for line in demo_corpus().splitlines() if line.strip()]
    out = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=out,
        vocab_size=vocab_size,
        model_type="bpe",
        character_coverage=1.0,
        byte_fallback=True,
        split_digits=True,
        num_threads=1,
        shuffle_input_sentence=False,
        input_sentence_size=0,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        unk_id=0,
        bos_id=BOS_ID,
        eos_id=EOS_ID,
        pad_id=PAD_ID,
        minloglevel=2,
    )
    return out.getvalue()


def _tokenizer_info() -> TokenizerInfo:
    return TokenizerInfo(
        kind="sentencepiece", role="tokenizer", bos_id=BOS_ID, eos_id=EOS_ID, pad_id=PAD_ID
    )


# -- graph building ----------------------------------------------------------------------


class _Graph:
    """A small helper over onnx.helper: named nodes, seeded initializers."""

    def __init__(self, seed: int, dtype: str) -> None:
        if dtype not in DTYPES:
            raise ModelError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        self.seed = seed
        self.dtype = dtype
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0

    def name(self, prefix: str) -> str:
        self._count += 1
        return f"{prefix}_{self._count}"

    def op(self, op_type: str, inputs: list[str], n_out: int = 1, **attrs) -> str | list[str]:
        outs = [self.name(op_type.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=outs[0], **attrs))
        return outs[0] if n_out == 1 else outs

    def const(self, name: str, array: np.ndarray) -> str:
        """An exact constant (shapes, indices, biases of zero): never converted to fp16."""
        self.initializers.append(numpy_helper.from_array(array, name))
        return name

    def weight(self, name: str, shape: tuple[int, ...], scale: float) -> str:
        """A seeded weight, uniform in [-scale, scale]. Stored as float32; or as float16 and
        cast back; or as int8 with one symmetric scale per tensor and dequantized in-graph."""
        array = seeded_uniform(self.seed, name, shape, scale)
        if self.dtype == "float32":
            return self.const(name, array)
        if self.dtype == "float16":
            self.const(name + "_fp16", array.astype(np.float16))
            return self.op("Cast", [name + "_fp16"], to=TensorProto.FLOAT)
        step = np.float32(np.abs(array).max() / np.float32(127)) or np.float32(1)
        quantized = np.clip(np.round(array / step), -127, 127).astype(np.int8)
        self.const(name + "_int8", quantized)
        self.const(name + "_scale", np.array(step, np.float32))
        self.const(name + "_zero", np.array(0, np.int8))
        return self.op("DequantizeLinear", [name + "_int8", name + "_scale", name + "_zero"])

    def ones(self, name: str, n: int) -> str:
        return self.const(name, np.ones(n, np.float32))

    def zeros(self, name: str, n: int) -> str:
        return self.const(name, np.zeros(n, np.float32))

    def linear(self, x: str, name: str, d_in: int, d_out: int, bias: bool = True) -> str:
        y = self.op(
            "MatMul", [x, self.weight(name + ".weight", (d_in, d_out), 1 / math.sqrt(d_in))]
        )
        if bias:
            y = self.op("Add", [y, self.weight(name + ".bias", (d_out,), 0.02)])
        return y

    def layer_norm(self, x: str, name: str, dim: int) -> str:
        return self.op(
            "LayerNormalization",
            [x, self.ones(name + ".gamma", dim), self.zeros(name + ".beta", dim)],
            axis=-1,
            epsilon=1e-5,
        )

    def silu(self, x: str) -> str:
        return self.op("Mul", [x, self.op("Sigmoid", [x])])

    def model(self, name: str, inputs, outputs, *, half_io: bool = False) -> bytes:
        """Serialize the graph. ``half_io`` makes every float input and output float16 at
        the boundary (as fp16 exports are), computing in float32 inside."""
        if half_io:
            inputs, outputs = self._half_boundary(inputs, outputs)
        graph = helper.make_graph(self.nodes, name, inputs, outputs, self.initializers)
        model = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", OPSET)],
            producer_name=PRODUCER,
            producer_version="1",
            ir_version=IR_VERSION,
        )
        onnx.checker.check_model(model)
        return model.SerializeToString(deterministic=True)

    def _half_boundary(self, inputs, outputs):
        new_inputs, new_outputs, casts = [], [], []
        for vi in inputs:
            if vi.type.tensor_type.elem_type != TensorProto.FLOAT:
                new_inputs.append(vi)
                continue
            inner = vi.name + "_f32"
            for node in self.nodes:
                node.input[:] = [inner if i == vi.name else i for i in node.input]
            casts.append(helper.make_node("Cast", [vi.name], [inner], to=TensorProto.FLOAT))
            new_inputs.append(_io(vi.name, TensorProto.FLOAT16, _dims(vi)))
        self.nodes[:0] = casts
        for vi in outputs:
            if vi.type.tensor_type.elem_type != TensorProto.FLOAT:
                new_outputs.append(vi)
                continue
            inner = vi.name + "_f32"
            for node in self.nodes:
                node.output[:] = [inner if o == vi.name else o for o in node.output]
            self.nodes.append(helper.make_node("Cast", [inner], [vi.name], to=TensorProto.FLOAT16))
            new_outputs.append(_io(vi.name, TensorProto.FLOAT16, _dims(vi)))
        return new_inputs, new_outputs


def _dims(vi: onnx.ValueInfoProto) -> list:
    return [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]


def seeded_uniform(seed: int, name: str, shape: tuple[int, ...], scale: float) -> np.ndarray:
    """float32 uniforms in [-scale, scale] from SHAKE-256(seed, name); exact on every machine."""
    n = int(np.prod(shape))
    stream = hashlib.shake_256(b"aipg/demo-weights/1\0%d\0%s" % (seed, name.encode())).digest(4 * n)
    bits = np.frombuffer(stream, dtype="<u4") >> np.uint32(8)  # 24 bits: exact in float32
    unit = bits.astype(np.float32) * np.float32(2.0**-23) - np.float32(1.0)
    return (unit * np.float32(scale)).reshape(shape)


def _io(name: str, elem: int, shape: list) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, shape)


def _write_external(path: Path, model_bytes: bytes, location: str) -> None:
    """Write a model with its weights in ``location`` next to it (as exports over 2 GB are)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(
        onnx.load_from_string(model_bytes),
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=location,
        size_threshold=1024,
    )


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


# -- the LLM -------------------------------------------------------------------------------


@dataclass(frozen=True)
class LlmShape:
    """Sizes of a demo decoder."""

    layers: int = 2
    d_model: int = 96
    heads: int = 4
    d_ff: int = 256
    context: int = 384
    vocab: int = VOCAB_SIZE

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
    name: str = "aipg-demo-llm",
    version: str = "1",
) -> Path:
    """Build the demo decoder into ``out_dir`` (created) and return it.

    Writes ``model.onnx`` (optimum decoder interface, with KV cache unless ``kv_cache`` is
    False), ``tokenizer.model`` and ``manifest.json``. Change ``seed`` for a model of the
    same shape with other weights, ``dtype="float16"`` (or ``"int8"``) for cheaper weights, and the
    sizes for a smaller "draft" model with the same vocabulary; ``merged=True`` adds the
    ``use_cache_branch`` input of optimum's merged decoders; ``external_data=True`` keeps the
    weights in ``model.onnx_data`` (role ``decoder.data``), as large exports do. Raises
    ModelError for bad sizes.
    """
    shape = LlmShape(layers, d_model, heads, d_ff, context)
    if min(layers, d_model, heads, d_ff) < 1 or d_model % heads or context < 8:
        raise ModelError("demo llm: need positive sizes, d_model divisible by heads, context >= 8")
    out = Path(out_dir)
    graph = _llm_graph(shape, seed, dtype, kv_cache, merged)
    files = []
    if external_data:
        _write_external(out / "model.onnx", graph, EXTERNAL_DATA_FILE)
        files.append(file_entry(out, "decoder.data", EXTERNAL_DATA_FILE))
    else:
        _write(out / "model.onnx", graph)
    _write(out / TOKENIZER_FILE, train_demo_tokenizer(shape.vocab))
    files[:0] = [
        file_entry(out, "decoder", "model.onnx"),
        file_entry(out, "tokenizer", TOKENIZER_FILE),
    ]
    manifest = Manifest(
        name=name,
        version=version,
        kind=LLM,
        files=tuple(files),
        tokenizer=_tokenizer_info(),
        llm=LlmInterface(
            num_layers=layers,
            num_heads=heads,
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


def _llm_graph(s: LlmShape, seed: int, dtype: str, kv_cache: bool, merged: bool) -> bytes:
    g = _Graph(seed, dtype)
    inputs = [
        _io("input_ids", TensorProto.INT64, ["batch_size", "sequence_length"]),
        _io("attention_mask", TensorProto.INT64, ["batch_size", "total_sequence_length"]),
        _io("position_ids", TensorProto.INT64, ["batch_size", "sequence_length"]),
    ]
    outputs = [_io("logits", TensorProto.FLOAT, ["batch_size", "sequence_length", s.vocab])]
    kv_shape = ["batch_size", s.heads, "past_sequence_length", s.head_dim]
    present_shape = ["batch_size", s.heads, "total_sequence_length", s.head_dim]
    for i in range(s.layers if kv_cache else 0):
        for kind in ("key", "value"):
            inputs.append(_io(f"past_key_values.{i}.{kind}", TensorProto.FLOAT, kv_shape))
            outputs.append(_io(f"present.{i}.{kind}", TensorProto.FLOAT, present_shape))

    tok = g.op("Gather", [g.weight("wte", (s.vocab, s.d_model), 0.5), "input_ids"])
    pos = g.op("Gather", [g.weight("wpe", (s.context, s.d_model), 0.1), "position_ids"])
    h = g.op("Add", [tok, pos])
    if merged:
        # optimum's merged decoders take use_cache_branch; this one reads it (times zero)
        # so that a runner which forgets to feed it fails.
        inputs.append(_io("use_cache_branch", TensorProto.BOOL, [1]))
        flag = g.op("Cast", ["use_cache_branch"], to=TensorProto.FLOAT)
        h = g.op("Add", [h, g.op("Mul", [flag, g.const("zero_flag", np.array(0.0, np.float32))])])
    bias = _attention_bias(g)
    for i in range(s.layers):
        h = _decoder_layer(g, s, h, bias, i, kv_cache)
    h = g.layer_norm(h, "ln_f", s.d_model)
    g.nodes.append(
        helper.make_node(
            "MatMul",
            [h, g.weight("lm_head", (s.d_model, s.vocab), 2.0 / math.sqrt(s.d_model))],
            ["logits"],
            name="lm_head_matmul",
        )
    )
    return g.model("aipg_demo_llm", inputs, outputs)


def _attention_bias(g: _Graph) -> str:
    """[B, 1, S, T] additive mask: key j is visible to a query at position p iff j <= p and
    attention_mask[j] is 1 (positions are absolute, so this holds with and without cache)."""
    total = g.op("Shape", ["attention_mask"], start=1, end=2)
    total = g.op("Squeeze", [total, g.const("axis0", np.array([0], np.int64))])
    keys = g.op(
        "Range",
        [
            g.const("zero_i64", np.array(0, np.int64)),
            total,
            g.const("one_i64", np.array(1, np.int64)),
        ],
    )
    query_pos = g.op("Unsqueeze", ["position_ids", g.const("axis2", np.array([2], np.int64))])
    causal = g.op("LessOrEqual", [keys, query_pos])
    mask = g.op("Unsqueeze", ["attention_mask", g.const("axis1", np.array([1], np.int64))])
    visible = g.op("And", [causal, g.op("Cast", [mask], to=TensorProto.BOOL)])
    bias = g.op(
        "Where",
        [
            visible,
            g.const("zero_f", np.array(0.0, np.float32)),
            g.const("neg_inf", np.array(-1e9, np.float32)),
        ],
    )
    return g.op("Unsqueeze", [bias, "axis1"])


def _split_heads(g: _Graph, x: str, s: LlmShape) -> str:
    shape = g.const(g.name("heads_shape"), np.array([0, 0, s.heads, s.head_dim], np.int64))
    return g.op("Transpose", [g.op("Reshape", [x, shape])], perm=[0, 2, 1, 3])


def _decoder_layer(g: _Graph, s: LlmShape, h: str, bias: str, i: int, kv_cache: bool) -> str:
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


# -- the diffusion model ---------------------------------------------------------------------


@dataclass(frozen=True)
class DiffusionShape:
    """Sizes of the demo diffusion model."""

    channels: int = 128
    text_dim: int = 64
    text_length: int = 16
    latent_channels: int = 4
    time_dim: int = 32
    vocab: int = VOCAB_SIZE


def build_demo_diffusion(
    out_dir: Path | str,
    *,
    seed: int = DEMO_DIFFUSION_SEED,
    dtype: str = "float32",
    channels: int = 128,
    text_dim: int = 64,
    text_length: int = 16,
    half_io: bool = False,
    name: str = "aipg-demo-diffusion",
    version: str = "1",
) -> Path:
    """Build the demo diffusion model into ``out_dir`` (created) and return it.

    Writes the Stable Diffusion layout: ``text_encoder/model.onnx`` (input_ids int32 ->
    last_hidden_state), ``unet/model.onnx`` (sample, timestep int64, encoder_hidden_states
    -> out_sample), ``vae_decoder/model.onnx`` (latent_sample -> sample, 8x upscale),
    ``tokenizer/tokenizer.model`` and ``manifest.json``. Knobs as in :func:`build_demo_llm`;
    ``half_io=True`` makes every float input and output float16, as fp16 exports have them.
    """
    if min(channels, text_dim, text_length) < 1:
        raise ModelError("demo diffusion: sizes must be positive")
    s = DiffusionShape(channels=channels, text_dim=text_dim, text_length=text_length)
    out = Path(out_dir)
    _write(out / "text_encoder/model.onnx", _text_encoder_graph(s, seed, dtype, half_io))
    _write(out / "unet/model.onnx", _unet_graph(s, seed, dtype, half_io))
    _write(out / "vae_decoder/model.onnx", _vae_decoder_graph(s, seed, dtype, half_io))
    _write(out / "tokenizer" / TOKENIZER_FILE, train_demo_tokenizer(s.vocab))
    manifest = Manifest(
        name=name,
        version=version,
        kind=DIFFUSION,
        files=(
            file_entry(out, "text_encoder", "text_encoder/model.onnx"),
            file_entry(out, "unet", "unet/model.onnx"),
            file_entry(out, "vae_decoder", "vae_decoder/model.onnx"),
            file_entry(out, "tokenizer", f"tokenizer/{TOKENIZER_FILE}"),
        ),
        tokenizer=_tokenizer_info(),
        llm=None,
        diffusion=DiffusionInterface(
            latent_channels=s.latent_channels,
            vae_scale_factor=8,
            text_length=text_length,
            text_dim=text_dim,
            latent_scale_micro=182_150,
            train_timesteps=1000,
            beta_start_nano=850_000,
            beta_end_nano=12_000_000,
            min_size=32,
            max_size=256,
        ),
        default_sampling=None,
        default_diffusion=DiffusionParams(steps=20, guidance_milli=7500, width=64, height=64),
        license=LICENSE,
    )
    write_manifest(out, manifest)
    return out


def _text_encoder_graph(s: DiffusionShape, seed: int, dtype: str, half_io: bool) -> bytes:
    g = _Graph(seed, dtype)
    ids = g.op("Cast", ["input_ids"], to=TensorProto.INT64)
    h = g.op("Gather", [g.weight("te.token_embedding", (s.vocab, s.text_dim), 1.0), ids])
    h = g.op("Add", [h, g.weight("te.position_embedding", (s.text_length, s.text_dim), 0.1)])
    x = g.layer_norm(h, "te.ln_1", s.text_dim)
    ff = g.linear(
        g.silu(g.linear(x, "te.fc1", s.text_dim, 2 * s.text_dim)),
        "te.fc2",
        2 * s.text_dim,
        s.text_dim,
    )
    h = g.op("Add", [h, ff])
    g.nodes.append(
        helper.make_node(
            "LayerNormalization",
            [h, g.ones("te.ln_f.gamma", s.text_dim), g.zeros("te.ln_f.beta", s.text_dim)],
            ["last_hidden_state"],
            axis=-1,
            epsilon=1e-5,
        )
    )
    return g.model(
        "aipg_demo_text_encoder",
        [_io("input_ids", TensorProto.INT32, ["batch", s.text_length])],
        [_io("last_hidden_state", TensorProto.FLOAT, ["batch", s.text_length, s.text_dim])],
        half_io=half_io,
    )


def _conv(g: _Graph, x: str, name: str, c_in: int, c_out: int, gain: float = 1.0) -> str:
    w = g.weight(name + ".weight", (c_out, c_in, 3, 3), gain / math.sqrt(9 * c_in))
    b = g.weight(name + ".bias", (c_out,), 0.02)
    return g.op("Conv", [x, w, b], pads=[1, 1, 1, 1], kernel_shape=[3, 3])


def _timestep_embedding(g: _Graph, s: DiffusionShape) -> str:
    """[B, channels] embedding of the int64 ``timestep`` (sinusoids, then an MLP)."""
    half = s.time_dim // 2
    # Powers of two: exact in float32 on every machine (no libm in the model's bytes).
    freqs = np.ldexp(np.float32(1), -np.arange(half)).astype(np.float32)
    t = g.op(
        "Unsqueeze",
        [g.op("Cast", ["timestep"], to=TensorProto.FLOAT), g.const("ax1", np.array([1], np.int64))],
    )
    args = g.op("Mul", [t, g.const("time_freqs", freqs.reshape(1, half))])
    emb = g.op("Concat", [g.op("Sin", [args]), g.op("Cos", [args])], axis=1)
    return g.silu(
        g.linear(
            g.silu(g.linear(emb, "unet.time1", s.time_dim, s.channels)),
            "unet.time2",
            s.channels,
            s.channels,
        )
    )


# Residual convs keep the activations' scale (uniform weights of variance 1/fan-in).
_RES_GAIN = math.sqrt(3.0)


def _res_block(g: _Graph, x: str, emb: str | None, name: str, c: int) -> str:
    """SD's ResnetBlock2D without the group norms: x + conv(silu(conv(silu(x)) + temb))."""
    h = _conv(g, g.silu(x), name + ".conv1", c, c, gain=_RES_GAIN)
    if emb is not None:
        # Each block projects the time embedding to its own per-channel shift, as SD does.
        shift = g.op(
            "Unsqueeze",
            [
                g.linear(emb, name + ".time", c, c),
                g.const(g.name("ax23"), np.array([2, 3], np.int64)),
            ],
        )
        h = g.op("Add", [h, shift])
    return g.op("Add", [x, _conv(g, g.silu(h), name + ".conv2", c, c, gain=_RES_GAIN)])


def _cross_attention(g: _Graph, x: str, s: DiffusionShape, name: str) -> str:
    """Every latent pixel attends to the text tokens (one head), residually."""
    c = s.channels
    spatial = g.op("Shape", [x])
    tokens = g.op(
        "Transpose",
        [g.op("Reshape", [x, g.const(g.name("flat"), np.array([0, c, -1], np.int64))])],
        perm=[0, 2, 1],
    )
    q = g.linear(g.layer_norm(tokens, name + ".ln", c), name + ".q", c, c)
    k = g.linear("encoder_hidden_states", name + ".k", s.text_dim, c)
    v = g.linear("encoder_hidden_states", name + ".v", s.text_dim, c)
    scores = g.op(
        "Mul",
        [
            g.op("MatMul", [q, g.op("Transpose", [k], perm=[0, 2, 1])]),
            g.const(g.name("attn_scale"), np.array(1 / math.sqrt(c), np.float32)),
        ],
    )
    attn = g.linear(g.op("MatMul", [g.op("Softmax", [scores], axis=-1), v]), name + ".o", c, c)
    tokens = g.op("Add", [tokens, attn])
    return g.op("Reshape", [g.op("Transpose", [tokens], perm=[0, 2, 1]), spatial])


def _unet_graph(s: DiffusionShape, seed: int, dtype: str, half_io: bool) -> bytes:
    """conv_in, (res block + cross-attention) x UNET_BLOCKS, a mid res block, conv_out.

    As in Stable Diffusion, the UNet is where a job's compute goes: a guided step (two
    forward passes) costs about twice the VAE decode and far more than the text encoder,
    and a step has enough work per latent pixel not to be dominated by per-call overhead.
    """
    g = _Graph(seed, dtype)
    c = s.channels
    emb = _timestep_embedding(g, s)
    x = _conv(g, "sample", "unet.conv_in", s.latent_channels, c)
    for i in range(UNET_BLOCKS):
        x = _res_block(g, x, emb, f"unet.down{i}.res", c)
        x = _cross_attention(g, x, s, f"unet.down{i}.attn")
    x = _res_block(g, x, emb, "unet.mid.res", c)
    out = _conv(g, g.silu(x), "unet.conv_out", c, s.latent_channels)
    g.nodes.append(helper.make_node("Identity", [out], ["out_sample"]))
    latent = ["batch", s.latent_channels, "height", "width"]
    return g.model(
        "aipg_demo_unet",
        [
            _io("sample", TensorProto.FLOAT, latent),
            _io("timestep", TensorProto.INT64, ["batch"]),
            _io("encoder_hidden_states", TensorProto.FLOAT, ["batch", s.text_length, s.text_dim]),
        ],
        [_io("out_sample", TensorProto.FLOAT, latent)],
        half_io=half_io,
    )


def _vae_decoder_graph(s: DiffusionShape, seed: int, dtype: str, half_io: bool) -> bytes:
    """conv_in, a mid conv, three (2x upsample, conv) stages with another conv at 4x,
    conv_out, tanh: about one UNet forward pass of work (SD's decoder costs one to a few).

    Two constraints keep the decoded image the same bits on every honest validator.
    Convolutions over 16 or more channels run only at 4x and 8x, where a side is at
    least 16 pixels: onnxruntime's CPU convolution of one image smaller than that splits
    its reduction by thread count (the bits change between 1 and 2 threads). And there
    are no residual adds: at optimization level 99 onnxruntime fuses an add into the
    convolution before it, which rounds differently.
    """
    g = _Graph(seed, dtype)
    narrow, c4, c8 = VAE_NARROW, max(1, s.channels // 4), max(1, 3 * s.channels // 16)
    x = _conv(g, "latent_sample", "vae.conv_in", s.latent_channels, narrow)
    x = g.silu(_conv(g, g.silu(x), "vae.mid", narrow, narrow))
    scales = g.const("up2", np.array([1, 1, 2, 2], np.float32))
    c = narrow
    for i, c_out in enumerate((narrow, c4, c8)):  # 3 doublings: the 8x of SD's VAE
        x = g.op("Resize", [x, "", scales], mode="nearest")
        x = g.silu(_conv(g, x, f"vae.up{i}", c, c_out))
        c = c_out
        if i == 1:
            x = g.silu(_conv(g, x, f"vae.up{i}.conv", c, c))
    out = g.op("Tanh", [_conv(g, x, "vae.conv_out", c, 3, gain=VAE_OUT_GAIN)])
    g.nodes.append(helper.make_node("Identity", [out], ["sample"]))
    return g.model(
        "aipg_demo_vae_decoder",
        [_io("latent_sample", TensorProto.FLOAT, ["batch", s.latent_channels, "height", "width"])],
        [_io("sample", TensorProto.FLOAT, ["batch", 3, "image_height", "image_width"])],
        half_io=half_io,
    )


def build_demo(out_dir: Path | str) -> tuple[Path, Path]:
    """Build both demo models into ``out_dir/llm`` and ``out_dir/diffusion``."""
    out = Path(out_dir)
    return build_demo_llm(out / "llm"), build_demo_diffusion(out / "diffusion")
