"""D108 in the node: a job's reveals open once every *seated* member has a commitment
on chain (reserves check a job only when seated, so waiting for them, D71, meant
waiting out the whole window on any committee with reserves), and node and ledger agree
on when that is for forced receipts. An abstention of a member that has a commitment
steps aside from nothing, in the tracker as on the ledger; a member that abstains first
and then commits and reveals has voted both ways and is slashed (D37).

A real ledger (aipg.testing.chainkit) under a real work tracker (``TrackerChain``); every
record really signed, every VRF proof really proven.
"""

from __future__ import annotations

import functools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aipg.node.protocol.messages import WorkReport
from aipg.node.services.work import WorkTracker
from aipg.pouw import (
    COMMITTEE_DELAY,
    PouwError,
    Result,
    VerdictReason,
    make_commit,
    make_verdict,
    receipt_id,
)
from aipg.pouw.forced import ForcedError, forced_output, forced_proof
from aipg.pouw.records import VerdictCommit, output_hash_tokens
from aipg.pouw.reveal import verdict_commitment
from aipg.stake.ledger import apply_block
from aipg.stake.types import BPS, LedgerError
from aipg.testing.chainkit import TEST_PARAMS, TestChain, TrackerChain, make_work
from aipg.testing.world import OUTPUT_IDS, signed_verdict
from aipg.wire import sign

VOCAB = 100
WINDOW = 8
PARAMS = TEST_PARAMS.replace(
    verdict_commit_blocks=WINDOW,
    escrow_period=12,
    review_period=6,
    unbonding_period=14,
    forced_error_bps=BPS,  # every LLM job is forced (for the agreement test)
    lazy_slash_bps=500,
)
WRONG = output_hash_tokens(forced_output(OUTPUT_IDS, VOCAB))


def _chain(params=PARAMS, n: int = 7) -> TestChain:
    c = TestChain(n_validators=n, params=params)
    for _ in range(3):
        c.next()
    return c


def _track(c: TestChain, nonce: int, **kw):
    tracker = WorkTracker(TrackerChain(c))
    job, a, r, _ = make_work(c, c.users[1], nonce=nonce, **kw)
    tracked, _ = tracker.add_report(WorkReport(job, a, Result(r, (), (), "", b"", b"", ())))
    return tracker, tracked


def _abstain(c: TestChain, key: bytes, receipt):
    return make_verdict(c.keys[key], receipt, VerdictReason.UNAVAILABLE, recomputed=b"")


def test_reveals_open_once_the_seated_members_committed_not_the_reserves():
    c = _chain()
    tracker, tracked = _track(c, nonce=1)
    r = tracked.report.result.receipt
    members, reserves = tracked.committee.members, tracked.committee.candidates[5:]
    assert len(members) == 5 and len(reserves) == 2
    votes = {k: signed_verdict(c.keys[k], r) for k in tracked.committee.candidates}
    c.next(verdict_commits=[make_commit(c.keys[k], votes[k]) for k in members[:4]])
    assert not tracker.reveal_open(tracked)  # a seated member has not committed
    # the first seated member cannot check: it abstains, the first reserve is seated
    blind = members[4]
    tracker.add_verdict(_abstain(c, blind, r))
    assert reserves[0] in tracked.seated() and not tracker.reveal_open(tracked)
    c.next(verdict_commits=[make_commit(c.keys[reserves[0]], votes[reserves[0]])])
    closes = c.state.commit_windows[tracked.receipt_id] + WINDOW
    assert tracker.reveal_open(tracked) and c.state.height < closes  # before the window
    # (the last reserve never committed: nobody waits for it)
    for k in tracked.seated():
        tracker.add_verdict(votes[k])
    assert tracked.certified
    s = c.next(certificates=[tracked.outcome])
    assert tracked.job_id in s.certified


