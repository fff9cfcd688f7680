"""A job's committee has ``audit_committee_size`` seats and its own quorum; reviews keep
``committee_size`` (D98, D101): an audit costs 22 member checks on mainnet, and every
committee, audit or review, is captured at 1/3 of the weight with probability below 1e-6."""

from __future__ import annotations

from fractions import Fraction

import pytest

from aipg.pouw import Certificate, committee_for
from aipg.pouw.sizing import capture_probability, quorum_seats, seated_capture_probability
from aipg.stake.genesis import MAINNET_PARAMS, devnet_params
from aipg.stake.types import LedgerError
from aipg.testing.chainkit import TEST_PARAMS, TestChain, ident, make_work
from aipg.testing.world import signed_verdict


def test_mainnet_committees_are_each_captured_below_one_in_a_million():
    p = MAINNET_PARAMS
    job, review = p.job_committee_rules(), p.committee_rules()
    assert (job.size, job.quorum) == (22, (5, 6)) and quorum_seats(22, 5, 6) == 19
    assert review.size == 68 and review.quorum == (2, 3)  # a review draws 2 x 68 seats
    cap = p.committee_weight_cap_bps
    # the audit: 19 valid seats of 22 at 1/3 of the capped weight
    assert capture_probability(job.size, *job.quorum, cap) < Fraction(1, 10**6)
    # the review that decides every conviction (and the 68 of D57)
    assert capture_probability(2 * review.size, *review.quorum, cap) < Fraction(1, 10**6)
    assert capture_probability(review.size, *review.quorum, cap) < Fraction(1, 10**6)
    # at the genesis quorum a 22-seat committee would not be (D98's 20 seats: 1.2e-3)
    assert capture_probability(22, 2, 3, cap) > Fraction(1, 10**4)
    # member checks per job at the floor: the 5 % target (68 seats: 0.068)
    assert job.size * p.audit_floor_bps / 10_000 <= 0.05


def test_mainnet_seats_are_fixed_because_reserves_let_abstentions_raise_the_adversary():
    """With reserves, honest members that cannot check (they do not host the model) pass
    their seats on, and the adversary's share of the seated grows: D100."""
    p = MAINNET_PARAMS
    job = p.job_committee_rules()
    assert not job.spares and not p.committee_rules().spares
    third = Fraction(1, 3)
    # fixed seats: whatever share of the honest can check, the bound is the plain one
    for hosting in (Fraction(1), third, Fraction(0)):
        fixed = seated_capture_probability(job.size, *job.quorum, 0, hosting, 0)
        assert fixed <= capture_probability(job.size, *job.quorum, 0) < Fraction(1, 10**6)
    # what reserves do, drawn with replacement: D98's 20 seats (12 reserves) at a third
    # of the honest hosting the model, about 1 in 15 (all hosting: below 1e-3); the 68
    # of a review (44 reserves), 1 in 50 (all hosting: 7.8e-9)
    assert seated_capture_probability(20, 2, 3, 12, third, 0) > Fraction(1, 20)
    assert seated_capture_probability(20, 2, 3, 12, Fraction(1), 0) < Fraction(1, 10**3)
    assert seated_capture_probability(68, 2, 3, 44, third, 0) > Fraction(1, 60)
    assert seated_capture_probability(68, 2, 3, 44, Fraction(1), 0) < Fraction(1, 10**8)


def test_devnets_and_test_chains_keep_the_quorum_and_reserves():
    for q in (devnet_params(2_000, 5), TEST_PARAMS):
        rules = q.job_committee_rules()
        assert rules.size == q.committee_size and rules.quorum == (2, 3) and rules.spares


def test_a_certificate_is_tallied_over_the_job_committee_and_no_more():
    """With 3 of 5 seats for a job, the 3-seat committee's votes certify; votes of the
    full 5-seat draw name members that are not on the job's committee: refused."""
    params = TEST_PARAMS.replace(audit_committee_size=3)
    c = TestChain(n_validators=8, params=params)
    worker = ident(300)
    job, a, r, verdicts = make_work(c, worker, nonce=1)
    assert len(verdicts) == 3
    seed = c.state.commitments[job.id] + 2
    full = committee_for(
        job,
        a,
        c.state.validator_snapshot_at(seed),
        c.state.beacon_at(seed),
        rules=params.committee_rules(),
    )
    wide = tuple(signed_verdict(c.keys[k], r, True) for k in sorted(full.members))
    assert len(wide) == 5
    with pytest.raises(LedgerError):
        c.next(certificates=[Certificate(job, a, r, wide)])
    c.next(certificates=[Certificate(job, a, r, verdicts)])
    assert r.job_id in c.state.certified
