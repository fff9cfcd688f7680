"""Reading a Hugging Face export's JSON configs into manifest fields (for :mod:`.hf_import`).

Every value the runner needs comes from the export's own files: ``config.json`` (layers,
key/value heads, head size, vocabulary, context), ``generation_config.json`` (eos ids,
several allowed; pad; default sampling), ``tokenizer_config.json`` (BOS/EOS texts,
``add_bos_token`` / ``add_eos_token``, the chat template; or ``chat_template.jinja`` /
``chat_template.json`` beside it). Files are untrusted: sizes are bounded and every bad
or missing value is a ModelError that names the file and the key.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .chat import compile_template, render_chat_template
from .errors import ModelError
from .manifest import MAX_CHAT_TEMPLATE, MAX_EOS_IDS, MAX_TOKEN_TEXT
from .sampling import MAX_TEMPERATURE_MILLI, SamplingParams

__all__ = ["HfConfig", "TokenizerConfig", "read_json", "read_llm_config", "read_tokenizer_config"]

MAX_CONFIG_BYTES = 4 << 20  # tokenizer_config.json of real models: up to ~1 MB (added tokens)


def read_json(path: Path, *, required: bool = True) -> dict:
    """The JSON object in ``path`` ({} when it is absent and not ``required``)."""
    if not path.is_file():
        if required:
            raise ModelError(f"{path.name} is missing from the export ({path.parent})")
        return {}
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise ModelError(f"{path.name} is over {MAX_CONFIG_BYTES} bytes")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise ModelError(f"{path.name} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ModelError(f"{path.name} must hold a JSON object")
    return data


def _int(cfg: dict, keys: tuple[str, ...], where: str, default: int | None = None) -> int:
    """The first of ``keys`` in ``cfg`` (a positive int), else ``default``."""
    for key in keys:
        if key in cfg and cfg[key] is not None:
            value = cfg[key]
            if type(value) is not int or value <= 0:
                raise ModelError(f"{where}: {key} must be a positive integer, got {value!r}")
            return value
    if default is None:
        raise ModelError(f"{where}: no {' / '.join(keys)}")
    return default


def _ids(value: Any, where: str) -> list[int]:
    """An id or list of ids (generation configs allow both); [] for None."""
    if value is None:
        return []
    items = value if isinstance(value, list) else [value]
    if not all(type(i) is int and 0 <= i < 2**32 for i in items):
        raise ModelError(f"{where} must be a token id or a list of them, got {value!r}")
    return items


@dataclass(frozen=True)
class HfConfig:
    """The decoder's numbers from config.json, and generation_config.json's ids/defaults."""

    num_layers: int
    num_attention_heads: int
    num_kv_heads: int  # what the KV cache holds: optimum's past_key_values.N have these heads
    head_dim: int
    vocab_size: int
    context_length: int
    name: str
    eos_ids: list[int]
    bos_id: int | None
    pad_id: int | None
    sampling: SamplingParams


def read_llm_config(src: Path) -> HfConfig:
    """config.json and generation_config.json of the export in ``src``."""
    cfg = read_json(src / "config.json")
    # Multimodal configs nest the language model's numbers.
    if isinstance(cfg.get("text_config"), dict) and "num_hidden_layers" not in cfg:
        cfg = {**cfg, **cfg["text_config"]}
    gen = read_json(src / "generation_config.json", required=False)
    w = "config.json"
    layers = _int(cfg, ("num_hidden_layers", "n_layer", "num_layers"), w)
    heads = _int(cfg, ("num_attention_heads", "n_head"), w)
    kv_heads = _int(cfg, ("num_key_value_heads",), w, heads)
    if cfg.get("multi_query") is True:
        kv_heads = 1
    if heads % kv_heads:
        raise ModelError(f"{w}: {heads} attention heads are not a multiple of {kv_heads} KV heads")
    hidden = _int(cfg, ("hidden_size", "n_embd", "d_model"), w)
    head_dim = _int(cfg, ("head_dim",), w, hidden // heads if hidden % heads == 0 else None)
    vocab = _int(cfg, ("vocab_size",), w)
    context = _int(cfg, ("max_position_embeddings", "n_positions", "max_sequence_length"), w)
    eos = _ids(gen.get("eos_token_id"), "generation_config.json: eos_token_id") or _ids(
        cfg.get("eos_token_id"), f"{w}: eos_token_id"
    )
    if len(eos) > MAX_EOS_IDS:
        raise ModelError(f"generation_config.json: at most {MAX_EOS_IDS} eos ids, got {len(eos)}")
    bos = _ids(gen.get("bos_token_id", cfg.get("bos_token_id")), "bos_token_id")
    pad = _ids(gen.get("pad_token_id", cfg.get("pad_token_id")), "pad_token_id")
    raw_name = cfg.get("_name_or_path")
    name = raw_name.rstrip("/").rsplit("/", 1)[-1] if isinstance(raw_name, str) else ""
    return HfConfig(
        num_layers=layers,
        num_attention_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        vocab_size=vocab,
        context_length=context,
        name=name,
        eos_ids=list(dict.fromkeys(eos)),
        bos_id=bos[0] if bos else None,
        pad_id=pad[0] if pad else None,
        sampling=_sampling(gen),
    )


def _sampling(gen: dict) -> SamplingParams:
    """Default sampling from generation_config.json: greedy unless ``do_sample``."""
    if gen.get("do_sample") is not True:
        return SamplingParams()

    def milli(key: str, default: float, hi: int) -> int:
        value = gen.get(key, default)
        if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
            raise ModelError(f"generation_config.json: {key} must be a number >= 0")
        return max(0, min(hi, round(value * 1000)))

    top_k = gen.get("top_k", 0)
    if type(top_k) is not int or not 0 <= top_k < 2**32:
        raise ModelError("generation_config.json: top_k must be an integer >= 0")
    return SamplingParams(
        temperature_milli=milli("temperature", 1.0, MAX_TEMPERATURE_MILLI),
        top_k=top_k,
        top_p_milli=max(1, milli("top_p", 1.0, 1000)),
    )


@dataclass(frozen=True)
class TokenizerConfig:
    """tokenizer_config.json's texts and flags (None: the config does not say)."""

    bos_token: str | None
    eos_token: str | None
    pad_token: str | None
    add_bos: bool | None
    add_eos: bool | None
    chat_template: str


