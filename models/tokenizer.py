"""Tokenizers, loaded from verified bytes: sentencepiece (``tokenizer.model``) and Hugging
Face's ``tokenizers`` (``tokenizer.json``), behind one :class:`Tokenizer`.

A prompt is encoded the way transformers' ``tokenizer(text)`` encodes it, as the manifest's
:class:`~aipg.models.manifest.TokenizerInfo` says: BOS first when ``add_bos``, EOS last when
``add_eos``, and special tokens written in the text as their ids when ``special_text``
(transformers splits added tokens out of the text before the model's own tokenization).
One difference: a text whose ids already start with BOS (a chat template wrote
``bos_token``) gets no second BOS, so a rendered chat encodes as ``apply_chat_template``
encodes it.
The ``tokenizers`` backend always encodes without its post-processor: the manifest's flags,
read from the export's configs at import, say what is added.
"""

from __future__ import annotations

import re

import sentencepiece as spm

from .errors import ModelError
from .manifest import SENTENCEPIECE, TOKENIZERS, TokenizerInfo

__all__ = ["MAX_PROMPT_CHARS", "Tokenizer"]

# Longer text cannot fit any context we host; refusing it up front keeps a hostile prompt
# from costing tokenization time.
MAX_PROMPT_CHARS = 1 << 20


class Tokenizer:
    """Text <-> token ids with the manifest's special ids and encoding rules."""

    def __init__(
        self, model_bytes: bytes, info: TokenizerInfo, model_vocab: int | None = None
    ) -> None:
        """Raises ModelError when the bytes are not a tokenizer of ``info.kind`` or the
        special ids of ``info`` are outside its vocabulary. ``model_vocab`` is the model's
        vocabulary when it is larger (exports pad it): those ids decode to no text."""
        if info.kind == SENTENCEPIECE:
            self._backend: _Backend = _SentencePiece(model_bytes, info.special_text)
        elif info.kind == TOKENIZERS:
            self._backend = _HfTokenizers(model_bytes, info.special_text)
        else:
            raise ModelError(f"tokenizer kind {info.kind!r} is not supported")
        self.kind = info.kind
        self.vocab_size = self._backend.vocab_size
        self.id_limit = max(self.vocab_size, model_vocab or 0)
        special = {"bos_id": info.bos_id, "eos_id": info.eos_id, "pad_id": info.pad_id}
        special |= {f"extra_eos_ids[{i}]": e for i, e in enumerate(info.extra_eos_ids)}
        for what, value in special.items():
            if value is not None and value >= self.vocab_size:
                raise ModelError(f"tokenizer {what} {value} is outside its vocabulary")
        if info.add_bos and info.bos_id is None:
            raise ModelError("tokenizer: add_bos needs a bos_id")
        self.bos_id = info.bos_id
        self.eos_id = info.eos_id
        self.pad_id = info.pad_id
        self.extra_eos_ids = tuple(info.extra_eos_ids)
        self.info = info

    @property
    def eos_ids(self) -> tuple[int, ...]:
        """Every id that ends a generation: ``eos_id`` first, then the extra ones."""
        return (self.eos_id, *(e for e in self.extra_eos_ids if e != self.eos_id))

    def is_eos(self, token: int) -> bool:
        """Whether ``token`` ends a generation."""
        return token == self.eos_id or token in self.extra_eos_ids

    def encode(self, text: str, *, bos: bool = True) -> list[int]:
        """The ids of ``text`` as a prompt: with the BOS/EOS the manifest says when ``bos``
        (the default), with none when not."""
        if not isinstance(text, str):
            raise ModelError(f"a prompt is text, got {type(text).__name__}")
        if len(text) > MAX_PROMPT_CHARS:
            raise ModelError(f"prompt of {len(text)} characters is over {MAX_PROMPT_CHARS}")
        ids = self._backend.encode(text)
        # A text that starts with the BOS token (a chat template wrote it) gets no second.
        if bos and self.info.add_bos and self.bos_id is not None and ids[:1] != [self.bos_id]:
            ids = [self.bos_id, *ids]
        if bos and self.info.add_eos:
            ids = [*ids, self.eos_id]
        return ids

    def decode(self, ids: list[int]) -> str:
        """The text of ``ids`` (special ids produce no text). Raises ModelError for an id
        outside the vocabulary."""
        ids = [int(i) for i in ids]
        bad = next((i for i in ids if not 0 <= i < self.id_limit), None)
        if bad is not None:
            raise ModelError(f"token id {bad} is outside the vocabulary [0, {self.id_limit})")
        return self._backend.decode([i for i in ids if i < self.vocab_size])

    def token_to_id(self, token: str) -> int | None:
        """The id of one token's text (a special token's, say), or None."""
        return self._backend.token_to_id(token)


class _Backend:
    vocab_size: int

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def decode(self, ids: list[int]) -> str:
        raise NotImplementedError

    def token_to_id(self, token: str) -> int | None:
        raise NotImplementedError


class _SentencePiece(_Backend):
    """sentencepiece; special tokens in text are its control and unknown pieces (``<s>``,
    ``</s>``, ``<unk>``), split out first and each piece of text between encoded on its own
    (transformers' slow tokenizers, ``legacy`` mode)."""

    def __init__(self, model_bytes: bytes, special_text: bool) -> None:
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.LoadFromSerializedProto(model_bytes)
        except (RuntimeError, OSError, TypeError) as e:
            raise ModelError(f"tokenizer is not a sentencepiece model: {e}") from None
        self.vocab_size = self._sp.vocab_size()
        self._special = {
            self._sp.id_to_piece(i): i
            for i in range(self.vocab_size)
            if self._sp.is_control(i) or self._sp.is_unknown(i)
        }
        longest_first = sorted(self._special, key=lambda t: (-len(t), t))
        self._split = re.compile("(" + "|".join(map(re.escape, longest_first)) + ")")
        self._special_text = special_text and bool(self._special)

    def encode(self, text: str) -> list[int]:
        if not self._special_text:
            return self._sp.encode(text)
        ids: list[int] = []
        for i, part in enumerate(self._split.split(text)):
            if i % 2:
                ids.append(self._special[part])
            elif part:
                ids.extend(self._sp.encode(part))
        return ids

    def decode(self, ids: list[int]) -> str:
        return self._sp.decode(ids)

    def token_to_id(self, token: str) -> int | None:
        i = self._sp.piece_to_id(token)
        return i if self._sp.id_to_piece(i) == token else None


class _HfTokenizers(_Backend):
    """Hugging Face ``tokenizers`` from ``tokenizer.json``. Added tokens written in text
    are matched by the library (as transformers' fast tokenizers do) unless
    ``special_text`` is off, when special ones are encoded as plain text."""

    def __init__(self, model_bytes: bytes, special_text: bool) -> None:
        from tokenizers import Tokenizer as HfTokenizer

        try:
            self._tok = HfTokenizer.from_str(model_bytes.decode("utf-8"))
        except Exception as e:  # the library raises plain Exception for a bad file
            raise ModelError(f"tokenizer is not a tokenizers tokenizer.json: {e}") from None
        self._tok.no_padding()
        self._tok.no_truncation()
        self._tok.encode_special_tokens = not special_text
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=True)

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)
