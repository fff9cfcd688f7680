"""Committee sampling and quorum arithmetic."""

from __future__ import annotations

import collections
import hashlib
import math
from fractions import Fraction

from hypothesis import given, settings
from hypothesis import strategies as st

from aipg.pouw import (
    committee_for,
    committee_seed,
    draw_committee,
    reserves,
    sample_committee,
    tally,
    tally_seated,
)
from aipg.testing.world import identity, signed_assignment, signed_job

keys = st.binary(min_size=32, max_size=32)
validator_sets = st.dictionaries(keys, st.integers(0, 10**15), min_size=0, max_size=30)


@settings(max_examples=150, deadline=None)
@given(validators=validator_sets, seed=st.binary(min_size=32, max_size=32), size=st.integers(0, 40))
def test_committee_is_distinct_bonded_members_and_deterministic(validators, seed, size):
    committee = sample_committee(validators, seed, size)
    bonded = [k for k, s in validators.items() if s > 0]
    assert len(committee) == min(size, len(bonded))
    assert len(set(committee)) == len(committee)
    assert all(validators[k] > 0 for k in committee)
    # The mapping's order does not matter, only the set and the seed.
    reordered = dict(reversed(list(validators.items())))
    assert sample_committee(reordered, seed, size) == committee


def test_sampling_is_stake_weighted():
    # One validator with 1/2 of the stake is drawn first about half the time.
    validators = {bytes([i]) * 32: 1 for i in range(10)} | {b"\xff" * 32: 10}
    first = collections.Counter(
        sample_committee(validators, hashlib.sha256(b"%d" % i).digest(), 3)[0] for i in range(2000)
    )
    assert 0.45 < first[b"\xff" * 32] / 2000 < 0.55
    # And without replacement: it is in nearly every committee of 3 but only once.
    always = sum(
        b"\xff" * 32 in sample_committee(validators, hashlib.sha256(b"x%d" % i).digest(), 3)
        for i in range(500)
    )
    assert always > 0.8 * 500


def test_seed_depends_on_block_and_job():
    a = committee_seed(b"\1" * 32, b"\2" * 32)
    assert a != committee_seed(b"\1" * 32, b"\3" * 32)
    assert a != committee_seed(b"\4" * 32, b"\2" * 32)
    validators = {bytes([i]) * 32: 100 for i in range(40)}
    committees = {
        sample_committee(validators, committee_seed(b"\1" * 32, bytes([j]) * 32), 5)
        for j in range(20)
    }
    assert len(committees) == 20


@settings(max_examples=300, deadline=None)
@given(
    stakes=st.lists(st.integers(1, 10**12), min_size=1, max_size=12),
    votes=st.lists(st.sampled_from([None, True, False]), min_size=12, max_size=12),
    quorum=st.sampled_from([(2, 3), (3, 4), (7, 10), (51, 100)]),
)
def test_quorum_thresholds_are_exact_and_exclusive(stakes, votes, quorum):
    """Seats count, not stake (D57), against the genesis quorum num/den: certify at
    >= num/den of the seats, convict above the rest; never both."""
    validators = {bytes([i]) * 32: s for i, s in enumerate(stakes)}
    cast = {bytes([i]) * 32: v for i, v in enumerate(votes[: len(stakes)]) if v is not None}
    t = tally(list(validators), validators, cast, quorum=quorum)
    num, den = quorum
    seats = len(stakes)
    valid = sum(1 for v in cast.values() if v)
    invalid = sum(1 for v in cast.values() if not v)
    assert t.certifies == (valid * den >= seats * num)
    assert t.convicts == (invalid * den > seats * (den - num))
    assert not (t.certifies and t.convicts)


def test_a_whale_alone_holds_one_seat_not_the_quorum():
    """A validator with 23% of the stake voted valid alone: one seat of five, no quorum
    (by stake it held most of any committee it sat on)."""
    v = {b"w" * 32: 23} | {bytes([i]) * 32: 1 for i in range(4)}
    assert not tally(v, v, {b"w" * 32: True}).certifies


def test_quorum_boundaries():
    v = {b"a" * 32: 1, b"b" * 32: 1, b"c" * 32: 1}
    assert tally(v, v, {b"a" * 32: True, b"b" * 32: True}).certifies
    assert not tally(v, v, {b"a" * 32: True}).certifies
    assert not tally(v, v, {b"a" * 32: False}).convicts  # exactly 1/3 is not > 1/3
    assert tally(v, v, {b"a" * 32: False, b"b" * 32: False}).convicts


# --- conflicts of interest, abstentions, reserves ------------------------------------


