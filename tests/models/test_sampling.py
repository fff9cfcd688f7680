"""The sampling rule: greedy, seeded draws that depend only on (seed, step), params limits."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aipg.models import SamplingParams, choose_token, sampling_uniform
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
