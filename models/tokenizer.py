"""The sentencepiece tokenizer, loaded from verified bytes."""

from __future__ import annotations

import sentencepiece as spm

from .errors import ModelError
from .manifest import TokenizerInfo

__all__ = ["MAX_PROMPT_CHARS", "Tokenizer"]

# Longer text cannot fit any context we host; refusing it up front keeps a hostile prompt
# from costing tokenization time.
MAX_PROMPT_CHARS = 1 << 20


class Tokenizer:
    """Text <-> token ids with a sentencepiece model and the manifest's special ids."""

    def __init__(self, model_bytes: bytes, info: TokenizerInfo) -> None:
        """Raises ModelError when the bytes are not a sentencepiece model or the special ids
        of ``info`` are outside its vocabulary."""
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.LoadFromSerializedProto(model_bytes)
        except (RuntimeError, OSError, TypeError) as e:
            raise ModelError(f"tokenizer is not a sentencepiece model: {e}") from None
        self.vocab_size = self._sp.vocab_size()
        for what in ("bos_id", "eos_id", "pad_id"):
            if getattr(info, what) >= self.vocab_size:
                raise ModelError(f"tokenizer {what} is outside its vocabulary")
        self.bos_id = info.bos_id
        self.eos_id = info.eos_id
        self.pad_id = info.pad_id

    def encode(self, text: str, *, bos: bool = True) -> list[int]:
        """The ids of ``text``, after a beginning-of-sequence id when ``bos``."""
        if not isinstance(text, str):
            raise ModelError(f"a prompt is text, got {type(text).__name__}")
        if len(text) > MAX_PROMPT_CHARS:
            raise ModelError(f"prompt of {len(text)} characters is over {MAX_PROMPT_CHARS}")
        ids = self._sp.encode(text)
        return [self.bos_id, *ids] if bos else ids

    def decode(self, ids: list[int]) -> str:
        """The text of ``ids`` (special ids produce no text)."""
        return self._sp.decode([int(i) for i in ids])
