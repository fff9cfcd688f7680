"""Consensus messages are decoded and verified once per node (D90): what the topic
validator checked is handed to the chain service and the consensus machine as is;
anything else is decoded and verified as before."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aipg.node.protocol.checked import CheckedMessages
from aipg.stake.block import ProposalMessage, Vote, VoteStep
from aipg.stake.builder import make_vote
from aipg.testing.world import identity
from aipg.wire import WireError, encode

TYPES = (ProposalMessage, Vote)


def vote(height: int = 3, who: str = "v0") -> Vote:
    return make_vote(identity(who), "aipg-test", height, 0, VoteStep.PREVOTE, b"\x01" * 32)


def test_checked_bytes_decode_to_the_checked_object_and_count_as_verified():
    cache = CheckedMessages()
    v = vote()
    data = encode(v)
    cache.add(data, v, v)
    got = cache.decode(data, TYPES)
    assert got is v and cache.hits == 1
    assert cache.verified(got)


def test_other_bytes_are_decoded_and_verified_afresh():
    cache = CheckedMessages()
    v = vote()
    cache.add(encode(v), v, v)
    other = vote(height=4)
    got = cache.decode(encode(other), TYPES)
    assert got == other and got is not other and cache.hits == 0
    assert cache.verified(got)  # a real signature, checked now
    forged = dataclasses.replace(v, height=9)  # the checked signature on other content
    assert not cache.verified(forged)
    assert not cache.verified(cache.decode(encode(forged), TYPES))
    with pytest.raises(WireError):
        cache.decode(encode(v)[:-3], TYPES)


def test_an_equal_object_decoded_elsewhere_is_verified_by_its_signature():
    cache = CheckedMessages()
    v = vote()
    cache.add(encode(v), v, v)
    twin = dataclasses.replace(v)  # equal, not the checked object
    assert twin == v and twin is not v
    assert cache.verified(twin)  # verified by its (valid) signature, not by the cache
    bad = dataclasses.replace(v, signature=bytes(64))
    assert not cache.verified(bad)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 40), st.integers(1, 8))
def test_the_cache_stays_bounded_and_forgets_the_oldest(n, capacity):
    cache = CheckedMessages(capacity)
    votes = [vote(height=h) for h in range(1, n + 1)]
    for v in votes:
        cache.add(encode(v), v, v)
    assert len(cache._by_data) == len(cache._signed) == min(n, capacity)
    for i, v in enumerate(votes):
        got = cache.decode(encode(v), TYPES)
        assert (got is v) == (i >= n - capacity)
