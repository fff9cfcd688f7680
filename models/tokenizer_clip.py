"""CLIP's BPE tokenizer from ``vocab.json`` + ``merges.txt``, through Hugging Face's
``tokenizers`` library, built the way transformers' ``CLIPTokenizerFast`` converts the slow
one: NFC, whitespace runs to one space, lowercase; CLIP's word split, then byte-level
symbols; BPE with ``</w>`` marking the end of each word. The special tokens (``bos``,
``eos``, ``pad``) come from the export's ``tokenizer_config.json`` / ``special_tokens_map.json``
(see :func:`clip_special_tokens`) and the manifest carries their ids, which are checked
against the vocabulary when the tokenizer loads.
"""

from __future__ import annotations

import json
from typing import Any

from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers
from tokenizers.models import BPE

from .errors import ModelError
from .manifest import TokenizerInfo
from .tokenizer import MAX_PROMPT_CHARS

__all__ = ["CLIP", "ClipTokenizer", "clip_special_tokens", "parse_merges", "parse_vocab"]

CLIP = "clip"
# CLIPTokenizer reads at most this many merges (49152 - 256 byte symbols - 2 specials).
MAX_MERGES = 49152 - 256 - 2
MAX_VOCAB = 1 << 20
_WORDS = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


def parse_vocab(data: bytes) -> dict[str, int]:
    """``vocab.json``: token -> id. Raises ModelError unless it is a JSON object of
    distinct non-negative integer ids."""
    try:
        vocab = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise ModelError(f"vocab.json is not valid JSON: {e}") from None
    if not isinstance(vocab, dict) or not 0 < len(vocab) <= MAX_VOCAB:
        raise ModelError(f"vocab.json must be an object of 1 to {MAX_VOCAB} tokens")
    ids = list(vocab.values())
    if any(type(i) is not int or i < 0 for i in ids) or len(set(ids)) != len(ids):
        raise ModelError("vocab.json ids must be distinct non-negative integers")
    return vocab


def parse_merges(data: bytes) -> list[tuple[str, str]]:
    """``merges.txt``: ``a b`` pairs after an optional ``#version`` line."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ModelError("merges.txt is not UTF-8") from None
    lines = text.strip().split("\n")
    if lines and lines[0].startswith("#version"):
        lines = lines[1:]
    merges = []
    for n, line in enumerate(lines[:MAX_MERGES], start=2):
        parts = line.split()
        if len(parts) != 2:
            raise ModelError(f"merges.txt line {n} is not two symbols: {line[:40]!r}")
        merges.append((parts[0], parts[1]))
    return merges


def _token_text(value: Any) -> str | None:
    """A special token as tokenizer configs write it: a string or ``{"content": ...}``."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def clip_special_tokens(*configs: Any) -> dict[str, str]:
    """``bos``/``eos``/``pad``/``unk`` token texts from ``tokenizer_config.json`` and
    ``special_tokens_map.json`` (later configs win), with CLIPTokenizer's defaults."""
    tokens = {
        "bos": "<|startoftext|>",
        "eos": "<|endoftext|>",
        "pad": "<|endoftext|>",
        "unk": "<|endoftext|>",
    }
    for config in configs:
        if not isinstance(config, dict):
            continue
        for what in tokens:
            text = _token_text(config.get(f"{what}_token"))
            if text is not None:
                tokens[what] = text
    return tokens


def clip_model_max_length(*configs: Any, default: int = 77) -> int:
    """``model_max_length`` from the tokenizer configs (77 for CLIP)."""
    for config in configs:
        value = config.get("model_max_length") if isinstance(config, dict) else None
        if type(value) is int and 2 <= value <= 4096:
            default = value
    return default


class ClipTokenizer:
    """Text -> CLIP token ids; the manifest's bos/eos/pad ids. Same interface as the
    sentencepiece :class:`~aipg.models.tokenizer.Tokenizer` where the diffusion runner uses it."""

    def __init__(
        self, vocab_bytes: bytes, merges_bytes: bytes, info: TokenizerInfo, unk: str | None = None
    ) -> None:
        vocab = parse_vocab(vocab_bytes)
        merges = parse_merges(merges_bytes)
        by_id = {i: t for t, i in vocab.items()}
        self.vocab_size = max(by_id) + 1
        for what in ("bos_id", "eos_id", "pad_id"):
            if getattr(info, what) not in by_id:
                raise ModelError(f"tokenizer {what} {getattr(info, what)} is not in vocab.json")
        unk = unk if unk in vocab else by_id[info.eos_id]
        try:
            model = BPE(
                vocab=vocab,
                merges=merges,
                continuing_subword_prefix="",
                end_of_word_suffix="</w>",
                fuse_unk=False,
                unk_token=unk,
            )
        except Exception as e:  # the Rust side raises its own exception types
            raise ModelError(f"vocab.json and merges.txt do not make a BPE model: {e}") from None
        tok = Tokenizer(model)
        tok.normalizer = normalizers.Sequence(
            [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
        )
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(_WORDS), behavior="removed", invert=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False),
            ]
        )
        tok.decoder = decoders.ByteLevel()
        specials = sorted({by_id[info.bos_id], by_id[info.eos_id], by_id[info.pad_id], unk})
        tok.add_special_tokens(specials)
        self._tok = tok
        self.bos_id, self.eos_id, self.pad_id = info.bos_id, info.eos_id, info.pad_id

    def encode(self, text: str, *, bos: bool = True) -> list[int]:
        """The ids of ``text`` (no eos; after bos when ``bos``)."""
        if not isinstance(text, str):
            raise ModelError(f"a prompt is text, got {type(text).__name__}")
        if len(text) > MAX_PROMPT_CHARS:
            raise ModelError(f"prompt of {len(text)} characters is over {MAX_PROMPT_CHARS}")
        ids = self._tok.encode(text, add_special_tokens=False).ids
        return [self.bos_id, *ids] if bos else ids

    def row(self, text: str, length: int) -> list[int]:
        """``[bos] + ids + [eos]`` truncated and padded to ``length``, as CLIPTokenizer with
        ``padding="max_length", truncation=True`` gives it."""
        ids = self.encode(text, bos=False)[: max(length - 2, 0)]
        row = [self.bos_id, *ids, self.eos_id][:length]
        return row + [self.pad_id] * (length - len(row))

    def decode(self, ids: list[int]) -> str:
        """The text of ``ids``, without special tokens; ``</w>`` becomes a space."""
        text = self._tok.decode([int(i) for i in ids], skip_special_tokens=True)
        return text.replace("</w>", " ").strip()
