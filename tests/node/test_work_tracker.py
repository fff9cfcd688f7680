"""The work tracker: a job is offered to blocks once, whatever the number of receipts.

Reports and verdicts are real signed records on a real chain (aipg.testing.chainkit);
only the outputs inside each result are empty, since the tracker never reads them.
"""

from __future__ import annotations

import pytest

from aipg.node.protocol.messages import WorkReport
from aipg.node.services.work import WorkTracker
from aipg.pouw import (
    COMMITTEE_DELAY,
    PouwError,
    Result,
    VerdictReason,
    committee_for,
    job_id,
    make_commit,
    make_verdict,
)
from aipg.testing.chainkit import (
    GATEWAY,
    SIX_SEATS_APPEALS,
    TEST_PARAMS,
    TestChain,
    TrackerChain,
    commit_tx,
    ident,
    make_job,
    make_work,
)
from aipg.testing.world import signed_assignment, signed_receipt

ChainOf = TrackerChain  # the tracker's view of a TestChain


def _chain() -> TestChain:
    c = TestChain(n_validators=4)
    for _ in range(3):
        c.next()
    return c


def _track(tracker: WorkTracker, c: TestChain, worker, nonce: int):
    job, assignment, receipt, verdicts = make_work(c, worker, nonce=nonce)
    result = Result(receipt, (), (), "", b"", b"", ())
    tracked, new = tracker.add_report(WorkReport(job, assignment, result))
    assert new
    for v in verdicts:
        tracker.add_verdict(v)
    assert tracked.certified
    return tracked


def test_a_second_receipt_for_a_carried_job_is_set_aside():
    c = _chain()
    tracker = WorkTracker(ChainOf(c))
    first = _track(tracker, c, ident(300), nonce=1)
    late = _track(tracker, c, ident(301), nonce=1)  # a reassigned job's late first worker
    other = _track(tracker, c, ident(302), nonce=2)
    certs, _ = tracker.pending_outcomes()
    assert len(certs) == 3
    tracker.mark_included(late.outcome, height=4)  # whichever a block carried
    certs, _ = tracker.pending_outcomes()
    assert certs == [other.outcome]
    assert first.set_aside and not late.set_aside and late.block_height == 4
    assert tracker.for_job(first.job_id) is late  # the job's view is the paid receipt


def test_work_a_proposal_refused_is_never_offered_again():
    c = _chain()
    tracker = WorkTracker(ChainOf(c))
    stale = _track(tracker, c, ident(303), nonce=3)
    tracker.set_aside(stale.outcome, "assignment at height 3 is too old")
    assert tracker.pending_outcomes() == ([], [])
    assert stale.set_aside == "assignment at height 3 is too old"


def test_an_outcome_decided_by_a_member_that_voted_both_ways_is_set_aside():
    """A member tells half the network 'valid' and the other half 'invalid': the node
    keeps the evidence against the member and acts on neither outcome."""
    c = _chain()
    tracker = WorkTracker(ChainOf(c))
    tracked = _track(tracker, c, ident(304), nonce=5)  # certified by every member
    member = c.keys[tracked.outcome.verdicts[0].signer]
    flipped = make_verdict(
        member, tracked.report.result.receipt, VerdictReason.TOKEN_MISMATCH, recomputed=b""
    )
    with pytest.raises(PouwError, match="voted differently"):
        tracker.add_verdict(flipped)
    assert tracker.pending_outcomes() == ([], [])
    assert tracked.set_aside == "a member of its deciding side voted both ways"
    (evidence,) = tracker.pending_conflicts()
    assert {evidence.verdict_a.signer, evidence.verdict_b.signer} == {member.public_bytes}


def test_commit_then_reveal_in_the_tracker_and_a_contradicting_reveal_in_either_order():
    """With commit-reveal on, the tracker counts a reveal once a block carried its
    commitment (rechecked after each block), offers the pending commitments for blocks,
    and catches a member that also sends a vote contradicting its commitment, whichever
    of its two votes arrives first."""
    c = TestChain(n_validators=4, params=TEST_PARAMS.replace(verdict_commit_blocks=2))
    for _ in range(3):
        c.next()
    tracker = WorkTracker(ChainOf(c))
    job, assignment, receipt, verdicts = make_work(c, ident(305), nonce=6)
    report = WorkReport(job, assignment, Result(receipt, (), (), "", b"", b"", ()))
    tracked, _ = tracker.add_report(report)
    commits = [make_commit(c.keys[v.signer], v) for v in verdicts]
    for commit in commits:
        tracker.add_commit(commit)
    assert set(tracker.pending_commits()) == set(commits)
    liar = verdicts[0]
    contradicting = make_verdict(
        c.keys[liar.signer], receipt, VerdictReason.TOKEN_MISMATCH, recomputed=b""
    )
    for v in verdicts[1:]:
        tracker.add_verdict(v)  # held: no block has their commitments yet
    assert tracked.outcome is None and not tracker.reveal_open(tracked)
    c.next(verdict_commits=commits)
    tracker.settle_commits(commits)
    assert tracker.pending_commits() == []
    tracker.on_block()
    assert tracked.certified  # the held reveals now count
    with pytest.raises(PouwError, match="does not match"):
        tracker.add_verdict(contradicting)  # before the liar's own reveal
    tracker.add_verdict(liar)
    (evidence,) = tracker.pending_conflicts()
    assert {evidence.verdict_a.signer, evidence.verdict_b.signer} == {liar.signer}