@settings(max_examples=100, deadline=None)
@given(
    n=st.integers(1, 12),
    roles=st.lists(st.integers(0, 11), min_size=3, max_size=3),
    seed=st.integers(0, 2**32),
)
def test_a_job_is_never_checked_by_its_worker_gateway_or_client(n, roles, seed):
    """Whoever of the validators is the job's worker, gateway or client (even one key in
    all three roles), the draw leaves them out."""
    validators = [identity(f"v{i}") for i in range(n)]
    worker, gateway, client = (validators[r % n] for r in roles)
    stakes = {v.public_bytes: 10**12 for v in validators}
    job = signed_job(gateway, client=client.address.raw, nonce=seed)
    a = signed_assignment(gateway, job, worker, height=5)
    committee = committee_for(job, a, stakes, b"\x01" * 32, size=5)
    interested = {worker.public_bytes, gateway.public_bytes, client.public_bytes}
    assert not interested & set(committee.candidates)
    assert len(committee.candidates) == min(n - len(interested), 5 + reserves(5))


def test_an_abstention_seats_the_next_reserve_and_no_one_else():
    stakes = {bytes([i]) * 32: 1 for i in range(12)}
    c = draw_committee(stakes, b"\x05" * 32, 5)
    assert len(c.candidates) == 7 and c.members == c.candidates[:5]
    first, second = c.candidates[0], c.candidates[1]
    assert c.seated([first]) == c.candidates[1:6]
    assert c.seated([first, second]) == c.candidates[2:7]
    assert len(c.seated(c.candidates[:3])) == 4  # the reserves ran out: a short committee
    votes = {k: True for k in c.candidates[3:7]} | {k: None for k in c.candidates[:3]}
    t = tally_seated(c, stakes, votes)
    assert t.short and not t.certifies and not t.convicts


@settings(max_examples=200, deadline=None)
@given(votes=st.lists(st.sampled_from([None, True, False]), min_size=7, max_size=7))
def test_abstentions_never_count_as_invalid(votes):
    stakes = {bytes([i]) * 32: 1 for i in range(7)}
    c = draw_committee(stakes, b"\x06" * 32, 5)
    cast = dict(zip(c.candidates, votes, strict=True))
    t = tally_seated(c, stakes, cast)
    honest = {k: v for k, v in cast.items() if v is not False}  # nobody voted invalid
    assert not tally_seated(c, stakes, honest).convicts
    if t.convicts:
        seated = c.seated(k for k, v in cast.items() if v is None)
        assert 3 * sum(cast[k] is False for k in seated) > len(seated)


def _at_least(n: int, k: int, p: Fraction) -> Fraction:
    return sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k, n + 1))


def test_withholding_data_never_beats_an_ordinary_committee():
    """An attacker holding stake share p <= 1/3 (equal stakes, draws as independent
    trials) certifies forged work in an ordinary committee by holding 2/3 of its seats.
    Starving every honest member of data makes them abstain, so the seated reserves
    decide: then it needs every seat of size + reserves(size) draws. That is never
    likelier, and one more reserve would make it so."""
    shares = [Fraction(i, 30) for i in range(1, 11)]  # 1/30 .. 1/3
    for size in range(1, 21):
        quorum = -(-2 * size // 3)  # ceil(2/3 size) seats certify
        r = reserves(size)
        for p in shares:
            assert _at_least(size + r, size, p) <= _at_least(size, quorum, p), (size, p)
        assert any(  # the bound is tight: one more reserve helps the attacker
            _at_least(size + r + 1, size, p) > _at_least(size, quorum, p) for p in shares
        ), size


# --- fixed seats (mainnet, D100) -------------------------------------------------------


def test_with_fixed_seats_an_abstention_is_a_seat_without_a_vote():
    stakes = {bytes([i]) * 32: 1 for i in range(12)}
    c = draw_committee(stakes, b"\x05" * 32, 6, quorum=(5, 6), spares=False)
    assert c.fixed and c.candidates == c.members and len(c.members) == 6
    assert c.seated(c.candidates[:2]) == c.members  # nobody steps aside, nobody steps in
    # five valid votes of six certify; with one abstention and five valid, too
    votes = {k: True for k in c.members[1:]} | {c.members[0]: None}
    t = tally_seated(c, stakes, votes)
    assert not t.short and t.certifies and t.committee_stake == 6
    # two abstentions leave four valid: no certificate, and no conviction either
    votes[c.members[1]] = None
    t = tally_seated(c, stakes, votes)
    assert not t.certifies and not t.convicts and not t.short
    # invalid votes on more than 1/6 of the seats (two of six) convict
    t = tally_seated(c, stakes, {c.members[0]: False, c.members[1]: False})
    assert t.convicts and not t.certifies


@settings(max_examples=200, deadline=None)
@given(votes=st.lists(st.sampled_from([None, True, False]), min_size=6, max_size=6))
def test_fixed_seats_never_certify_and_convict_at_once(votes):
    stakes = {bytes([i]) * 32: 1 for i in range(9)}
    c = draw_committee(stakes, b"\x07" * 32, 6, quorum=(5, 6), spares=False)
    cast = dict(zip(c.members, votes, strict=True))
    t = tally_seated(c, stakes, cast)
    assert not (t.certifies and t.convicts)
    assert t.certifies == (sum(v is True for v in votes) >= 5)
    assert t.convicts == (sum(v is False for v in votes) >= 2)
