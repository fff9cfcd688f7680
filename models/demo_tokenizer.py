"""The demo models' tokenizer: sentencepiece BPE trained on the shipped corpus, deterministically."""

from __future__ import annotations

import io
from importlib import resources

import sentencepiece as spm

from .manifest import TokenizerInfo

TOKENIZER_FILE = "tokenizer.model"
VOCAB_SIZE = 768
BOS_ID, EOS_ID, PAD_ID = 1, 2, 3


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


def demo_tokenizer_info() -> TokenizerInfo:
    return TokenizerInfo(
        kind="sentencepiece", role="tokenizer", bos_id=BOS_ID, eos_id=EOS_ID, pad_id=PAD_ID
    )
