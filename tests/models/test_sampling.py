"""The sampling rule: greedy, seeded draws that depend only on (seed, step), params limits."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aipg.models import SamplingParams, choose_token, sampling_uniform
from aipg.models.sampling import candidate_order
from aipg.wire import WireError, decode, encode

LOGITS = np.asarray([0.5, 2.0, 1.0, 2.0, -1.0, 0.0], np.float32)


def test_greedy_is_argmax_with_lowest_id_on_ties():
    assert choose_token(LOGITS, SamplingParams(), seed=1, step=0) == 1


@settings(deadline=None)  # the machine is shared: wall time is noise
@given(seed=st.integers(0, 2**64 - 1), step=st.integers(0, 2**32 - 1))
def test_draw_depends_only_on_seed_and_step(seed, step):
    u = sampling_uniform(seed, step)
    assert 0.0 <= u < 1.0
    assert u == sampling_uniform(seed, step)
    params = SamplingParams(temperature_milli=1000)
    assert choose_token(LOGITS, params, seed, step) == choose_token(
        LOGITS.copy(), params, seed, step
    )


def test_draws_differ_across_seeds_and_steps():
    draws = {sampling_uniform(s, t) for s in range(20) for t in range(20)}
    assert len(draws) == 400


def test_sampled_tokens_follow_the_softmax():
    params = SamplingParams(temperature_milli=1000)
    counts = np.bincount([choose_token(LOGITS, params, s, 0) for s in range(4000)], minlength=6)
    probs = np.exp(LOGITS - LOGITS.max()) / np.exp(LOGITS - LOGITS.max()).sum()
    np.testing.assert_allclose(counts / 4000, probs, atol=0.03)


def test_top_k_and_top_p_cut_the_candidates():
    top2 = SamplingParams(temperature_milli=1000, top_k=2)
    assert {choose_token(LOGITS, top2, s, 0) for s in range(200)} == {1, 3}
    top_p = SamplingParams(temperature_milli=1000, top_p_milli=1)
    assert {choose_token(LOGITS, top_p, s, 0) for s in range(50)} == {1}
    hot = SamplingParams(temperature_milli=100_000)
    assert {choose_token(LOGITS, hot, s, 0) for s in range(300)} == set(range(6))


def test_absurd_params_are_refused_up_front():
    with pytest.raises(WireError, match="max_tokens"):
        SamplingParams(max_tokens=10**9)
    with pytest.raises(WireError, match="temperature_milli"):
        SamplingParams(temperature_milli=-1)
    with pytest.raises(WireError, match="top_p_milli"):
        SamplingParams(top_p_milli=0)


def test_bad_logits_are_refused():
    with pytest.raises(ValueError):
        choose_token(np.zeros((2, 3), np.float32), SamplingParams(), 1, 0)
    nan = np.asarray([0.0, np.nan], np.float32)
    with pytest.raises(ValueError):
        choose_token(nan, SamplingParams(temperature_milli=500), 1, 0)


@settings(deadline=None)  # the machine is shared: wall time is noise
@given(
    st.builds(
        SamplingParams,
        temperature_milli=st.integers(0, 100_000),
        top_k=st.integers(0, 2**32 - 1),
        top_p_milli=st.integers(1, 1000),
        max_tokens=st.integers(1, 8192),
        stop=st.lists(st.text(max_size=64), max_size=8).map(tuple),
    )
)
def test_params_round_trip_the_codec(params):
    assert decode(encode(params), SamplingParams) == params


@settings(deadline=None)
@given(
    values=st.lists(st.sampled_from([-2.0, -0.0, 0.0, 0.5, 1.0, 3.0]), min_size=1, max_size=60),
    top_k=st.integers(0, 70),
)
def test_top_k_partition_orders_exactly_like_a_full_stable_sort(values, top_k):
    scaled = np.asarray(values, np.float64)
    reference = np.argsort(-scaled, kind="stable")
    if 0 < top_k < scaled.size:
        reference = reference[:top_k]
    assert candidate_order(scaled, top_k).tolist() == reference.tolist()


def reference_choice(logits: np.ndarray, params: SamplingParams, seed: int, step: int) -> int:
    """The documented rule, written the slow and obvious way (a full stable sort)."""
    if params.temperature_milli == 0:
        return int(np.argmax(logits))
    x = logits.astype(np.float64) * (1000.0 / params.temperature_milli)
    weights = np.exp(x - x.max())
    ranked = np.argsort(-x, kind="stable")
    if 0 < params.top_k < x.size:
        ranked = ranked[: params.top_k]
    total = float(weights[np.sort(ranked)].sum())
    running = np.cumsum(weights[ranked])
    keep = running.size
    mass = total
    if params.top_p_milli < 1000:
        need = total * (params.top_p_milli / 1000.0)
        keep = (
            min(int(np.argmax(running >= need)) if (running >= need).any() else keep, keep - 1) + 1
        )
        mass = running[keep - 1]
    target = sampling_uniform(seed, step) * mass
    above = np.flatnonzero(running[:keep] > target)
    return int(ranked[above[0] if above.size else keep - 1])


@settings(deadline=None, max_examples=300)
@given(
    logits=st.lists(
        st.sampled_from([-30.0, -2.0, -0.0, 0.0, 0.5, 1.0, 3.0, 8.0]) | st.floats(-20, 20),
        min_size=1,
        max_size=700,
    ),
    temperature_milli=st.integers(0, 5000),
    top_k=st.integers(0, 800),
    top_p_milli=st.integers(1, 1000),
    seed=st.integers(0, 2**64 - 1),
    step=st.integers(0, 1000),
)
def test_choose_token_follows_the_documented_rule(
    logits, temperature_milli, top_k, top_p_milli, seed, step
):
    array = np.asarray(logits, np.float32)
    params = SamplingParams(
        temperature_milli=temperature_milli, top_k=top_k, top_p_milli=top_p_milli
    )
    assert choose_token(array, params, seed, step) == reference_choice(array, params, seed, step)
