"""Reviews are commit-revealed (D76): a conviction's reviewers commit before they
reveal, like its first committee, so no reviewer can copy another's vote.

Real ledger, real signatures (aipg.testing.chainkit)."""

from __future__ import annotations

import pytest

from aipg.pouw import FraudEvidence, make_commit, receipt_id
from aipg.stake.ledger import apply_block
from aipg.stake.types import LedgerError
from aipg.testing.chainkit import TEST_PARAMS, TestChain, apply_review, make_review, make_work
from aipg.testing.world import signed_verdict

PARAMS = TEST_PARAMS.replace(
    verdict_commit_blocks=2, escrow_period=8, review_period=6, unbonding_period=10
)


def _convicted(nonce: int):
    """A chain whose last block carried fraud evidence (its committee committed first)."""
    c = TestChain(n_validators=8, params=PARAMS)
    for _ in range(3):
        c.next()
    job, a, r, verdicts = make_work(c, c.users[1], nonce=nonce, valid=False)
    c.next(verdict_commits=[make_commit(c.keys[v.signer], v) for v in verdicts])
    for _ in range(PARAMS.verdict_commit_blocks):
        c.next()
    evidence = FraudEvidence(job, a, r, verdicts)
    c.next(frauds=[evidence])
    return c, evidence


def _review_commits(c, review):
    return [make_commit(c.keys[v.signer], v, review=True) for v in review.verdicts]


def test_a_review_counts_only_votes_its_reviewers_committed_in_time():
    c, evidence = _convicted(1)
    review = make_review(c, evidence, upheld=True)
    with pytest.raises(LedgerError, match="no commitment of this member was carried in time"):
        apply_block(c.state, c.build(reviews=[review]))
    s = apply_review(c, review)  # decided: the conviction and its review rows go
    assert receipt_id(evidence.receipt) not in s.convictions
    assert not s.review_commits and not s.review_windows


def test_a_reviewer_that_copies_without_committing_counts_for_nothing():
    c, evidence = _convicted(2)
    review = make_review(c, evidence, upheld=True)
    copier, *rest = review.verdicts
    c.next(verdict_commits=_review_commits(c, review.replace(verdicts=tuple(rest))))
    for _ in range(PARAMS.verdict_commit_blocks):
        c.next()
    copied = signed_verdict(c.keys[copier.signer], evidence.receipt, False)
    with pytest.raises(LedgerError, match="carried in time"):
        apply_block(c.state, c.build(reviews=[review.replace(verdicts=(copied, *rest))]))


def test_review_commitments_need_an_open_review_and_its_phase_open():
    c, evidence = _convicted(3)
    review = make_review(c, evidence, upheld=True)
    first, second, *_ = _review_commits(c, review)
    c.next(verdict_commits=[first])
    for _ in range(PARAMS.verdict_commit_blocks):
        c.next()
    with pytest.raises(LedgerError, match="review's commit phase closed"):
        apply_block(c.state, c.build(verdict_commits=[second]))
    with pytest.raises(LedgerError, match="already committed"):
        apply_block(c.state, c.build(verdict_commits=[first]))
    # on a receipt with no open review
    _job, _a, _r, verdicts = make_work(c, c.users[2], nonce=4)
    stray = make_commit(c.keys[verdicts[0].signer], verdicts[0], review=True)
    with pytest.raises(LedgerError, match="no review of this receipt is open"):
        apply_block(c.state, c.build(verdict_commits=[stray]))


def test_review_commitments_go_when_the_review_expires():
    c, evidence = _convicted(5)
    review = make_review(c, evidence, upheld=True)
    c.next(verdict_commits=_review_commits(c, review))
    assert c.state.review_commits
    for _ in range(PARAMS.review_period + 1):
        c.next()
    assert not c.state.convictions and not c.state.review_commits
    assert not c.state.review_windows and not c.state.commit_counts
