"""The one sampling rule: which token a job takes at step t, given the logits.

Greedy when the temperature is 0; otherwise the candidates are the tokens ordered by
(logit descending, token id ascending), cut to the top k and then to the smallest prefix
whose probability reaches top p, and one uniform draw ``u_t`` picks among them by inverse
CDF. ``u_t`` depends only on (job seed, t): a counter-based hash, never a stateful RNG, so
a validator can check token t from the logits of one prefill pass without replaying steps
0..t-1. All parameters are fixed-point integers (thousandths), so they can travel in
records; the arithmetic on logits is float64.
"""

from __future__ import annotations

import hashlib
import struct
from typing import Annotated

import numpy as np

from aipg.wire import U32, MaxLen, Range, Record, record

__all__ = [
    "MAX_STOP_STRINGS",
    "MAX_TOKENS",
    "SamplingParams",
    "choose_token",
    "sampling_uniform",
]

# A generation longer than this is not one job; context lengths of the models we host
# are at most this long too.
MAX_TOKENS = 8192
MAX_STOP_STRINGS = 8
MAX_TEMPERATURE_MILLI = 100_000
_DRAW_DOMAIN = b"aipg/sample/1\0"


@record(tag=201)
class SamplingParams(Record):
    """How an LLM job picks tokens. Fixed-point: ``temperature_milli=700`` is 0.7.

    ``temperature_milli`` 0 is greedy; ``top_k`` 0 keeps every token; ``top_p_milli`` 1000
    keeps every token; generation stops after ``max_tokens`` tokens, at the model's
    end-of-sequence token, or when the text ends with one of ``stop`` (which is cut off).
    """

    temperature_milli: Annotated[int, Range(0, MAX_TEMPERATURE_MILLI)] = 0
    top_k: U32 = 0
    top_p_milli: Annotated[int, Range(1, 1000)] = 1000
    max_tokens: Annotated[int, Range(1, MAX_TOKENS)] = 128
    stop: Annotated[tuple[Annotated[str, MaxLen(64)], ...], MaxLen(MAX_STOP_STRINGS)] = ()


def sampling_uniform(seed: int, step: int) -> float:
    """The uniform draw in [0, 1) of job ``seed`` (u64) at generation step ``step`` (u32)."""
    digest = hashlib.sha256(_DRAW_DOMAIN + struct.pack(">QI", seed, step)).digest()
    return (int.from_bytes(digest[:8], "big") >> 11) / float(1 << 53)


def choose_token(logits: np.ndarray, params: SamplingParams, seed: int, step: int) -> int:
    """The token chosen from ``logits`` (float32, shape (vocab,)) at ``step`` of job ``seed``.

    Greedy ties go to the lowest token id. Raises ValueError for logits that are not a
    finite 1-D array.
    """
    if logits.ndim != 1 or logits.size == 0:
        raise ValueError(f"logits must be a non-empty 1-D array, got shape {logits.shape}")
    if params.temperature_milli == 0:
        return int(logits.argmax())
    if not np.all(np.isfinite(logits)):
        raise ValueError("logits contain NaN or infinity")
    scaled = logits.astype(np.float64) * (1000.0 / params.temperature_milli)
    order = np.argsort(-scaled, kind="stable")
    if 0 < params.top_k < order.size:
        order = order[: params.top_k]
    top = scaled[order]
    weights = np.exp(top - top[0])
    cumulative = np.cumsum(weights)
    keep = cumulative.size
    if params.top_p_milli < 1000:
        threshold = cumulative[-1] * (params.top_p_milli / 1000.0)
        keep = min(int(np.searchsorted(cumulative, threshold, side="left")) + 1, keep)
    target = sampling_uniform(seed, step) * cumulative[keep - 1]
    index = min(int(np.searchsorted(cumulative[:keep], target, side="right")), keep - 1)
    return int(order[index])
