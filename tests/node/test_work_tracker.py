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
    make_verdict,
)
from aipg.testing.chainkit import GATEWAY, TestChain, commit_tx, ident, make_job, make_work
from aipg.testing.world import signed_assignment, signed_receipt


class ChainOf:
    """The tracker's view of a TestChain."""

    def __init__(self, chain: TestChain):
        self.c = chain

    @property
    def committee_size(self) -> int:
        return self.c.state.params.committee_size

    @property
    def committee_rules(self):
        return self.c.state.params.committee_rules()

    def validator_snapshot_at(self, height: int):
        return self.c.state.validator_snapshot_at(height)

    def finalized_hash(self, height: int):
        return self.c.state.block_hash_at(height)

    def beacon_at(self, height: int):
        return self.c.state.beacon_at(height)

    def committed_at(self, job_id: bytes):
        return self.c.state.commitments.get(job_id)


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
