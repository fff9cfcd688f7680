"""D95 on a real ledger: a member that commits on a receipt proven forced and never
reveals (it saw the others' reveals show the receipt wrong and hid its own) is slashed
``lazy_slash_bps`` and jailed ``review_period`` blocks after the first ForcedError, as a
lazy valid vote is; one offline for that time, one that reveals late, and one that never
committed are not.

Every record is really signed and every VRF proof really proven (aipg.testing.chainkit);
blocks are applied by the real ``apply_block``, their commits really missing the
precommits of the validators a test keeps offline.
"""

from __future__ import annotations

import pytest

from aipg.pouw import COMMITTEE_DELAY, committee_for, make_commit, receipt_id
from aipg.pouw.forced import ForcedError, forced_output, forced_proof
from aipg.pouw.records import output_hash_tokens
from aipg.stake.forced import UNREVEALED
from aipg.stake.types import BPS
from aipg.testing.chainkit import TEST_PARAMS, TestChain, make_work
from aipg.testing.world import OUTPUT_IDS, signed_verdict

VOCAB = 100
PARAMS = TEST_PARAMS.replace(
    verdict_commit_blocks=2,
    escrow_period=12,
    review_period=6,
    unbonding_period=14,
    forced_error_bps=BPS,  # every LLM job is forced
    lazy_slash_bps=500,
)
WRONG = output_hash_tokens(forced_output(OUTPUT_IDS, VOCAB))


def _forced_job(c: TestChain):
    """A forced receipt, every seated member committed (the first valid, without
    checking; the rest invalid), the commit phase closed. Returns (ForcedError template
    without verdicts, votes by member, the member that voted valid)."""
    worker = c.users[1]
    job, a, r, verdicts = make_work(c, worker, nonce=1, receipt_over={"output_hash": WRONG})
    members = sorted(v.signer for v in verdicts)
    votes = {k: signed_verdict(c.keys[k], r, k == members[0]) for k in members}
    c.next(verdict_commits=[make_commit(c.keys[k], v) for k, v in votes.items()])
    for _ in range(PARAMS.verdict_commit_blocks):
        c.next()
    beacon = c.state.beacon_at(c.state.commitments[job.id] + COMMITTEE_DELAY)
    proof = forced_proof(worker.seed, beacon, a)
    return ForcedError(job, a, r, proof, OUTPUT_IDS, VOCAB, ()), votes, members[0]


def _chain(params=PARAMS) -> TestChain:
    c = TestChain(n_validators=7, params=params)
    for _ in range(3):
        c.next()
    return c


@pytest.mark.parametrize("case", ["online", "offline", "late"])
def test_a_committed_member_that_never_reveals_on_a_forced_receipt_pays_the_lazy_slash(case):
    c = _chain()
    fe, votes, dodger = _forced_job(c)
    others = [k for k in votes if k != dodger]
    carried = tuple(votes[k] for k in others)
    # `late`: a diligent member's reveal comes in a second ForcedError within the period
    late = others[0] if case == "late" else None
    if late is not None:
        carried = tuple(v for v in carried if v.signer != late)
    bonds = {k: c.state.bond(k).stake for k in c.keys}
    absent = (dodger,) if case == "offline" else ()
    start = c.next(forced_errors=[fe.replace(verdicts=carried)], absent=absent).height
    rid = receipt_id(fe.receipt)
    owed = {k[len(UNREVEALED) + 32 :] for k in c.state.punished if k.startswith(UNREVEALED)}
    assert owed == ({dodger, late} if late else {dodger})
    if late is not None:
        s = c.next(forced_errors=[fe.replace(verdicts=(votes[late],))])
        assert UNREVEALED + rid + late not in s.punished
    while c.state.height < start + PARAMS.review_period:
        s = c.next(absent=absent)
        assert s.bond(dodger).stake == bonds[dodger]  # nothing before the period is over
    s = c.next(absent=absent)
    assert not any(k.startswith(UNREVEALED) for k in s.punished)
    if case == "offline":  # it missed those heights: only absent
        assert s.bond(dodger).stake == bonds[dodger]
    else:
        assert s.bond(dodger).stake == bonds[dodger] - bonds[dodger] * 500 // BPS
        assert s.bond(dodger).jailed_until > s.height
    # nobody else lost stake: the members that revealed (late or not), and the validators
    # that never sat on the committee (never committed: nothing owed)
    assert all(s.bond(k).stake == bonds[k] for k in c.keys if k != dodger)


@pytest.mark.parametrize("job_seats", [0, 3])
def test_a_reserve_that_committed_owes_nothing(job_seats):
    """A committee's reserves check and commit too (in case a seat abstains), but no
    block can carry a vote of one that was not seated: it owes no reveal. With a job
    committee smaller than a review's (3 seats of 5, as mainnet's 22 of 68), its reserves
    were once counted seated on the review-sized draw and slashed for not revealing."""
    c = _chain(PARAMS.replace(audit_committee_size=job_seats))
    worker = c.users[1]
    job, a, r, _ = make_work(c, worker, nonce=2, receipt_over={"output_hash": WRONG})
    seed = c.state.commitments[job.id] + COMMITTEE_DELAY
    beacon = c.state.beacon_at(seed)
    committee = committee_for(
        job,
        a,
        c.state.validator_snapshot_at(seed),
        beacon,
        rules=c.state.params.job_committee_rules(),
    )
    reserves = [k for k in committee.candidates if k not in committee.members]
    assert reserves
    votes = {k: signed_verdict(c.keys[k], r, False) for k in committee.candidates}
    c.next(verdict_commits=[make_commit(c.keys[k], v) for k, v in votes.items()])
    for _ in range(PARAMS.verdict_commit_blocks):
        c.next()
    assert len(committee.members) == (job_seats or 5)
    seated = tuple(votes[k] for k in committee.members)
    fe = ForcedError(job, a, r, forced_proof(worker.seed, beacon, a), OUTPUT_IDS, VOCAB, seated)
    bonds = {k: c.state.bond(k).stake for k in c.keys}
    c.next(forced_errors=[fe])
    assert not any(k.startswith(UNREVEALED) for k in c.state.punished)
    for _ in range(PARAMS.review_period + 1):
        s = c.next()
    assert all(s.bond(k).stake == bonds[k] for k in c.keys)
