"""Execution commitments: what a worker commits to beyond its outputs.

LLM: top-k logits per generated position, 8 bytes per token
---------------------------------------------------------------
For the logits row that produced each generated token, take the ``k = 4`` largest
logits (indices ``x_j`` and values ``v_j``), quantize each value to a fixed-point
integer ``q_j = round(v_j * 2**SCALE_BITS) mod P`` (P = 65521, the largest 16-bit
prime), and store the unique polynomial of degree ``k - 1`` over GF(P) through the
points ``(x_j, q_j)``: its ``k`` coefficients are 2 bytes each, so a position costs
``2k = 8`` bytes and the indices ride along for free. This is TOPLOC's trick
(Ong et al., 2025, "TOPLOC: a locality sensitive hashing scheme for trustless
verifiable inference"), applied to logits rather than hidden activations.

The verifier computes its own logits (one prefill pass), takes its own top-k
indices, evaluates the polynomial there and gets back the worker's quantized values;
they must match its own within ``VALUE_TOLERANCE``. If the worker's top-k indices
were different, the polynomial evaluates to values unrelated to the verifier's
logits, which match by chance with probability about ``2 * tol / P`` per value.
Near-ties at the k-th place are allowed: indices within ``TIE_TOLERANCE`` of the
k-th logit are all tried, and exactly the certain members (clearly above the
(k+1)-th) must match.

The data travels in the Result; the receipt carries
``commitment = H("commitment/llm/1", data)``. Vocabularies up to P tokens are
supported (x must be distinct mod P).

Diffusion: a hash chain over the per-step latents
-------------------------------------------------
``d_i = H("latent/1", shape, float32 bytes of latent i)`` for i = 0 (the initial
latent) .. n (after the last step), ``h_0 = H("chain/diffusion/1", d_0)``,
``h_i = H("chain/diffusion/1", h_{i-1}, d_i)``, commitment = ``h_n``. The Result
carries the digests; the worker keeps the latents until the receipt is final and
serves any of them, and the verifier checks each served latent against its digest.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from .errors import PouwError
from .records import hash_tagged

__all__ = [
    "LLM_BYTES_PER_TOKEN",
    "PRIME",
    "SCALE_BITS",
    "TIE_TOLERANCE",
    "TOPK",
    "VALUE_TOLERANCE",
    "TopkCheck",
    "chain_head",
    "check_topk_commitment",
    "commit_topk",
    "latent_digest",
    "llm_commitment_hash",
]

TOPK = 4  # logits committed per position: 4 x 2 bytes = 8 bytes per generated token
PRIME = 65521  # largest prime below 2**16: coefficients fit in 2 bytes
SCALE_BITS = 16  # fixed-point step 2**-16 = 1.5e-5 logit units; values alias every 1.0
# Honest runs of the demo LLM (threads 1/2, ORT optimization levels 0/1/2/99, KV cache
# vs prefill) differ by at most 2.9e-6 in a logit; fp16 weights move the top-4 logits of
# a 16-token job by at least 8.8e-4 (median 1.1e-3). The tolerance sits between: 40x
# the honest maximum, 7x below the smallest fp16 deviation. bench/verify.py prints the
# margins it measures.
VALUE_TOLERANCE = 2.0**-13  # 1.2e-4 logit units = 8 quanta
# Logits this close to the k-th largest (or to the maximum, for a greedy token) may
# swap places between honest runs.
TIE_TOLERANCE = 2.0**-13
# How many ranks below k the verifier looks for near-ties.
_EXTRA = 4
LLM_BYTES_PER_TOKEN = 2 * TOPK

_SCALE = float(2**SCALE_BITS)


# ------------------------------------------------------------------ GF(P) helpers


def _inv(a: np.ndarray) -> np.ndarray:
    """Elementwise inverse mod PRIME (Fermat), for int64 arrays of nonzero values."""
    result = np.ones_like(a)
    base = a % PRIME
    e = PRIME - 2
    while e:
        if e & 1:
            result = result * base % PRIME
        base = base * base % PRIME
        e >>= 1
    return result


def _interpolate(xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Monomial coefficients (low degree first) of the polynomial through (xs, ys),
    row by row; xs, ys are (n, k) int64 arrays of residues mod PRIME, xs distinct per row."""
    n, k = xs.shape
    c = ys.copy()
    # Newton divided differences.
    for j in range(1, k):
        for i in range(k - 1, j - 1, -1):
            c[:, i] = (c[:, i] - c[:, i - 1]) % PRIME * _inv(xs[:, i] - xs[:, i - j]) % PRIME
    # Newton form -> monomial form: p = c_{k-1}; p = p * (x - x_i) + c_i.
    poly = np.zeros((n, k), dtype=np.int64)
    poly[:, 0] = c[:, k - 1]
    for i in range(k - 2, -1, -1):
        shifted = np.zeros_like(poly)
        shifted[:, 1:] = poly[:, :-1]
        poly = (shifted - poly * xs[:, i : i + 1]) % PRIME
        poly[:, 0] = (poly[:, 0] + c[:, i]) % PRIME
    return poly


