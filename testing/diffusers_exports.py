"""Tiny diffusers ONNX exports, written the way ``optimum-cli export onnx`` lays them out.

:func:`build_diffusers_export` writes ``model_index.json``, ``scheduler/scheduler_config.json``
and each component folder (``text_encoder[_2]/model.onnx`` + ``config.json``, ``unet``,
``vae_decoder``, ``tokenizer[_2]/`` with ``vocab.json``, ``merges.txt``,
``tokenizer_config.json``, ``special_tokens_map.json``) with diffusers' graph input and
output names, shapes and dtypes, and small seeded weights: no download, the same bytes on
every run. SD 1.x/2.x (``sdxl=False``) or SDXL base (``sdxl=True``: a second text encoder
with ``text_embeds``, penultimate ``hidden_states.N`` outputs, a UNet taking
``text_embeds`` and ``time_ids``).

:func:`clip_vocab_and_merges` makes a small CLIP-style BPE vocabulary (CLIP's own vocab.json
order: 256 byte symbols, the same with ``</w>``, one entry per merge, then
``<|startoftext|>`` and ``<|endoftext|>``); :func:`reference_clip_encode` is OpenAI's CLIP
BPE algorithm written out in plain Python, to check a tokenizer against.
"""

from __future__ import annotations

import itertools
import json
import unicodedata
from collections import Counter
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
from onnx import TensorProto, helper

from aipg.models.demo_diffusion import DiffusionShape, _conv, _cross_attention, _vae_decoder_graph
from aipg.models.demo_graph import Graph, value_info, write_file
from aipg.models.demo_tokenizer import demo_corpus

__all__ = [
    "DDIM_SD2_V",
    "EULER_SDXL",
    "SD1_DDIM",
    "build_diffusers_export",
    "bytes_to_unicode",
    "clip_vocab_and_merges",
    "reference_clip_encode",
    "reference_clip_row",
]

TEXT_LENGTH = 77
BOS, EOS = "<|startoftext|>", "<|endoftext|>"

# Scheduler configs as the hub's models have them (SD 1.x with DDIM swapped in, SD 2.x's
# v-prediction DDIM, SDXL base's Euler).
SD1_DDIM = {
    "_class_name": "DDIMScheduler",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "steps_offset": 1,
}
DDIM_SD2_V = {**SD1_DDIM, "prediction_type": "v_prediction", "timestep_spacing": "trailing"}
EULER_SDXL = {
    "_class_name": "EulerDiscreteScheduler",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "interpolation_type": "linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "use_karras_sigmas": False,
}


# -- CLIP BPE --------------------------------------------------------------------------------