def test_a_committed_member_that_abstains_after_the_reveals_moves_no_seat_in_the_tracker():
    """The attack of tests/stake/test_early_close.py as a node sees it: the traitor's
    late abstention seats nobody, so the reserve's copied reveal is not counted, no
    verifier is asked to check, and the outcome the node offers is one the ledger takes."""
    c = _chain()
    tracker, tracked = _track(c, nonce=2)
    r = tracked.report.result.receipt
    members, reserve = tracked.committee.members, tracked.committee.candidates[5]
    votes = {k: signed_verdict(c.keys[k], r) for k in (*members, reserve)}
    c.next(verdict_commits=[make_commit(c.keys[k], votes[k]) for k in members])
    assert tracker.reveal_open(tracked)
    traitor, honest = members[0], members[1:]
    tracker.add_verdict(votes[honest[0]])
    tracker.add_verdict(_abstain(c, traitor, r))
    assert tracked.seated() == members  # the traitor keeps its seat
    c.next(verdict_commits=[make_commit(c.keys[reserve], votes[reserve])])  # the copy
    tracker.add_verdict(votes[reserve])
    for k in honest[1:]:
        tracker.add_verdict(votes[k])
    assert tracked.certified and reserve not in {v.signer for v in tracked.outcome.verdicts}
    assert traitor not in {v.signer for v in tracked.outcome.verdicts}  # no vote, no pay
    s = c.next(certificates=[tracked.outcome])
    assert tracked.job_id in s.certified


def test_abstaining_then_committing_and_revealing_is_voting_both_ways():
    """The other order: a member abstains (its seat goes to the reserve, which checks,
    commits, and with the others reveals once the phase closes early), then commits
    while the window is open. Its seat is its own again, so the ledger would refuse the
    certificate the node had decided with the reserve's vote: the tracker decides again
    without it after the block. When the member reveals, the tracker keeps its first
    verdict, drops the second and holds the pair as evidence; a block carrying it
    slashes the member ``double_sign_slash_bps`` and jails it."""
    c = _chain()
    tracker, tracked = _track(c, nonce=3)
    r = tracked.report.result.receipt
    members, reserve = tracked.committee.members, tracked.committee.candidates[5]
    turncoat = members[0]
    abstention = _abstain(c, turncoat, r)
    tracker.add_verdict(abstention)
    assert reserve in tracked.seated()
    votes = {k: signed_verdict(c.keys[k], r) for k in tracked.seated()}
    c.next(verdict_commits=[make_commit(c.keys[k], v) for k, v in votes.items()])
    assert tracker.reveal_open(tracked)
    for k in sorted(votes, key=lambda k: k != reserve):  # the reserve's reveal first
        tracker.add_verdict(votes[k])
    assert tracked.certified and reserve in {v.signer for v in tracked.outcome.verdicts}
    later = signed_verdict(c.keys[turncoat], r)
    c.next(verdict_commits=[make_commit(c.keys[turncoat], later)])
    with pytest.raises(LedgerError, match="a reserve whose seat no abstention opened"):
        apply_block(c.state, c.build(certificates=[tracked.outcome]))
    tracker.on_block()
    assert tracked.certified and reserve not in {v.signer for v in tracked.outcome.verdicts}
    assert tracker.pending_outcomes()[0] == [tracked.outcome]
    apply_block(c.state, c.build(certificates=[tracked.outcome]))  # four of five seats
    with pytest.raises(PouwError, match="voted differently"):
        tracker.add_verdict(later)
    (evidence,) = tracker.pending_conflicts()
    assert {evidence.verdict_a, evidence.verdict_b} == {abstention, later}
    stake = c.state.bond(turncoat).stake
    s = c.next(conflicting_verdicts=[evidence])
    assert s.bond(turncoat).stake == stake - stake * s.params.double_sign_slash_bps // BPS
    assert s.bond(turncoat).jailed_until > s.height


def test_a_job_undecided_by_a_redecision_and_decided_again_is_announced_once():
    """The reserve's vote counted for the certificate; once the abstainer commits it no
    longer does and the job is undecided again; the last seated member's reveal
    certifies it again. The tracker's listeners (a gateway's reputation of the worker)
    hear of the certification once."""
    c = _chain()
    tracker, tracked = _track(c, nonce=5)
    heard: list[bool] = []
    tracker.on_outcome.append(lambda t: heard.append(t.certified))
    r = tracked.report.result.receipt
    members, reserve = tracked.committee.members, tracked.committee.candidates[5]
    turncoat, last = members[0], members[-1]
    tracker.add_verdict(_abstain(c, turncoat, r))
    votes = {k: signed_verdict(c.keys[k], r) for k in tracked.seated()}
    c.next(verdict_commits=[make_commit(c.keys[k], v) for k, v in votes.items()])
    for k in sorted(votes, key=lambda k: k != reserve):
        if k != last:
            tracker.add_verdict(votes[k])
    assert tracked.certified and heard == [True]
    c.next(verdict_commits=[make_commit(c.keys[turncoat], signed_verdict(c.keys[turncoat], r))])
    tracker.on_block()
    assert tracked.outcome is None  # without the reserve's vote: below the quorum
    tracker.add_verdict(votes[last])
    assert tracked.certified and reserve not in {v.signer for v in tracked.outcome.verdicts}
    assert heard == [True]


