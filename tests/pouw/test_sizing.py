"""Committee sizing: the exact capture probability, the weight cap, and the genesis."""

from __future__ import annotations

import hashlib
import itertools
import math
from fractions import Fraction

from hypothesis import given, settings
from hypothesis import strategies as st

from aipg.pouw import draw_committee
from aipg.pouw.sizing import (
    binomial_tail,
    capped_weights,
    capture_probability,
    hypergeometric_tail,
    min_committee_size,
    quorum_seats,
    seated_capture_probability,
)
from aipg.stake.genesis import MAINNET_PARAMS, devnet_params


def test_binomial_tail_is_exact():
    assert binomial_tail(3, Fraction(1, 2), 2) == Fraction(4, 8)
    assert binomial_tail(5, Fraction(1, 3), 4) == Fraction(5 * 2 + 1, 3**5)
    assert binomial_tail(4, Fraction(1, 3), 0) == 1 and binomial_tail(4, Fraction(1, 3), 5) == 0


def test_quorum_seats_follow_the_genesis_quorum():
    assert quorum_seats(5, 2, 3) == 4 and quorum_seats(6, 2, 3) == 4
    assert quorum_seats(68, 2, 3) == 46 and quorum_seats(10, 3, 4) == 8


def test_mainnet_committees_hold_the_1e6_bound():
    p = MAINNET_PARAMS
    rules = p.committee_rules()
    assert rules.quorum == (2, 3) and rules.cap_bps == 50
    bound = capture_probability(rules.size, *rules.quorum, rules.cap_bps)
    assert bound < Fraction(1, 10**6)
    least = min_committee_size(*rules.quorum, rules.cap_bps)
    assert least is not None and least <= rules.size
    assert capture_probability(least - 1, *rules.quorum, rules.cap_bps) >= Fraction(1, 10**6)
    # "tens of members": with an unbounded number of equal validators (no depletion) 50
    assert min_committee_size(2, 3, 0) == 50
    # A looser quorum needs a larger committee, a stricter one a smaller.
    assert min_committee_size(3, 4, 50) < least
    assert min_committee_size(3, 5, 0) > min_committee_size(2, 3, 0)
    # ... and one loose enough with a loose cap has none: depletion eats the margin.
    assert min_committee_size(3, 5, 50) is None


def test_a_devnet_committee_is_small_and_says_so():
    p = devnet_params(1000, 4)
    assert p.committee_size == 3
    assert capture_probability(3, 2, 3, p.committee_weight_cap_bps) > Fraction(1, 10)


@settings(max_examples=60, deadline=None)
@given(
    population=st.integers(200, 600),
    n=st.integers(3, 64),
    quorum=st.sampled_from([(2, 3), (3, 4)]),
)
def test_the_bound_covers_the_exact_hypergeometric_draw(population, n, quorum):
    """Equal stakes, a third of the validators adversarial, cap = one validator's share:
    the exact hypergeometric tail is below the bound the chain sizes with."""
    bad = population // 3
    cap_bps = -(-10_000 // population)  # each holds 1/population <= cap
    k = quorum_seats(n, *quorum)
    exact = hypergeometric_tail(population, bad, n, k)
    assert exact <= capture_probability(n, *quorum, cap_bps, Fraction(bad, population))


def test_the_sampler_captures_no_more_often_than_the_bound():
    """The real draw, 4,000 seeds: 10 adversarial of 30 equal validators hold 4 of 5
    seats about as often as the exact hypergeometric tail says, and below the bound."""
    stakes = {bytes([i]) * 32: 10**12 for i in range(30)}
    bad = {bytes([i]) * 32 for i in range(10)}
    hits = 0
    trials = 4000
    for t in range(trials):
        c = draw_committee(stakes, hashlib.sha256(b"%d" % t).digest(), 5, cap_bps=400)
        hits += sum(k in bad for k in c.members) >= 4
    exact = float(hypergeometric_tail(30, 10, 5, 4))
    sd = math.sqrt(exact * (1 - exact) / trials)
    assert abs(hits / trials - exact) < 4 * sd
    assert exact <= float(capture_probability(5, 2, 3, 400, Fraction(1, 3)))


@settings(max_examples=200, deadline=None)
@given(
    stakes=st.lists(st.integers(1, 10**15), min_size=1, max_size=60),
    cap_bps=st.integers(1, 10_000),
)
def test_no_validator_holds_more_than_the_cap_of_the_draw_weight(stakes, cap_bps):
    validators = {i.to_bytes(32, "big"): s for i, s in enumerate(stakes)}
    w = capped_weights(validators, cap_bps)
    assert set(w) == set(validators) and all(0 < w[k] <= validators[k] for k in w)
    total = sum(w.values())
    if len(w) * cap_bps >= 10_000:  # enough validators for the cap to be reachable
        assert max(w.values()) * 10_000 <= cap_bps * total + 10_000 * len(w)
    else:
        assert len(set(w.values())) == 1  # fewer than 1/cap: all weigh the same
    # The order of stakes is kept: a larger stake never weighs less.
    pairs = sorted(validators, key=validators.get)
    assert all(w[a] <= w[b] for a, b in itertools.pairwise(pairs))


def test_a_whale_is_capped_in_the_draw():
    """23% of the stake, a cap of 5%: drawn first about 5% of the time, not 23%."""
    stakes = {b"w" * 32: 23 * 10**12} | {bytes([i]) * 32: 10**12 for i in range(77)}
    w = capped_weights(stakes, 500)
    assert w[b"w" * 32] * 20 <= sum(w.values()) + 20
    first = sum(
        draw_committee(stakes, hashlib.sha256(b"w%d" % t).digest(), 5, cap_bps=500).members[0]
        == b"w" * 32
        for t in range(2000)
    )
    assert 0.03 < first / 2000 < 0.075
    uncapped = sum(
        draw_committee(stakes, hashlib.sha256(b"w%d" % t).digest(), 5).members[0] == b"w" * 32
        for t in range(2000)
    )
    assert 0.19 < uncapped / 2000 < 0.27


def _seated_capture_by_enumeration(n, k, spares, a, hosting):
    """Every sequence of n + spares draws (adversary, honest voter, honest abstainer)."""
    total = Fraction(0)
    kinds = ((0, a), (1, (1 - a) * hosting), (2, (1 - a) * (1 - hosting)))
    for seq in itertools.product(kinds, repeat=n + spares):
        seated = [kind for kind, _ in seq if kind != 2][:n]
        if len(seated) == n and seated.count(0) >= k:
            total += math.prod((q for _, q in seq), start=Fraction(1))
    return total


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 5),
    spares=st.integers(0, 3),
    hosting=st.fractions(0, 1, max_denominator=7),
    quorum=st.sampled_from([(2, 3), (5, 6), (3, 4)]),
)
def test_the_seated_capture_is_exact_drawn_with_replacement(n, spares, hosting, quorum):
    k = quorum_seats(n, *quorum)
    got = seated_capture_probability(n, *quorum, spares, hosting, 0)
    assert got == _seated_capture_by_enumeration(n, k, spares, Fraction(1, 3), hosting)
    if hosting == 1:  # nobody abstains: the plain committee
        assert got == capture_probability(n, *quorum, 0)
