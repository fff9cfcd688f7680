"""The LLM top-k commitment and the diffusion hash chain, over plain numpy arrays."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aipg.pouw import PouwError
from aipg.pouw.commitment import (
    LLM_BYTES_PER_TOKEN,
    PRIME,
    TIE_TOLERANCE,
    TOPK,
    VALUE_TOLERANCE,
    _evaluate,
    _interpolate,
    chain_head,
    check_topk_commitment,
    commit_topk,
    latent_digest,
)


def logits(seed: int, n: int = 16, vocab: int = 500, scale: float = 4.0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((n, vocab)) * scale).astype(np.float32)


@settings(max_examples=100, deadline=None)
@given(
    xs=st.lists(st.integers(0, PRIME - 1), min_size=TOPK, max_size=TOPK, unique=True),
    ys=st.lists(st.integers(0, PRIME - 1), min_size=TOPK, max_size=TOPK),
)
def test_interpolation_passes_through_its_points(xs, ys):
    x = np.array([xs], dtype=np.int64)
    poly = _interpolate(x, np.array([ys], dtype=np.int64))
    assert (_evaluate(poly, x) == np.array([ys])).all()


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 40), vocab=st.integers(TOPK + 1, 3000))
def test_honest_commitment_checks_and_costs_8_bytes_per_token(seed, n, vocab):
    lg = logits(seed, n, vocab)
    data = commit_topk(lg)
    assert len(data) == n * LLM_BYTES_PER_TOKEN == 8 * n
    # A verifier whose logits differ by float noise (other threads, KV cache) accepts.
    noise = np.random.default_rng(seed + 1).uniform(-1e-5, 1e-5, lg.shape).astype(np.float32)
    check = check_topk_commitment(data, lg + noise)
    assert check.ok and check.max_error < 2e-4


def test_deviation_beyond_tolerance_is_caught_at_its_position():
    lg = logits(1)
    data = commit_topk(lg)
    other = lg.copy()
    top = int(np.argmax(other[5]))
    other[5, top] += 4 * VALUE_TOLERANCE
    check = check_topk_commitment(data, other)
    assert not check.ok and check.bad_position == 5


def test_near_tie_at_kth_place_is_allowed_but_a_clear_member_is_not():
    lg = logits(2, n=4)
    row = np.argsort(-lg[0])
    k_th, next_ = row[TOPK - 1], row[TOPK]
    lg[0, next_] = lg[0, k_th] - TIE_TOLERANCE / 4  # near-tie between rank k and k+1
    data = commit_topk(lg)
    swapped = lg.copy()
    swapped[0, next_], swapped[0, k_th] = lg[0, k_th], lg[0, next_]
    assert check_topk_commitment(data, swapped).ok
    # Swapping the clear leader with a token far below it is not a tie.
    moved = lg.copy()
    row1 = np.argsort(-lg[1])
    leader, low = row1[0], row1[100]
    moved[1, leader], moved[1, low] = lg[1, low], lg[1, leader]
    assert not check_topk_commitment(data, moved).ok


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_fabricated_or_foreign_commitments_fail(seed):
    lg = logits(seed, n=8)
    rng = np.random.default_rng(seed)
    fabricated = rng.integers(0, PRIME, 8 * TOPK).astype("<u2").tobytes()
    assert not check_topk_commitment(fabricated, lg).ok
    other_model = logits(seed + 10**6, n=8)
    assert not check_topk_commitment(commit_topk(other_model), lg).ok
    # A slightly different model (weights off by ~1e-3 relative) fails too.
    perturbed = lg * (1 + rng.standard_normal(lg.shape).astype(np.float32) * 1e-3)
    assert not check_topk_commitment(commit_topk(perturbed), lg).ok


def test_wrong_sizes_and_non_finite_logits_are_errors():
    lg = logits(3, n=4)
    with pytest.raises(PouwError, match="commitment_data"):
        check_topk_commitment(commit_topk(lg)[:-1], lg)
    bad = lg.copy()
    bad[0, 0] = np.nan
    with pytest.raises(PouwError, match="finite"):
        commit_topk(bad)
    with pytest.raises(PouwError, match="vocab"):
        commit_topk(np.zeros((2, TOPK), np.float32))


def test_chain_binds_every_latent_and_its_order():
    rng = np.random.default_rng(0)
    lat = [rng.standard_normal((4, 8, 8)).astype(np.float32) for _ in range(6)]
    digests = [latent_digest(x) for x in lat]
    head = chain_head(digests)
    assert head != chain_head(digests[::-1])
    assert head != chain_head(digests[:-1])
    tweaked = lat[3].copy()
    tweaked[0, 0, 0] = np.nextafter(tweaked[0, 0, 0], np.float32(1))
    assert latent_digest(tweaked) != digests[3]
    assert latent_digest(lat[3].reshape(4, 64)) != digests[3]  # shape is bound
    with pytest.raises(PouwError):
        chain_head([])
