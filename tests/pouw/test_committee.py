"""Committee sampling and quorum arithmetic."""

from __future__ import annotations

import collections
import hashlib

from hypothesis import given, settings
from hypothesis import strategies as st

from aipg.pouw import committee_seed, sample_committee, tally

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
)
def test_quorum_thresholds_are_exact_and_exclusive(stakes, votes):
    validators = {bytes([i]) * 32: s for i, s in enumerate(stakes)}
    cast = {bytes([i]) * 32: v for i, v in enumerate(votes[: len(stakes)]) if v is not None}
    t = tally(list(validators), validators, cast)
    total = sum(stakes)
    valid = sum(validators[k] for k, v in cast.items() if v)
    invalid = sum(validators[k] for k, v in cast.items() if not v)
    assert t.certifies == (valid * 3 >= total * 2)
    assert t.convicts == (invalid * 3 > total)
    assert not (t.certifies and t.convicts)


def test_quorum_boundaries():
    v = {b"a" * 32: 1, b"b" * 32: 1, b"c" * 32: 1}
    assert tally(v, v, {b"a" * 32: True, b"b" * 32: True}).certifies
    assert not tally(v, v, {b"a" * 32: True}).certifies
    assert not tally(v, v, {b"a" * 32: False}).convicts  # exactly 1/3 is not > 1/3
    assert tally(v, v, {b"a" * 32: False, b"b" * 32: False}).convicts
