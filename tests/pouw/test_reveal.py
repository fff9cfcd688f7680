"""Commit, then reveal: the pure parts (commitments, salts, the collector's rule).

A vote counts only once a block carried its matching commitment in time; until then the
collector holds it, and one that contradicts its commitment is dropped.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aipg.pouw import (
    Certificate,
    PouwError,
    VerdictReason,
    VoteCollector,
    check_reveal,
    make_commit,
    make_verdict,
    validate_certificate,
    validate_commit,
    verdict_commitment,
    verdict_salt,
)
from aipg.testing.world import World

W = World()


def _work():
    job = W.llm_job()
    a = W.assignment(job)
    r = W.receipt(job, a)
    return job, a, r, W.committee(job, a)


def test_the_salt_is_the_members_own_and_the_same_after_a_restart():
    _, _, r, committee = _work()
    k1, k2 = committee.members[:2]
    v1 = W.verdict(k1, r)
    assert v1.salt == verdict_salt(W.by_key[k1], v1.receipt_id)  # derived again: restart-safe
    assert v1.salt != W.verdict(k2, r).salt  # nobody else's
    assert v1.salt != bytes(32)


@settings(max_examples=30, deadline=None)
@given(
    valid=st.booleans(),
    reason=st.sampled_from([VerdictReason.TOKEN_MISMATCH, VerdictReason.TOPK_MISMATCH]),
    data=st.binary(max_size=32),
)
def test_a_reveal_matches_its_commitment_only_with_the_same_vote_check_and_salt(
    valid, reason, data
):
    _, _, r, committee = _work()
    member = W.by_key[committee.members[0]]
    vote = make_verdict(member, r, VerdictReason.OK if valid else reason, recomputed=data)
    commit = make_commit(member, vote)
    validate_commit(commit)
    assert commit.commitment == verdict_commitment(vote)
    lookup = {(vote.receipt_id, vote.signer): commit.commitment}.get
    check_reveal(vote, lambda rid, k: lookup((rid, k)))
    other = make_verdict(member, r, reason if valid else VerdictReason.OK, recomputed=data)
    with pytest.raises(PouwError, match="does not match"):
        check_reveal(other, lambda rid, k: lookup((rid, k)))
    recheck = make_verdict(member, r, vote_reason(vote), recomputed=data + b"x")
    with pytest.raises(PouwError, match="does not match"):  # another check hash
        check_reveal(recheck, lambda rid, k: lookup((rid, k)))
    detail = vote.replace(detail="a note", max_error_micro=7)  # not committed
    assert verdict_commitment(detail) == commit.commitment


def vote_reason(v):
    return VerdictReason(v.reason)


def test_abstentions_need_no_commitment():
    _, _, r, committee = _work()
    abstain = make_verdict(
        W.by_key[committee.members[0]], r, VerdictReason.UNAVAILABLE, recomputed=b""
    )
    check_reveal(abstain, lambda rid, k: None)


def test_the_collector_holds_a_reveal_until_a_block_shows_its_commitment():
    """Members reveal; only once "a block" (the lookup) has their commitments do their
    votes count, and the certificate forms then. A reveal of a member who never
    committed is never counted; a reveal contradicting a commitment is refused."""
    job, a, r, committee = _work()
    on_chain: dict[tuple[bytes, bytes], bytes] = {}
    collector = VoteCollector(job, a, r, committee, W.stakes, lambda rid, k: on_chain.get((rid, k)))
    members = committee.members
    votes = {k: W.verdict(k, r) for k in members}
    for k in members:
        assert collector.add(votes[k]) is None
    assert set(collector.held()) == set(members) and not collector.counted()
    # The copier holds the least stake of five: the other four hold more than 4/5.
    copier = min(members, key=lambda k: W.stakes[k])
    for k in members:
        if k != copier:
            on_chain[votes[k].receipt_id, k] = make_commit(W.by_key[k], votes[k]).commitment
    outcome = collector.recheck()
    assert isinstance(outcome, Certificate)
    assert copier in collector.held() and copier not in collector.counted()
    assert copier not in {v.signer for v in outcome.verdicts}
    lookup = lambda rid, k: on_chain.get((rid, k))  # noqa: E731
    validate_certificate(outcome, W.stakes, W.beacon, committed=lookup)
    with pytest.raises(PouwError, match="carried in time"):
        validate_certificate(
            Certificate(job, a, r, tuple(sorted(votes.values(), key=lambda v: v.signer))),
            W.stakes,
            W.beacon,
            committed=lookup,
        )
    honest = next(k for k in members if k != copier)
    turned = W.verdict(honest, r, valid=False)
    fresh = VoteCollector(job, a, r, committee, W.stakes, lookup)
    with pytest.raises(PouwError, match="does not match"):
        fresh.add(turned)
