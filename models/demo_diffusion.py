"""The demo diffusion model: Stable Diffusion's text_encoder / unet / vae_decoder layout, tiny."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from onnx import TensorProto, helper

from .demo_graph import LICENSE, Graph, value_info, write_file
from .demo_tokenizer import TOKENIZER_FILE, VOCAB_SIZE, demo_tokenizer_info, train_demo_tokenizer
from .errors import ModelError
from .manifest import (
    DIFFUSION,
    DiffusionInterface,
    DiffusionParams,
    Manifest,
    file_entry,
    write_manifest,
)

DEMO_DIFFUSION_SEED = 2
UNET_BLOCKS = 3
# At most 14 channels (a 3x3 reduction of <= 126 terms: one block whatever the threads).
VAE_NARROW = 12
VAE_OUT_GAIN = 4.0


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
    write_file(out / "text_encoder/model.onnx", _text_encoder_graph(s, seed, dtype, half_io))
    write_file(out / "unet/model.onnx", _unet_graph(s, seed, dtype, half_io))
    write_file(out / "vae_decoder/model.onnx", _vae_decoder_graph(s, seed, dtype, half_io))
    write_file(out / "tokenizer" / TOKENIZER_FILE, train_demo_tokenizer(s.vocab))
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
        tokenizer=demo_tokenizer_info(),
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
    g = Graph(seed, dtype)
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
        [value_info("input_ids", TensorProto.INT32, ["batch", s.text_length])],
        [value_info("last_hidden_state", TensorProto.FLOAT, ["batch", s.text_length, s.text_dim])],
        half_io=half_io,
    )


def _conv(g: Graph, x: str, name: str, c_in: int, c_out: int, gain: float = 1.0) -> str:
    w = g.weight(name + ".weight", (c_out, c_in, 3, 3), gain / math.sqrt(9 * c_in))
    b = g.weight(name + ".bias", (c_out,), 0.02)
    return g.op("Conv", [x, w, b], pads=[1, 1, 1, 1], kernel_shape=[3, 3])


def _timestep_embedding(g: Graph, s: DiffusionShape) -> str:
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


def _res_block(g: Graph, x: str, emb: str | None, name: str, c: int) -> str:
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


def _cross_attention(g: Graph, x: str, s: DiffusionShape, name: str) -> str:
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
    g = Graph(seed, dtype)
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
            value_info("sample", TensorProto.FLOAT, latent),
            value_info("timestep", TensorProto.INT64, ["batch"]),
            value_info(
                "encoder_hidden_states", TensorProto.FLOAT, ["batch", s.text_length, s.text_dim]
            ),
        ],
        [value_info("out_sample", TensorProto.FLOAT, latent)],
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
    g = Graph(seed, dtype)
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
        [
            value_info(
                "latent_sample", TensorProto.FLOAT, ["batch", s.latent_channels, "height", "width"]
            )
        ],
        [value_info("sample", TensorProto.FLOAT, ["batch", 3, "image_height", "image_width"])],
        half_io=half_io,
    )
