"""Grinding (D56): job nonces and assignment heights do not steer a job's committee.

The adversary holds 3 of 12 equal validators (a quarter of the seats on average). It
grinds 2,000 job nonces against the latest beacon it knows and commits the 30 whose
committees it would hold most of. The committees the chain then draws (from the beacon
two blocks after the commitment) give it its fair share, as for 30 nonces taken at
random; under the old rule (the seed known when the gateway picks the nonce) the same
grinding gave it the majority of every committee.
"""

from __future__ import annotations

import math

from aipg.pouw import COMMITTEE_DELAY, committee_for, job_id
from aipg.stake.tx import TxKind, make_tx
from aipg.testing.chainkit import GATEWAY, TestChain, ident, make_job, work_on
from aipg.testing.world import signed_assignment

N_VALIDATORS, BAD, SIZE, GROUND, KEPT = 12, 3, 5, 2000, 30


def _seats(committee, bad) -> int:
    return sum(k in bad for k in committee.members)


def _commit_all(c: TestChain, jobs) -> None:
    """Commit ``jobs`` in the next block and append blocks until their committees'
    beacon is final."""
    n = c.state.account(GATEWAY.address.raw).nonce
    txs = [
        make_tx(GATEWAY, c.state.chain_id, TxKind.COMMIT, n + i, job_id=job_id(j))
        for i, j in enumerate(jobs)
    ]
    c.next(transactions=txs)
    for _ in range(COMMITTEE_DELAY):
        c.next()


def test_ground_nonces_get_only_the_fair_share_of_seats():
    c = TestChain(n_validators=N_VALIDATORS)
    c.next()
    bad = {v.public_bytes for v in c.validators[:BAD]}
    worker = ident(300)
    stakes = c.state.validator_snapshot_at(c.state.height)
    rules = c.state.params.committee_rules()
    known = c.state.beacon  # the freshest randomness the adversary has

    def predicted(job):
        a = signed_assignment(GATEWAY, job, worker, height=c.state.height)
        return _seats(committee_for(job, a, stakes, known, rules=rules), bad)

    candidates = [make_job(c, nonce=n) for n in range(GROUND)]
    ground = sorted(candidates, key=predicted, reverse=True)[:KEPT]
    honest = [make_job(c, nonce=GROUND + n) for n in range(KEPT)]
    fair = SIZE * BAD / N_VALIDATORS  # 1.25 seats
    assert sum(map(predicted, ground)) / KEPT >= 3  # grinding the known seed works...

    _commit_all(c, [*ground, *honest])
    got = {}
    for name, jobs in (("ground", ground), ("honest", honest)):
        seats = []
        for job in jobs:
            _, _, _, verdicts = work_on(c.state, c.keys, job, worker)
            seats.append(sum(v.signer in bad for v in verdicts))
        got[name] = sum(seats) / KEPT
    # ... but not the seed the chain uses: both means within 4 standard errors of fair
    var = SIZE * (BAD / N_VALIDATORS) * (1 - BAD / N_VALIDATORS)
    var *= (N_VALIDATORS - SIZE) / (N_VALIDATORS - 1)
    band = 4 * math.sqrt(var / KEPT)
    assert abs(got["ground"] - fair) < band, got
    assert abs(got["honest"] - fair) < band, got


def test_the_assignment_height_does_not_move_the_committee():
    """The gateway picks the assignment's height: any height gives the same committee."""
    c = TestChain(n_validators=N_VALIDATORS)
    job = make_job(c, nonce=1)
    _commit_all(c, [job])
    for _ in range(6):
        c.next()

    seed = c.state.commitments[job_id(job)] + COMMITTEE_DELAY
    stakes = c.state.validator_snapshot_at(seed)
    rules = c.state.params.committee_rules()
    committees = {
        committee_for(
            job,
            signed_assignment(GATEWAY, job, ident(300), height=h),
            stakes,
            c.state.beacon_at(seed),
            rules=rules,
        ).candidates
        for h in range(2, c.state.height)
    }
    assert len(committees) == 1