@cache
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable character map."""
    bs = list(range(ord("!"), ord("~") + 1))
    bs += list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


def _words(text: str) -> list[str]:
    """CLIP's split, ``'s|'t|'re|'ve|'m|'ll|'d|[\\p{L}]+|[\\p{N}]|[^\\s\\p{L}\\p{N}]+``,
    written as a scanner (Python's re has no \\p classes)."""

    def letter(c: str) -> bool:
        return unicodedata.category(c).startswith("L")

    def number(c: str) -> bool:
        return unicodedata.category(c).startswith("N")

    out, i = [], 0
    while i < len(text):
        c = text[i]
        contraction = next(
            (s for s in ("'s", "'t", "'re", "'ve", "'m", "'ll", "'d") if text.startswith(s, i)),
            None,
        )
        if contraction:
            out.append(contraction)
            i += len(contraction)
        elif letter(c):
            j = i
            while j < len(text) and letter(text[j]):
                j += 1
            out.append(text[i:j])
            i = j
        elif number(c):
            out.append(c)
            i += 1
        elif c.isspace():
            i += 1
        else:
            j = i
            while j < len(text) and not (text[j].isspace() or letter(text[j]) or number(text[j])):
                j += 1
            out.append(text[i:j])
            i = j
    return out


def _clean(text: str) -> str:
    return " ".join(unicodedata.normalize("NFC", text).split()).lower()


def _symbols(word: str) -> list[str]:
    b2u = bytes_to_unicode()
    chars = [b2u[b] for b in word.encode("utf-8")]
    return [*chars[:-1], chars[-1] + "</w>"]


@cache
def clip_vocab_and_merges(merges: int = 300) -> tuple[bytes, bytes]:
    """(vocab.json, merges.txt) of a CLIP-style BPE learned on the demo corpus: the most
    frequent pair first, ties broken by the pair's text, so every run learns the same."""
    words = Counter(tuple(_symbols(w)) for w in _words(_clean(demo_corpus())))
    learned: list[tuple[str, str]] = []
    for _ in range(merges):
        pairs: Counter = Counter()
        for word, n in words.items():
            for pair in itertools.pairwise(word):
                pairs[pair] += n
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        learned.append(best)
        merged: Counter = Counter()
        for word, n in words.items():
            merged[tuple(_merge(list(word), best))] += n
        words = merged
    base = list(bytes_to_unicode().values())
    vocab = [*base, *(c + "</w>" for c in base), *("".join(p) for p in learned), BOS, EOS]
    ids = {t: i for i, t in enumerate(dict.fromkeys(vocab))}
    text = "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in learned)
    return json.dumps(ids, ensure_ascii=False).encode(), text.encode()


def _merge(word: list[str], pair: tuple[str, str]) -> list[str]:
    out, i = [], 0
    while i < len(word):
        if i + 1 < len(word) and (word[i], word[i + 1]) == pair:
            out.append(word[i] + word[i + 1])
            i += 2
        else:
            out.append(word[i])
            i += 1
    return out


def reference_clip_encode(
    text: str, vocab: dict[str, int], merges: list[tuple[str, str]]
) -> list[int]:
    """OpenAI's CLIP ``SimpleTokenizer.encode`` (lowest-rank pair merged first)."""
    ranks = {p: i for i, p in enumerate(merges)}
    ids = []
    for word in _words(_clean(text)):
        symbols = _symbols(word)
        while len(symbols) > 1:
            pairs = [(ranks.get(p, len(ranks)), p) for p in itertools.pairwise(symbols)]
            rank, best = min(pairs)
            if rank == len(ranks):
                break
            symbols = _merge(symbols, best)
        ids.extend(vocab[s] for s in symbols)
    return ids


def reference_clip_row(
    text: str, vocab: dict[str, int], merges: list[tuple[str, str]], pad: str, length: int = 77
) -> list[int]:
    """What ``CLIPTokenizer(text, padding="max_length", truncation=True)`` gives."""
    ids = [vocab[BOS], *reference_clip_encode(text, vocab, merges)[: length - 2], vocab[EOS]]
    return ids + [vocab[pad]] * (length - len(ids))


# -- graphs ------------------------------------------------------------------------------------


def _text_encoder(seed: int, vocab: int, dim: int, layers: int, proj: int | None) -> bytes:
    """CLIPTextModel(WithProjection) outputs: last_hidden_state, pooler_output or text_embeds,
    hidden_states.0 .. hidden_states.{layers}."""
    g = Graph(seed, "float32")
    ids = g.op("Cast", ["input_ids"], to=TensorProto.INT64)
    h = g.op("Gather", [g.weight("tok", (vocab, dim), 1.0), ids])
    h = g.op("Add", [h, g.weight("pos", (TEXT_LENGTH, dim), 0.1)])
    hidden = [h]
    for i in range(layers):
        x = g.layer_norm(h, f"l{i}.ln", dim)
        ff = g.linear(g.silu(g.linear(x, f"l{i}.fc1", dim, 2 * dim)), f"l{i}.fc2", 2 * dim, dim)
        h = g.op("Add", [h, ff])
        hidden.append(h)
    last = g.layer_norm(h, "ln_f", dim)
    pooled = g.op("ReduceMean", [last], axes=[1], keepdims=0)
    pooled_name = "pooler_output"
    if proj is not None:
        pooled = g.linear(pooled, "proj", dim, proj, bias=False)
        pooled_name = "text_embeds"
    names = ["last_hidden_state", pooled_name, *(f"hidden_states.{i}" for i in range(layers + 1))]
    for src, name in zip([last, pooled, *hidden], names, strict=True):
        g.nodes.append(helper.make_node("Identity", [src], [name]))
    seq = ["batch_size", "sequence_length", dim]
    outputs = [value_info(n, TensorProto.FLOAT, seq) for n in names]
    outputs[1] = value_info(pooled_name, TensorProto.FLOAT, ["batch_size", proj or dim])
    return g.model(
        "clip_text_model",
        [value_info("input_ids", TensorProto.INT32, ["batch_size", "sequence_length"])],
        outputs,
    )


def _unet(seed: int, s: DiffusionShape, timestep: str, pooled: int | None) -> bytes:
    """sample, timestep, encoder_hidden_states [, text_embeds, time_ids] -> out_sample."""
    g = Graph(seed, "float32")
    c, half = s.channels, s.time_dim // 2
    freqs = np.ldexp(np.float32(1), -np.arange(half)).astype(np.float32) / np.float32(64)
    t = g.op("Cast", ["timestep"], to=TensorProto.FLOAT)
    t = g.op("Reshape", [t, g.const("t_shape", np.array([-1, 1], np.int64))])
    args = g.op("Mul", [t, g.const("freqs", freqs.reshape(1, half))])
    emb = g.op("Concat", [g.op("Sin", [args]), g.op("Cos", [args])], axis=1)
    emb = g.linear(emb, "time", s.time_dim, c)
    if pooled is not None:
        ids = g.op("Mul", ["time_ids", g.const("ids_scale", np.array(1 / 64, np.float32))])
        emb = g.op("Add", [emb, g.linear(ids, "add_time", 6, c)])
        emb = g.op("Add", [emb, g.linear("text_embeds", "add_text", pooled, c)])
    emb = g.op("Unsqueeze", [g.silu(emb), g.const("ax23", np.array([2, 3], np.int64))])
    x = _conv(g, "sample", "conv_in", s.latent_channels, c)
    x = g.op("Add", [x, emb])
    x = _cross_attention(g, g.silu(x), s, "attn")
    out = _conv(g, g.silu(x), "conv_out", c, s.latent_channels)
    g.nodes.append(helper.make_node("Identity", [out], ["out_sample"]))
    latent = ["batch_size", s.latent_channels, "height", "width"]
    t_kind, t_shape = {
        "float0d": (TensorProto.FLOAT, []),
        "float": (TensorProto.FLOAT, ["batch_size"]),
        "int64": (TensorProto.INT64, ["batch_size"]),
    }[timestep]
    inputs = [
        value_info("sample", TensorProto.FLOAT, latent),
        value_info("timestep", t_kind, t_shape),
        value_info(
            "encoder_hidden_states",
            TensorProto.FLOAT,
            ["batch_size", "sequence_length", s.text_dim],
        ),
    ]
    if pooled is not None:
        inputs += [
            value_info("text_embeds", TensorProto.FLOAT, ["batch_size", pooled]),
            value_info("time_ids", TensorProto.FLOAT, ["batch_size", 6]),
        ]
    return g.model("unet", inputs, [value_info("out_sample", TensorProto.FLOAT, latent)])


# -- the export ------------------------------------------------------------------------------


def _json(path: Path, value: Any) -> None:
    write_file(path, (json.dumps(value, indent=2, sort_keys=True) + "\n").encode())


def _tokenizer_dir(out: Path, vocab: bytes, merges: bytes, pad: str) -> None:
    write_file(out / "vocab.json", vocab)
    write_file(out / "merges.txt", merges)
    _json(
        out / "tokenizer_config.json",
        {
            "tokenizer_class": "CLIPTokenizer",
            "bos_token": {"content": BOS, "__type": "AddedToken"},
            "eos_token": {"content": EOS, "__type": "AddedToken"},
            "unk_token": {"content": EOS, "__type": "AddedToken"},
            "pad_token": pad,
            "model_max_length": TEXT_LENGTH,
            "do_lower_case": True,
        },
    )
    _json(
        out / "special_tokens_map.json",
        {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": pad},
    )


def build_diffusers_export(
    out_dir: Path | str,
    *,
    sdxl: bool = False,
    scheduler: dict | None = None,
    timestep: str = "float0d",
    seed: int = 5,
    text_dim: int = 32,
    text_dim_2: int = 48,
    pooled_dim: int = 40,
    channels: int = 32,
    sample_size: int = 8,
    force_zeros_for_empty_prompt: bool = True,
) -> Path:
    """Write a tiny diffusers ONNX export to ``out_dir`` and return it.

    ``timestep`` is how the UNet declares it: ``float0d`` (current optimum), ``float`` or
    ``int64`` (``[batch]``, older exports). ``scheduler`` is scheduler_config.json (default:
    SD 1.x's DDIM, or SDXL's Euler).
    """
    out = Path(out_dir)
    vocab, merges = clip_vocab_and_merges()
    n_vocab = len(json.loads(vocab))
    total_dim = text_dim + text_dim_2 if sdxl else text_dim
    shape = DiffusionShape(channels=channels, text_dim=total_dim, text_length=TEXT_LENGTH)
    index: dict[str, Any] = {
        "_class_name": "StableDiffusionXLPipeline" if sdxl else "StableDiffusionPipeline",
        "_diffusers_version": "0.30.0",
        "scheduler": [
            "diffusers",
            (scheduler or (EULER_SDXL if sdxl else SD1_DDIM))["_class_name"],
        ],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    if sdxl:
        index |= {
            "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
            "tokenizer_2": ["transformers", "CLIPTokenizer"],
            "force_zeros_for_empty_prompt": force_zeros_for_empty_prompt,
        }
    else:
        index |= {"safety_checker": [None, None], "requires_safety_checker": False}
    _json(out / "model_index.json", index)
    _json(out / "scheduler/scheduler_config.json", scheduler or (EULER_SDXL if sdxl else SD1_DDIM))
    layers = 2
    write_file(
        out / "text_encoder/model.onnx", _text_encoder(seed, n_vocab, text_dim, layers, None)
    )
    _json(
        out / "text_encoder/config.json",
        {
            "architectures": ["CLIPTextModel"],
            "hidden_size": text_dim,
            "max_position_embeddings": TEXT_LENGTH,
            "num_hidden_layers": layers,
            "vocab_size": n_vocab,
        },
    )
    _tokenizer_dir(out / "tokenizer", vocab, merges, EOS)
    if sdxl:
        graph = _text_encoder(seed + 1, n_vocab, text_dim_2, layers, pooled_dim)
        write_file(out / "text_encoder_2/model.onnx", graph)
        _json(
            out / "text_encoder_2/config.json",
            {
                "architectures": ["CLIPTextModelWithProjection"],
                "hidden_size": text_dim_2,
                "max_position_embeddings": TEXT_LENGTH,
                "num_hidden_layers": layers,
                "projection_dim": pooled_dim,
                "vocab_size": n_vocab,
            },
        )
        _tokenizer_dir(out / "tokenizer_2", vocab, merges, "!")
    write_file(
        out / "unet/model.onnx", _unet(seed + 2, shape, timestep, pooled_dim if sdxl else None)
    )
    unet_config: dict[str, Any] = {
        "in_channels": shape.latent_channels,
        "out_channels": shape.latent_channels,
        "cross_attention_dim": total_dim,
        "sample_size": sample_size,
        "block_out_channels": [channels],
    }
    if sdxl:
        unet_config |= {
            "addition_embed_type": "text_time",
            "addition_time_embed_dim": 8,
            "projection_class_embeddings_input_dim": pooled_dim + 6 * 8,
        }
    _json(out / "unet/config.json", unet_config)
    write_file(
        out / "vae_decoder/model.onnx", _vae_decoder_graph(shape, seed + 3, "float32", False)
    )
    _json(
        out / "vae_decoder/config.json",
        {
            "latent_channels": shape.latent_channels,
            "scaling_factor": 0.13025 if sdxl else 0.18215,
            "block_out_channels": [8, 8, 8, 8],
            "sample_size": sample_size * 8,
        },
    )
    return out