def test_a_report_waits_for_its_jobs_commitment_and_the_seed_block():
    """D56: no committee before the job is committed and the block two after it is final;
    then the one drawn from that block's beacon, whatever the assignment's height."""
    c = _chain()
    tracker = WorkTracker(ChainOf(c))
    worker = ident(300)
    job = make_job(c, nonce=5)
    a = signed_assignment(GATEWAY, job, worker, height=c.state.height)
    receipt = signed_receipt(worker, job, a)
    report = WorkReport(job, a, Result(receipt, (), (), "", b"", b"", ()))
    with pytest.raises(PouwError, match="not committed"):
        tracker.add_report(report)
    c.next(transactions=[commit_tx(c.state, job_id(job))])
    for _ in range(COMMITTEE_DELAY):
        with pytest.raises(PouwError, match="not final here yet"):
            tracker.add_report(report)
        c.next()
    tracked, new = tracker.add_report(report)
    seed = c.state.commitments[job_id(job)] + COMMITTEE_DELAY
    expected = committee_for(
        job,
        a,
        c.state.validator_snapshot_at(seed),
        c.state.beacon_at(seed),
        rules=c.state.params.committee_rules(),
    )
    assert new and tracked.committee == expected


def test_a_node_that_missed_the_votes_learns_the_outcome_from_the_block():
    """A gateway that saw too few reveals to decide (gossip lost some) still learns its
    job was certified when a block carries the certificate, and tells its listeners."""
    c = _chain()
    voter, late = WorkTracker(ChainOf(c)), WorkTracker(ChainOf(c))
    cert = _track(voter, c, ident(300), nonce=1).outcome
    heard = []
    late.on_outcome.append(heard.append)
    job, assignment, receipt, _ = make_work(c, ident(300), nonce=1)
    tracked, _ = late.add_report(
        WorkReport(job, assignment, Result(receipt, (), (), "", b"", b"", ()))
    )
    assert tracked.outcome is None
    late.mark_included(cert, height=4)
    assert tracked.certified and tracked.block_height == 4 and heard == [tracked]


def test_an_audit_its_committee_leaves_undecided_is_appealed_once():
    """Mainnet's rules at six seats (5/6 certify, fixed seats, appeals after 3 blocks):
    two members stay silent, four valid votes decide nothing; once the ledger allows it
    the tracker offers an appeal (D96), a block carries it, and it is offered no more.
    Its listeners hear an appeal, which accuses nobody."""
    params = SIX_SEATS_APPEALS
    c = TestChain(n_validators=16, params=params)
    for _ in range(3):
        c.next()
    tracker = WorkTracker(ChainOf(c))
    heard = []
    tracker.on_outcome.append(heard.append)
    job, assignment, receipt, verdicts = make_work(c, ident(300), nonce=9)
    tracked, _ = tracker.add_report(
        WorkReport(job, assignment, Result(receipt, (), (), "", b"", b"", ()))
    )
    certs, frauds = tracker.pending_outcomes()
    assert frauds == [] and [x.receipt for x in certs] == [receipt]  # its claim
    c.next(certificates=certs)
    tracker.mark_included(certs[0], c.state.height)
    for v in verdicts[:4]:
        assert tracker.add_verdict(v) is None  # four of six: no quorum either way
    opens = c.state.claims[receipt.job_id].height + 2 + params.audit_appeal_blocks
    while c.state.height + 1 < opens:
        assert tracker.pending_outcomes() == ([], [])
        c.next()
        tracker.after_block()
    _, frauds = tracker.pending_outcomes()
    assert len(frauds) == 1 and frauds[0].receipt == receipt and not frauds[0].verdicts
    c.next(frauds=frauds)
    tracker.mark_included(frauds[0], c.state.height)
    assert tracked.appealed and not tracked.certified and heard == [tracked]
    assert tracker.pending_outcomes() == ([], [])
