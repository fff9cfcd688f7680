"""The gateway's scheduler and reputation: a pure state machine, fuzzed with hypothesis."""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from aipg.pouw import Claim, PouwError, Tier, job_id
from aipg.pouw.schedule import JobState, Reputation, Scheduler, SchedulerConfig, hash_order
from aipg.testing.world import World, identity
from aipg.wire import UNITS_PER_AIPG, sign

W = World()
WORKERS = [identity(f"sched-worker-{i}") for i in range(4)]
BONDS = {
    w.public_bytes: b * UNITS_PER_AIPG for w, b in zip(WORKERS, [0, 500, 1000, 5000], strict=True)
}
CONFIG = SchedulerConfig(claim_window_ms=100, attempt_timeout_ms=1_000, max_attempts=3)


def claim(job, worker, queue=0, model_id=None):
    c = Claim(job_id=job_id(job), model_id=model_id or job.model_id, queue=queue, sent_ms=0)
    return sign(c, worker)


def scheduler(**kw):
    return Scheduler(W.gateway, lambda k: BONDS.get(k, 0), config=CONFIG, **kw)


def test_assigns_in_the_chains_order_after_the_window_whatever_the_claims_report():
    """D58: the draw's order decides, not a claim's queue, reputation or the key."""
    drawn = WORKERS[1].public_bytes
    s = scheduler(order=lambda job, keys: sorted(keys, key=lambda k: k != drawn))
    job = W.llm_job(created_ms=0, deadline_ms=10_000)
    jid = s.submit(job, 0)
    s.on_claim(claim(job, WORKERS[0], queue=0), 10)
    s.on_claim(claim(job, WORKERS[1], queue=9), 20)
    s.on_claim(claim(job, WORKERS[2], queue=0), 30)
    s.reputation.on_success(WORKERS[2].public_bytes)
    assert s.tick(50, 10) == []  # claim window still open
    [a] = s.tick(100, 10)
    assert a.worker == drawn and a.height == 10 and a.deadline_ms == 1_100
    assert s.state(jid) is JobState.ASSIGNED


def test_a_free_job_waits_for_its_draw_then_falls_back_to_the_hash_order():
    s = scheduler(order=lambda job, keys: None)  # the seed block is never final here
    job = W.llm_job(created_ms=0, deadline_ms=100_000)
    s.submit(job, 0)
    for w in WORKERS:
        s.on_claim(claim(job, w), 10)
    assert s.tick(100, 10) == [] and s.tick(CONFIG.draw_wait_ms - 1, 10) == []
    [a] = s.tick(CONFIG.draw_wait_ms, 10)
    keys = [w.public_bytes for w in WORKERS]
    assert a.worker == hash_order(job, keys)[0]


def test_without_a_draw_ties_go_by_hash_not_by_the_lowest_key():
    """Keys that sort low win nothing: over many jobs each claimant is first about as
    often as the others."""
    wins = dict.fromkeys((w.public_bytes for w in WORKERS), 0)
    for n in range(400):
        s = scheduler()
        job = W.llm_job(created_ms=0, deadline_ms=10_000, nonce=n)
        s.submit(job, 0)
        for w in WORKERS:
            s.on_claim(claim(job, w, queue=n % 3), 1)
        [a] = s.tick(100, 10)
        wins[a.worker] += 1
    assert max(wins.values()) < 1.4 * 100 and min(wins.values()) > 0.6 * 100


def test_timeout_lowers_reputation_and_reassigns_to_another_worker():
    s = scheduler()
    job = W.llm_job(created_ms=0, deadline_ms=10_000)
    jid = s.submit(job, 0)
    for w in WORKERS[:2]:
        s.on_claim(claim(job, w), 0)
    [first] = s.tick(100, 5)
    before = s.reputation.score(first.worker)
    assert s.tick(1_100, 5) == []  # exactly at the deadline: not late yet
    [second] = s.tick(1_101, 6)
    assert second.worker != first.worker and second.attempt == 1
    assert s.reputation.score(first.worker) < before
    with pytest.raises(PouwError, match="not the assigned worker"):
        s.on_receipt(W.receipt(job, first), 1_200)  # signed by a worker never assigned
    # No one left to try after the second timeout: it waits for a new claim...
    assert s.tick(2_200, 7) == []
    assert s.state(jid) is JobState.COLLECTING
    s.on_claim(claim(job, WORKERS[2]), 2_300)
    [third] = s.tick(2_300, 8)
    assert third.attempt == 2
    # ...and fails once its attempts are used up.
    assert s.tick(3_301, 9) == []
    assert s.state(jid) is JobState.FAILED
    s.forget(jid)
    with pytest.raises(PouwError, match="unknown job"):
        s.state(jid)