def test_a_commitment_naming_another_job_closes_nothing():
    """A member's commitment on the receipt that names another job never counts for
    this job's outcomes (the ledger's lookup is the job's, D77); the node does not
    count it for the early close either, else the member could open the reveals and
    then abstain, its abstention still stepping aside on the ledger."""
    c = _chain()
    tracker, tracked = _track(c, nonce=5)
    other, *_ = make_work(c, c.users[1], nonce=6)  # committed, its committee drawn
    r = tracked.report.result.receipt
    members = tracked.committee.members
    votes = {k: signed_verdict(c.keys[k], r) for k in members}
    sly = members[0]
    wrong = sign(
        VerdictCommit(tracked.receipt_id, verdict_commitment(votes[sly]), other.id), c.keys[sly]
    )
    rest = [make_commit(c.keys[k], votes[k]) for k in members[1:]]
    s = c.next(verdict_commits=[wrong, *rest])  # the ledger takes it (D77's bounds hold)
    assert tracked.receipt_id + sly in s.verdict_commits
    assert not tracker.reveal_open(tracked)
    tracker.add_verdict(_abstain(c, sly, r))  # so its abstention steps aside, on both
    assert sly not in tracked.seated()


# --- node and ledger agree on the early close of a forced receipt -------------------------


@functools.cache
def _forced_base(reserves: int):
    """A chain with one forced receipt whose committee nobody has committed on yet:
    (chain, its state then, the ForcedError template, the committee)."""
    c = _chain(PARAMS.replace(committee_reserves=reserves))
    _, tracked = _track(c, nonce=4, receipt_over={"output_hash": WRONG})
    job, a, r = tracked.report.job, tracked.report.assignment, tracked.report.result.receipt
    beacon = c.state.beacon_at(c.state.commitments[job.id] + COMMITTEE_DELAY)
    fe = ForcedError(job, a, r, forced_proof(c.users[1].seed, beacon, a), OUTPUT_IDS, VOCAB, ())
    return c, (c.state, list(c.blocks), list(c.commits)), fe, tracked.committee


ACTS = st.sampled_from(["commit", "abstain", "both", "silent"])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(reserves=st.sampled_from([1, 0]), acts=st.lists(ACTS, min_size=7, max_size=7))
def test_node_and_ledger_agree_on_the_early_close_of_a_forced_receipt(reserves, acts):
    """Whatever each candidate did (committed, abstained, both, nothing), the worker's
    node may spring its ForcedError (its tracker says reveals are open) exactly when
    the ledger takes that ForcedError, carrying the verdicts the node counted."""
    c, (state, blocks, commits), fe, committee = _forced_base(reserves)
    c.state, c.blocks, c.commits = state, list(blocks), list(commits)
    r = fe.receipt
    did = dict(zip(committee.candidates, acts, strict=False))
    first = committee.candidates[0]  # someone has committed: the phase has opened
    did[first] = "commit" if did[first] in ("silent", "commit") else "both"
    chosen = {k: signed_verdict(c.keys[k], r, False) for k, x in did.items()}
    c.next(
        verdict_commits=[
            make_commit(c.keys[k], chosen[k]) for k, x in did.items() if x in ("commit", "both")
        ]
    )
    tracker = WorkTracker(TrackerChain(c))
    tracked, _ = tracker.add_report(
        WorkReport(fe.job, fe.assignment, Result(r, (), (), "", b"", b"", ()))
    )
    for k, x in did.items():
        if x in ("abstain", "both"):
            tracker.add_verdict(_abstain(c, k, r))
    assert c.state.height < c.state.commit_windows[receipt_id(r)] + WINDOW
    opened = tracker.reveal_open(tracked)
    carried = fe.replace(verdicts=tuple(v for _, v in sorted(tracked.collector.counted().items())))
    try:
        apply_block(c.state, c.build(forced_errors=[carried]))
        taken = True
    except LedgerError as e:
        assert "commit phase has not closed" in str(e)  # refused for nothing else
        taken = False
    assert opened == taken
    # and the early close is over the seated members only: with reserves and nobody
    # abstaining, the members' commitments are enough
    if reserves and all(did[k] == "commit" for k in committee.members):
        assert opened
