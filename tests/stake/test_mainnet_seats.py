"""Mainnet's committee rules on a real ledger, at a size a test chain can seat: a job
committee certifies with 5/6 of its seats, seats are fixed (an abstention keeps its seat
without a vote), invalid votes on more than a sixth open a conviction, and the review
decides it (D100, D101). An audit its committee leaves undecided (four silent seats
are enough) may be appealed to that review (D96).

The adversary here is real signatures on crafted votes: it holds four of six seats, two
thirds, which certified a forgery under the genesis quorum (D98's 20 seats were captured
that way with probability 1.2e-3); under 5/6 it needs five.
"""

from __future__ import annotations

import pytest

from aipg.pouw import (
    COMMITTEE_DELAY,
    Certificate,
    FraudEvidence,
    VerdictReason,
    make_verdict,
    receipt_id,
)
from aipg.pouw.forced import ForcedError, forced_output, forced_proof
from aipg.pouw.records import output_hash_tokens
from aipg.stake.audit import AUDIT_DELAY
from aipg.stake.ledger import apply_block
from aipg.stake.tx import TxKind, make_tx
from aipg.stake.types import BPS, LedgerError
from aipg.testing.chainkit import (
    AIPG,
    CHAIN,
    SIX_SEATS,
    SIX_SEATS_APPEALS,
    TestChain,
    make_review,
    make_work,
)
from aipg.testing.world import OUTPUT_IDS, signed_verdict

SEATS, APPEALS = SIX_SEATS, SIX_SEATS_APPEALS  # six seats at 5/6, fixed; with appeals


def _chain(params=SEATS) -> tuple[TestChain, object]:
    """16 validators and a bonded worker."""
    c = TestChain(n_validators=16, params=params)
    worker = c.users[1]
    c.next(transactions=[make_tx(worker, CHAIN, TxKind.BOND, 0, amount=1_000 * AIPG)])
    return c, worker


def _abstain(c: TestChain, key: bytes, receipt) -> object:
    return make_verdict(c.keys[key], receipt, VerdictReason.UNAVAILABLE, recomputed=b"")


def test_five_of_six_fixed_seats_certify_and_an_abstention_passes_no_seat():
    c, worker = _chain()
    job, a, r, verdicts = make_work(c, worker, nonce=1)
    assert len(verdicts) == 6  # no reserves were drawn
    members = [v.signer for v in verdicts]
    outsider = next(k for k in c.keys if k not in members and k != worker.public_bytes)
    four = verdicts[:4]
    with pytest.raises(LedgerError, match="quorum"):  # 4 of 6 is two thirds, not 5/6
        apply_block(c.state, c.build(certificates=[Certificate(job, a, r, four)]))
    # an abstention does not hand its seat to anyone: a non-member's vote is refused
    stand_in = (*four, _abstain(c, members[4], r), signed_verdict(c.keys[outsider], r))
    with pytest.raises(LedgerError):
        apply_block(c.state, c.build(certificates=[Certificate(job, a, r, stand_in)]))
    # five valid and one abstention certify
    five = (*verdicts[:5], _abstain(c, members[5], r))
    s = c.next(certificates=[Certificate(job, a, r, five)])
    assert r.job_id in s.certified


def test_an_adversary_with_two_thirds_of_the_seats_cannot_certify_a_forgery():
    c, worker = _chain()
    job, a, r, bad = make_work(c, worker, nonce=2, valid=False)  # honest members: invalid
    members = [v.signer for v in bad]
    captured = tuple(signed_verdict(c.keys[k], r, True) for k in members[:4])
    with pytest.raises(LedgerError, match="quorum"):
        apply_block(c.state, c.build(certificates=[Certificate(job, a, r, captured)]))
    # one honest invalid vote is not evidence (1/6 of the seats); two are (more than 1/6)
    with pytest.raises(LedgerError, match="quorum"):
        apply_block(c.state, c.build(frauds=[FraudEvidence(job, a, r, bad[4:5])]))
    evidence = FraudEvidence(job, a, r, bad[4:])
    s = c.next(frauds=[evidence])
    assert receipt_id(r) in s.convictions
    stake = s.bond(worker.public_bytes).stake
    s = c.next(reviews=[make_review(c, evidence, upheld=True)])
    assert s.bond(worker.public_bytes).stake < stake  # the review upheld it: slashed


def test_two_false_accusers_open_a_review_that_slashes_them():
    c, worker = _chain()
    job, a, r, good = make_work(c, worker, nonce=3)
    accusers = [v.signer for v in good[:2]]
    false = FraudEvidence(job, a, r, tuple(signed_verdict(c.keys[k], r, False) for k in accusers))
    s = c.next(frauds=[false])
    review = make_review(c, false, upheld=False)
    assert len(review.verdicts) == 12 and not {v.signer for v in review.verdicts} & set(accusers)
    bonds = {k: s.bond(k).stake for k in accusers}
    s = c.next(reviews=[review])
    assert s.bond(worker.public_bytes).stake == 1_000 * AIPG
    assert all(s.bond(k).stake < bonds[k] for k in accusers)
    assert not s.convictions and r.job_id in s.certified  # the job is paid (D73)