def test_paid_tier_goes_only_to_trusted_workers():
    s = scheduler()
    job = W.llm_job(tier=int(Tier.PAID), created_ms=0, deadline_ms=10_000)
    s.submit(job, 0)
    for w in WORKERS:
        s.on_claim(claim(job, w), 0)
    assert s.tick(100, 3) == []  # bonds are fine for 2 and 3, reputation is not yet
    for _ in range(10):
        s.reputation.on_success(WORKERS[3].public_bytes)
    [a] = s.tick(101, 3)
    assert a.worker == WORKERS[3].public_bytes


def test_fraud_bans_and_bad_claims_are_dropped():
    s = scheduler()
    job = W.llm_job(created_ms=0, deadline_ms=10_000)
    s.submit(job, 0)
    s.on_fraud(WORKERS[0].public_bytes)
    with pytest.raises(PouwError, match="banned"):
        s.on_claim(claim(job, WORKERS[0]), 0)
    with pytest.raises(PouwError, match="another model"):
        s.on_claim(claim(job, WORKERS[1], model_id=bytes(32)), 0)
    with pytest.raises(PouwError, match="signature"):
        s.on_claim(claim(job, WORKERS[1]).replace(queue=5), 0)
    with pytest.raises(PouwError, match="unknown job"):
        s.on_claim(claim(W.llm_job(seed=1234), WORKERS[1]), 0)
    with pytest.raises(PouwError, match="signed"):
        s.submit(sign(job, WORKERS[1]), 0)
    r = Reputation()
    r.on_fraud(b"x")
    r.on_success(b"x")
    assert r.banned(b"x")


class SchedulerMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.s = scheduler()
        self.now = 0
        self.jobs = []

    @rule(tier=st.sampled_from([Tier.FREE, Tier.PAID]), life=st.integers(200, 5_000))
    def submit(self, tier, life):
        job = W.llm_job(
            seed=len(self.jobs), tier=int(tier), created_ms=self.now, deadline_ms=self.now + life
        )
        self.s.submit(job, self.now)
        self.jobs.append(job)

    @precondition(lambda self: self.jobs)
    @rule(data=st.data(), worker=st.sampled_from(WORKERS), queue=st.integers(0, 3))
    def claim(self, data, worker, queue):
        job = data.draw(st.sampled_from(self.jobs))
        try:
            self.s.on_claim(claim(job, worker, queue), self.now)
        except PouwError as e:
            assert e.what in {"claim.job_id", "claim.signer"}

    @rule(dt=st.integers(0, 1_500))
    def tick(self, dt):
        self.now += dt
        for a in self.s.tick(self.now, 10 + self.now // 1000):
            job = next(j for j in self.jobs if job_id(j) == a.job_id)
            assert a.assigned_ms == self.now <= a.deadline_ms <= job.deadline_ms
            assert not self.s.reputation.banned(a.worker)
            if job.tier == Tier.PAID:
                assert BONDS[a.worker] >= CONFIG.trusted_min_bond
                assert self.s.reputation.score(a.worker) >= CONFIG.trusted_min_reputation
            assert a.attempt < CONFIG.max_attempts

    @precondition(lambda self: self.jobs)
    @rule(data=st.data())
    def result(self, data):
        job = data.draw(st.sampled_from(self.jobs))
        a = self.s.assignment(job_id(job))
        if a is None or self.s.state(job_id(job)) is not JobState.ASSIGNED:
            return
        worker = next(w for w in WORKERS if w.public_bytes == a.worker)
        receipt = sign(W.receipt(job, a), worker)
        if self.now <= a.deadline_ms:
            self.s.on_receipt(receipt, self.now)
            self.s.on_certified(a.worker)
            assert self.s.state(job_id(job)) is JobState.DONE

    @precondition(lambda self: self.jobs)
    @rule(worker=st.sampled_from(WORKERS))
    def fraud(self, worker):
        self.s.on_fraud(worker.public_bytes)

    @invariant()
    def scores_in_range(self):
        for w in WORKERS:
            assert 0 <= self.s.reputation.score(w.public_bytes) <= 1000


SchedulerMachine.TestCase.settings = settings(
    max_examples=40, stateful_step_count=30, deadline=None
)
TestScheduler = SchedulerMachine.TestCase


def test_an_overturned_conviction_lifts_the_ban_and_the_worker_starts_anew():
    changes = []
    rep = Reputation(on_change=lambda worker, score: changes.append((worker, score)))
    worker = b"\x07" * 32
    rep.on_success(worker)
    rep.on_fraud(worker)
    assert rep.banned(worker)
    rep.on_exonerated(worker)
    assert not rep.banned(worker) and rep.score(worker) == rep.config.initial
    assert changes[-1] == (worker, rep.config.initial)  # the store hears it
    rep.on_exonerated(b"\x08" * 32)  # never banned: nothing changes
    assert rep.score(b"\x08" * 32) == rep.config.initial and len(changes) == 3


def test_a_refused_attempt_moves_on_at_once_free_of_cost_and_uncounted():
    s = scheduler()
    job = W.llm_job(created_ms=0, deadline_ms=10_000)
    jid = s.submit(job, 0)
    for w in WORKERS[:4]:
        s.on_claim(claim(job, w), 0)
    [first] = s.tick(100, 5)
    bystander = next(w.public_bytes for w in WORKERS if w.public_bytes != first.worker)
    with pytest.raises(PouwError, match="not the assigned worker"):
        s.end_attempt(jid, bystander, penalize=False)
    assert s.end_attempt(jid, first.worker, penalize=False) is JobState.COLLECTING
    assert s.reputation.score(first.worker) == s.reputation.config.initial
    [second] = s.tick(101, 5)  # the next tick, not the attempt's deadline
    assert second.worker != first.worker
    # Refusals do not use up the job's attempts: three more workers may still refuse...
    assert s.end_attempt(jid, second.worker, penalize=False) is JobState.COLLECTING
    [third] = s.tick(102, 5)
    # ...a broken result is penalized like a timeout and counts...
    assert s.end_attempt(jid, third.worker, penalize=True) is JobState.COLLECTING
    assert s.reputation.score(third.worker) == s.reputation.config.initial - 50
    [fourth] = s.tick(103, 5)
    assert len({first.worker, second.worker, third.worker, fourth.worker}) == 4
    # ...and with no untried claimant left the job fails at once.
    assert s.end_attempt(jid, fourth.worker, penalize=False) is JobState.FAILED
    with pytest.raises(PouwError, match="no open assignment"):
        s.end_attempt(jid, fourth.worker, penalize=False)


def test_fail_ends_an_open_job_but_never_a_done_one():
    s = scheduler()
    job = W.llm_job(created_ms=0, deadline_ms=10_000)
    jid = s.submit(job, 0)
    s.fail(jid)
    assert s.state(jid) is JobState.FAILED
    other = W.llm_job(created_ms=0, deadline_ms=10_000, nonce=99)
    oid = s.submit(other, 0)
    s.on_claim(claim(other, W.worker), 0)
    [a] = s.tick(100, 5)
    s.on_receipt(W.receipt(other, a), 200)
    s.fail(oid)
    assert s.state(oid) is JobState.DONE


def test_a_closed_claim_window_assigns_at_the_next_tick():
    s = scheduler()
    job = W.llm_job(created_ms=0, deadline_ms=10_000)
    jid = s.submit(job, 0)
    s.on_claim(claim(job, WORKERS[1]), 5)
    assert s.claimants(jid) == {WORKERS[1].public_bytes}
    assert s.tick(10, 5) == []  # the window is open
    s.close_window(jid)
    [a] = s.tick(11, 5)
    assert a.worker == WORKERS[1].public_bytes


def test_a_worker_gets_at_most_max_open_assignments_and_the_rest_wait():
    """A burst to one worker: the gateway counts its own open assignments, so jobs past
    ``max_open_per_worker`` wait (they are not refused as busy, nor failed) and go out as
    results come back."""
    config = SchedulerConfig(claim_window_ms=100, attempt_timeout_ms=1_000, max_open_per_worker=2)
    s = Scheduler(W.gateway, lambda k: 0, config=config)
    jobs = [W.llm_job(created_ms=0, deadline_ms=10_000, nonce=n) for n in range(5)]
    for job in jobs:
        s.submit(job, 0)
        s.on_claim(claim(job, W.worker), 0)
    first = s.tick(100, 5)
    assert len(first) == 2 and s.tick(101, 5) == []  # two open: the others wait
    waiting = [j for j in jobs if s.state(job_id(j)) is JobState.COLLECTING]
    assert len(waiting) == 3
    done = next(j for j in jobs if job_id(j) == first[0].job_id)
    s.on_receipt(W.receipt(done, first[0]), 150)  # one comes back ...
    [again] = s.tick(151, 5)  # ... and one more goes out
    assert again.worker == W.worker.public_bytes
    assert all(s.state(job_id(j)) is not JobState.FAILED for j in jobs)
