"""D108 on a real ledger: an abstention of a member that has a commitment on the receipt
passes its seat to nobody. With reveals opening once every *seated* member has
committed, the attack it stops is: a seated member commits, the phase closes early, the
others reveal, the member abstains, and the reserve its abstention would seat commits a
copy of the revealed votes while the height window is still open. The ledger counts the
copy nowhere: not in a certificate, not in fraud evidence, not in a review (whose
reviewers commit and reveal the same way, D76); the copier earns nothing.

Every record is really signed (aipg.testing.chainkit); blocks are applied by the real
``apply_block``. Without D108 each ``pytest.raises`` below fails: the copy is counted.
"""

from __future__ import annotations

import pytest

from aipg.pouw import (
    COMMITTEE_DELAY,
    Certificate,
    FraudEvidence,
    FraudReview,
    VerdictReason,
    committee_for,
    make_commit,
    make_verdict,
    receipt_id,
    review_committee,
)
from aipg.stake.ledger import apply_block
from aipg.stake.types import LedgerError
from aipg.testing.chainkit import TEST_PARAMS, TestChain, make_work
from aipg.testing.world import signed_verdict

# A window long enough that the copier is in time: the early close is what it exploits.
PARAMS = TEST_PARAMS.replace(
    verdict_commit_blocks=8, escrow_period=12, review_period=6, unbonding_period=14
)


def _chain(n: int = 7, params=PARAMS) -> TestChain:
    c = TestChain(n_validators=n, params=params)
    for _ in range(3):
        c.next()
    return c


def _abstain(c: TestChain, key: bytes, receipt):
    return make_verdict(c.keys[key], receipt, VerdictReason.UNAVAILABLE, recomputed=b"")


def _committee(c: TestChain, job, a):
    seed = c.state.commitments[job.id] + COMMITTEE_DELAY
    return committee_for(
        job,
        a,
        c.state.validator_snapshot_at(seed),
        c.state.beacon_at(seed),
        rules=c.state.params.job_committee_rules(),
    )


def _balances(c: TestChain, keys) -> dict[bytes, int]:
    return {k: c.state.account(c.keys[k].address.raw).balance for k in keys}


@pytest.mark.parametrize("valid", [True, False])
def test_a_committed_member_that_abstains_after_the_reveals_seats_no_copier(valid):
    c = _chain()
    worker = c.users[1]
    job, a, r, _ = make_work(c, worker, nonce=1, valid=valid)
    committee = _committee(c, job, a)
    members, reserve = committee.members, committee.candidates[len(committee.members)]
    assert len(members) == 5 and len(committee.candidates) == 7  # two reserves
    votes = {k: signed_verdict(c.keys[k], r, valid) for k in members}
    c.next(verdict_commits=[make_commit(c.keys[k], v) for k, v in votes.items()])
    # every seated member committed: the phase is over (D108), the members reveal.
    # The traitor abstains instead; the reserve copies their vote, in time.
    traitor, honest = members[0], members[1:]
    copied = signed_verdict(c.keys[reserve], r, valid)
    s = c.next(verdict_commits=[make_commit(c.keys[reserve], copied)])  # the ledger takes it
    assert s.height <= s.commit_windows[receipt_id(r)] + PARAMS.verdict_commit_blocks
    carried = (_abstain(c, traitor, r), copied, *(votes[k] for k in honest))
    outcome = Certificate if valid else FraudEvidence
    with pytest.raises(LedgerError, match="a reserve whose seat no abstention opened"):
        apply_block(c.state, c.build(**_body(outcome(job, a, r, carried))))
    # the abstention keeps the traitor's seat, without a vote: the honest four decide
    # (4 of 5 seats valid certify; 4 invalid convict), and the copier earns nothing
    decided = outcome(job, a, r, (carried[0], *carried[2:]))
    proposer = c.state.validators.proposer()
    before = _balances(c, [reserve, *honest])
    s = c.next(**_body(decided))
    assert (job.id in s.certified) if valid else (receipt_id(r) in s.convictions)
    after = _balances(c, [reserve, *honest])
    assert reserve != proposer  # (the draw here: else its bonus would be in the figure)
    assert after[reserve] == before[reserve]
    if valid:  # the seated voters shared the verdict pool (D72)
        assert all(after[k] > before[k] for k in honest)


def _body(outcome) -> dict:
    if isinstance(outcome, Certificate):
        return {"certificates": [outcome]}
    return {"frauds": [outcome]}


def test_an_abstention_before_any_commitment_still_seats_the_reserve():
    """The honest case D26 keeps: a member that cannot check abstains first; the
    reserve it seats checks, commits and counts."""
    c = _chain()
    job, a, r, _ = make_work(c, c.users[1], nonce=2)
    committee = _committee(c, job, a)
    members, reserve = committee.members, committee.candidates[len(committee.members)]
    blind, seated = members[0], (*members[1:], reserve)
    votes = {k: signed_verdict(c.keys[k], r) for k in seated}
    c.next(verdict_commits=[make_commit(c.keys[k], v) for k, v in votes.items()])
    s = c.next(certificates=[Certificate(job, a, r, (_abstain(c, blind, r), *votes.values()))])
    assert job.id in s.certified


def test_a_committed_reviewer_that_abstains_seats_no_copier_either():
    """A review's committee has reserves too (devnets, test chains) and closes its
    commit phase early over its seated reviewers (D76): the same hole, closed the same
    way. Three-seat job committees, so that a six-seat review with four reserves fits."""
    params = PARAMS.replace(committee_size=3)
    c = _chain(14, params)
    job, a, r, _ = make_work(c, c.users[1], nonce=3, valid=False)
    committee = _committee(c, job, a)
    accusers = committee.members[:2]
    evidence = FraudEvidence(
        job, a, r, tuple(signed_verdict(c.keys[k], r, False) for k in accusers)
    )
    c.next(verdict_commits=[make_commit(c.keys[v.signer], v) for v in evidence.verdicts])
    s = c.next(frauds=[evidence])
    review = review_committee(
        evidence,
        s.validator_snapshot_at(s.height),
        s.beacon_at(s.height),
        params.committee_size,
        params.committee_rules(),
    )
    reviewers, reserve = review.members, review.candidates[len(review.members)]
    assert len(reviewers) == 6 and len(review.candidates) == 10
    votes = {k: signed_verdict(c.keys[k], r, False) for k in reviewers}
    c.next(verdict_commits=[make_commit(c.keys[k], v, review=True) for k, v in votes.items()])
    traitor, honest = reviewers[0], reviewers[1:]
    copied = signed_verdict(c.keys[reserve], r, False)
    c.next(verdict_commits=[make_commit(c.keys[reserve], copied, review=True)])
    carried = (_abstain(c, traitor, r), copied, *(votes[k] for k in honest))
    with pytest.raises(LedgerError, match="a reserve whose seat no abstention opened"):
        apply_block(c.state, c.build(reviews=[FraudReview(evidence, carried)]))
    # without the copy: five of six seats invalid uphold it (two thirds), the traitor's
    # seat held without a vote
    s = c.next(reviews=[FraudReview(evidence, (carried[0], *carried[2:]))])
    assert receipt_id(r) not in s.convictions
