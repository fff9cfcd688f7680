"""A job's committee has ``audit_committee_size`` seats; reviews keep ``committee_size``
(D98): the audit costs 20 member checks on mainnet, a conviction is still decided by 68."""

from __future__ import annotations

import pytest

from aipg.pouw import Certificate, committee_for
from aipg.pouw.sizing import capture_probability
from aipg.stake.genesis import MAINNET_PARAMS, devnet_params
from aipg.stake.types import LedgerError
from aipg.testing.chainkit import TEST_PARAMS, TestChain, ident, make_work
from aipg.testing.world import signed_verdict


def test_mainnet_audits_with_twenty_seats_and_reviews_with_sixty_eight():
    p = MAINNET_PARAMS
    assert p.job_committee_size() == 20 and p.committee_rules().size == 68
    num, den, cap = p.quorum_numerator, p.quorum_denominator, p.committee_weight_cap_bps
    # what decides a conviction: the review committee, below 1e-6 at 1/3 of the weight
    assert capture_probability(p.committee_size, num, den, cap) < 1e-6
    # what an audit risks: a forgery whose audit drew a captured committee goes unconvicted
    escape = capture_probability(p.job_committee_size(), num, den, cap)
    assert escape < 2e-3
    # the deterrent of D80 (expected slash >= 2x the claim's worth) keeps 1.99x
    assert 2 * (1 - escape) > 1.99
    # member checks per job at the floor: the 5 % target (it was 68 x 0.1 % = 0.068)
    assert p.job_committee_size() * p.audit_floor_bps / 10_000 <= 0.05
    # devnets and test chains: committees as before
    for q in (devnet_params(2_000, 5), TEST_PARAMS):
        assert q.job_committee_size() == q.committee_size


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