def _token_text(value: Any, key: str) -> str | None:
    """A special token's text: a string, or an AddedToken object with ``content``."""
    if isinstance(value, dict):
        value = value.get("content")
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > MAX_TOKEN_TEXT:
        raise ModelError(
            f"tokenizer_config.json: {key} must be a text of <= {MAX_TOKEN_TEXT} characters"
        )
    return value


def _flag(cfg: dict, key: str) -> bool | None:
    value = cfg.get(key)
    if value is not None and type(value) is not bool:
        raise ModelError(f"tokenizer_config.json: {key} must be true or false")
    return value


def read_tokenizer_config(src: Path) -> TokenizerConfig:
    """tokenizer_config.json (with special_tokens_map.json filling gaps) and the chat
    template, checked to compile and to render a one-message chat."""
    cfg = read_json(src / "tokenizer_config.json", required=False)
    specials = read_json(src / "special_tokens_map.json", required=False)
    texts = {
        key: _token_text(cfg[key] if key in cfg else specials.get(key), key)
        for key in ("bos_token", "eos_token", "pad_token")
    }
    template = _chat_template(src, cfg)
    if template:
        compile_template(template)
        try:
            render_chat_template(
                template,
                [{"role": "user", "content": "Hello"}],
                bos_token=texts["bos_token"] or "",
                eos_token=texts["eos_token"] or "",
            )
        except ModelError as e:
            raise ModelError(
                f"the export's chat template cannot render a one-message chat: {e}"
            ) from None
    return TokenizerConfig(
        bos_token=texts["bos_token"],
        eos_token=texts["eos_token"],
        pad_token=texts["pad_token"],
        add_bos=_flag(cfg, "add_bos_token"),
        add_eos=_flag(cfg, "add_eos_token"),
        chat_template=template,
    )


def _chat_template(src: Path, cfg: dict) -> str:
    """The template transformers would use: chat_template.jinja, chat_template.json, or
    tokenizer_config.json's ``chat_template`` (a string, or named templates: "default")."""
    jinja = src / "chat_template.jinja"
    if jinja.is_file():
        if jinja.stat().st_size > 4 * MAX_CHAT_TEMPLATE:
            raise ModelError("chat_template.jinja is too large")
        value: Any = jinja.read_text(encoding="utf-8")
    else:
        value = read_json(src / "chat_template.json", required=False).get("chat_template")
        if value is None:
            value = cfg.get("chat_template")
    if isinstance(value, list):
        named = {t.get("name"): t.get("template") for t in value if isinstance(t, dict)}
        value = named.get("default")
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ModelError("tokenizer_config.json: chat_template must be a string")
    if len(value) > MAX_CHAT_TEMPLATE:
        raise ModelError(
            f"the chat template has {len(value)} characters; a manifest holds at most {MAX_CHAT_TEMPLATE}"
        )
    return value