def _audited_claim(c: TestChain, worker, nonce: int, valid: bool = True):
    """A claim of ``worker``'s (a newcomer: audited for sure), its audit drawn."""
    job, a, r, verdicts = make_work(c, worker, nonce=nonce, valid=valid)
    c.next(certificates=[Certificate(job, a, r, ())])
    for _ in range(AUDIT_DELAY):
        c.next()
    assert c.state.claims[r.job_id].audited
    return job, a, r, verdicts


@pytest.mark.parametrize("honest", [True, False])
def test_an_audit_left_undecided_by_silent_seats_goes_to_the_review(honest):
    c, worker = _chain(APPEALS)
    job, a, r, verdicts = _audited_claim(c, worker, nonce=4, valid=honest)
    # two members stay silent: four votes either way decide nothing
    with pytest.raises(LedgerError, match="quorum"):
        apply_block(c.state, c.build(certificates=[Certificate(job, a, r, verdicts[:4])]))
    appeal = FraudEvidence(job, a, r, ())
    with pytest.raises(LedgerError, match="until block"):  # the committee still has time
        apply_block(c.state, c.build(frauds=[appeal]))
    while c.state.height + 1 < c.state.claims[r.job_id].height + AUDIT_DELAY + 3:
        c.next()
    stake = c.state.bond(worker.public_bytes).stake
    s = c.next(frauds=[appeal])
    assert receipt_id(r) in s.convictions  # a review is open; nobody is slashed for it
    with pytest.raises(LedgerError):  # one appeal per job
        apply_block(s, c.build(frauds=[appeal]))
    s = c.next(reviews=[make_review(c, appeal, upheld=not honest)])
    assert not s.convictions
    if honest:  # paid as certified, its audit counted in its record
        assert r.job_id in s.certified and r.job_id not in s.claims
        assert s.bond(worker.public_bytes).stake == stake
        assert s.audit_records[worker.public_bytes].score > 0
    else:  # the forgery is slashed, as fraud evidence would have had it
        assert s.bond(worker.public_bytes).stake < stake


def test_only_an_undecided_audited_claim_may_be_appealed():
    c, worker = _chain(APPEALS)
    job, a, r, verdicts = make_work(c, worker, nonce=5)
    for _ in range(6):
        c.next()
    with pytest.raises(LedgerError, match="only a claim drawn for audit"):  # never claimed
        apply_block(c.state, c.build(frauds=[FraudEvidence(job, a, r, ())]))
    job, a, r, verdicts = _audited_claim(c, worker, nonce=6)
    c.next(certificates=[Certificate(job, a, r, verdicts)])  # its committee decided
    for _ in range(4):
        c.next()
    with pytest.raises(LedgerError, match="only a claim drawn for audit"):
        apply_block(c.state, c.build(frauds=[FraudEvidence(job, a, r, ())]))
    # a chain without appeals says so
    d, w = _chain(SEATS)
    job, a, r, _ = _audited_claim(d, w, nonce=7)
    for _ in range(6):
        d.next()
    with pytest.raises(LedgerError, match="takes no appeals"):
        apply_block(d.state, d.build(frauds=[FraudEvidence(job, a, r, ())]))


def test_an_appealed_forced_error_is_voided_by_its_proof_not_slashed():
    """A forced receipt (D75) whose committee stayed silent: nobody committed, so its
    worker could not reveal the proof yet. An appeal opens a review, which would find the
    receipt wrong; the worker's ForcedError, with no verdicts, voids it and settles the
    job: an honest worker is never slashed for the error the chain made it carry."""
    c, worker = _chain(APPEALS.replace(forced_error_bps=BPS, verdict_commit_blocks=2))
    wrong = output_hash_tokens(forced_output(OUTPUT_IDS, 100))
    job, a, r, _ = make_work(c, worker, nonce=8, receipt_over={"output_hash": wrong})
    c.next(certificates=[Certificate(job, a, r, ())])
    beacon = c.state.beacon_at(c.state.commitments[job.id] + COMMITTEE_DELAY)
    forced = ForcedError(job, a, r, forced_proof(worker.seed, beacon, a), OUTPUT_IDS, 100, ())
    with pytest.raises(LedgerError, match="commit phase"):  # no appeal yet: keep it secret
        apply_block(c.state, c.build(forced_errors=[forced]))
    while c.state.height + 1 < c.state.claims[r.job_id].height + AUDIT_DELAY + 3:
        c.next()
    appeal = FraudEvidence(job, a, r, ())
    s = c.next(frauds=[appeal])
    assert receipt_id(r) in s.convictions
    stake = s.bond(worker.public_bytes).stake
    s = c.next(forced_errors=[forced])
    assert receipt_id(r) not in s.convictions and r.job_id in s.certified
    with pytest.raises(LedgerError, match="no open conviction"):
        apply_block(s, c.build(reviews=[make_review(c, appeal, upheld=True)]))
    assert s.bond(worker.public_bytes).stake == stake
