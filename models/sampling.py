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
    "candidate_order",
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

    The rule, in float64: ``x = logits / temperature``; weights ``w = exp(x - max(x))``;
    candidates ranked by (x descending, id ascending), the first ``top_k`` of them when
    ``top_k > 0``; ``total`` = the sum of the candidates' weights in id order; with top p,
    keep the shortest ranked prefix whose running sum (in rank order) reaches
    ``top_p * total``; then the first kept candidate whose running sum exceeds
    ``u_t * (kept mass)`` is the token (``u_t`` from :func:`sampling_uniform`). Only as much
    of the ranking as the draw needs is computed (partitions, not a sort of the vocabulary).

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
    ranking = _Ranking(scaled, params.top_k)
    if params.top_p_milli < 1000:
        need = ranking.total * (params.top_p_milli / 1000.0)
        order, cumulative = ranking.prefix_beyond(need)
        keep = min(int(np.searchsorted(cumulative, need, side="left")) + 1, cumulative.size)
        target = sampling_uniform(seed, step) * cumulative[keep - 1]
    else:
        target = sampling_uniform(seed, step) * ranking.total
        order, cumulative = ranking.prefix_beyond(target)
        keep = cumulative.size
    index = min(int(np.searchsorted(cumulative[:keep], target, side="right")), keep - 1)
    return int(order[index])


class _Ranking:
    """Candidates of one draw, ranked lazily. With top k, one partition ranks all k (and
    only their weights are computed); otherwise a prefix of the ranking is computed by
    partitioning, growing 8x until its running weight passes what the draw needs."""

    FIRST_PREFIX = 64

    def __init__(self, scaled: np.ndarray, top_k: int) -> None:
        self.scaled = scaled
        self.top_k: np.ndarray | None = None
        if 0 < top_k < scaled.size:
            self.top_k = candidate_order(scaled, top_k)
            by_id = np.sort(self.top_k)
            self.weights = np.zeros_like(scaled)
            self.weights[by_id] = np.exp(scaled[by_id] - scaled[self.top_k[0]])
            self.total = float(self.weights[by_id].sum())
        else:
            self.weights = np.exp(scaled - scaled.max())
            self.total = float(self.weights.sum())

    def prefix_beyond(self, mass: float) -> tuple[np.ndarray, np.ndarray]:
        """(ids, running weights) of the shortest computed prefix whose running weight
        exceeds ``mass``, or of every candidate."""
        if self.top_k is not None:
            return self.top_k, np.cumsum(self.weights[self.top_k])
        size, vocab = self.FIRST_PREFIX, self.scaled.size
        while True:
            order = candidate_order(self.scaled, size if size < vocab else 0)
            cumulative = np.cumsum(self.weights[order])
            if cumulative[-1] > mass or size >= vocab:
                return order, cumulative
            size *= 8


def candidate_order(scaled: np.ndarray, top_k: int) -> np.ndarray:
    """Token ids ordered by (value descending, id ascending); only the first ``top_k`` when
    ``0 < top_k < vocab``. The top-k case partitions instead of sorting the vocabulary, with
    ties at the k-th value going to the lowest ids, exactly as a full stable sort would."""
    n = scaled.size
    if not 0 < top_k < n:
        return np.argsort(-scaled, kind="stable")
    kth = np.partition(scaled, n - top_k)[n - top_k]
    above = np.flatnonzero(scaled > kth)
    ties = np.flatnonzero(scaled == kth)[: top_k - above.size]
    candidates = np.concatenate([above, ties])
    return candidates[np.lexsort((candidates, -scaled[candidates]))]