def _evaluate(poly: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Evaluate each row's polynomial at that row's points: poly (n, k), xs (n, m)."""
    acc = np.zeros(xs.shape, dtype=np.int64)
    for i in range(poly.shape[1] - 1, -1, -1):
        acc = (acc * xs + poly[:, i : i + 1]) % PRIME
    return acc


def _quantize(values: np.ndarray) -> np.ndarray:
    return np.mod(np.rint(values.astype(np.float64) * _SCALE).astype(np.int64), PRIME)


def _finite_rows(logits: np.ndarray, who: str) -> np.ndarray:
    arr = np.asarray(logits)
    if arr.ndim != 2 or arr.shape[1] < TOPK + 1:
        raise PouwError(f"{who}.logits", f"expected (positions, vocab > {TOPK}), got {arr.shape}")
    if arr.shape[1] > PRIME:
        raise PouwError(f"{who}.logits", f"vocabulary of {arr.shape[1]} is over {PRIME}")
    if not np.isfinite(arr).all():
        raise PouwError(f"{who}.logits", "logits are not all finite")
    return arr


# ----------------------------------------------------------------- worker side


def commit_topk(logits: np.ndarray) -> bytes:
    """The commitment data for generated positions: ``logits`` is (n, vocab), row t
    the logits that produced generated token t. Returns 8 * n bytes."""
    arr = _finite_rows(logits, "commitment")
    idx = np.argpartition(arr, -TOPK, axis=1)[:, -TOPK:].astype(np.int64)
    vals = np.take_along_axis(arr, idx, axis=1)
    poly = _interpolate(idx, _quantize(vals))
    return poly.astype("<u2").tobytes()


def llm_commitment_hash(data: bytes) -> bytes:
    """What the receipt carries for LLM commitment ``data``."""
    return hash_tagged(b"commitment/llm/1", data)


# --------------------------------------------------------------- verifier side


@dataclasses.dataclass(frozen=True)
class TopkCheck:
    """The outcome of checking a top-k commitment against the verifier's logits.

    ``ok`` is False at the first position (``bad_position``) whose committed values do
    not match; ``max_error`` is the largest matched deviation in logit units, and
    ``recomputed`` the verifier's own quantized top-k (its check data for a verdict).
    """

    ok: bool
    bad_position: int
    max_error: float
    recomputed: bytes


def check_topk_commitment(data: bytes, logits: np.ndarray) -> TopkCheck:
    """Check commitment ``data`` against the verifier's logits (n, vocab) for the same
    generated positions. Raises PouwError when ``data`` has the wrong size."""
    arr = _finite_rows(logits, "verifier")
    n, vocab = arr.shape
    if len(data) != n * LLM_BYTES_PER_TOKEN:
        raise PouwError(
            "result.commitment_data",
            f"{len(data)} bytes for {n} tokens (want {n * LLM_BYTES_PER_TOKEN})",
        )
    poly = np.frombuffer(data, dtype="<u2").astype(np.int64).reshape(n, TOPK)
    if (poly >= PRIME).any():
        return TopkCheck(False, int(np.argmax((poly >= PRIME).any(axis=1))), 0.0, b"")
    m = min(vocab, TOPK + _EXTRA)
    idx = np.argpartition(arr, -m, axis=1)[:, -m:]
    vals = np.take_along_axis(arr, idx, axis=1).astype(np.float64)
    order = np.argsort(-vals, axis=1, kind="stable")
    idx = np.take_along_axis(idx, order, axis=1).astype(np.int64)
    vals = np.take_along_axis(vals, order, axis=1)

    got = _evaluate(poly, idx)
    # Centered modular difference between the worker's value and the verifier's, in quanta.
    diff = np.mod(got - vals * _SCALE + PRIME / 2, PRIME) - PRIME / 2
    err = np.abs(diff) / _SCALE
    matched = err <= VALUE_TOLERANCE

    kth = vals[:, TOPK - 1 : TOPK]
    next_ = vals[:, TOPK : TOPK + 1] if m > TOPK else np.full((n, 1), -np.inf)
    rank = np.arange(m)[None, :]
    certain = (rank < TOPK) & (vals > next_ + TIE_TOLERANCE)
    candidate = vals >= kth - TIE_TOLERANCE
    pos_ok = ((matched | ~certain).all(axis=1)) & ((matched & candidate).sum(axis=1) >= TOPK)

    recomputed = (
        _quantize(vals[:, :TOPK]).astype("<u2").tobytes() + idx[:, :TOPK].astype("<u4").tobytes()
    )
    max_error = float(np.max(np.where(matched & candidate, err, 0.0), initial=0.0))
    if pos_ok.all():
        return TopkCheck(True, -1, max_error, recomputed)
    return TopkCheck(False, int(np.argmin(pos_ok)), max_error, recomputed)


# -------------------------------------------------------------------- diffusion


def latent_digest(latent: np.ndarray) -> bytes:
    """The digest of one latent: its shape and little-endian float32 bytes."""
    arr = np.ascontiguousarray(latent, dtype="<f4")
    shape = np.asarray(arr.shape, dtype="<u4").tobytes()
    return hash_tagged(b"latent/1", shape, arr.tobytes())


def chain_head(digests: Sequence[bytes]) -> bytes:
    """The head of the hash chain over latent digests (index 0 = initial latent)."""
    if not digests:
        raise PouwError("result.latent_digests", "no latents")
    h = hash_tagged(b"chain/diffusion/1", digests[0])
    for d in digests[1:]:
        h = hash_tagged(b"chain/diffusion/1", h, d)
    return h
