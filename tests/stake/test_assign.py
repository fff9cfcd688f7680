"""Registered workers, measured capacity, the drawn worker, and load that spreads (D58)."""

from __future__ import annotations

import collections

import pytest

from aipg.pouw import COMMITTEE_DELAY, Certificate, Claim, job_id
from aipg.pouw.schedule import Scheduler, SchedulerConfig
from aipg.stake.assign import (
    claim_order,
    decayed,
    draw_weight,
    drawn_assignment_ok,
    drawn_workers,
    worker_weights_at,
)
from aipg.stake.models import certified_work
from aipg.stake.tx import TxKind, make_tx
from aipg.stake.types import LedgerError
from aipg.testing.chainkit import AIPG, CHAIN, GATEWAY, TestChain, ident, make_job, work_on
from aipg.wire import sign

MODEL = b"m" * 32  # make_job's model
DECLARED = 1_000


def _tx(c: TestChain, who, kind, **kw):
    return make_tx(who, CHAIN, kind, c.state.account(who.address.raw).nonce, **kw)


def _workers(c: TestChain, n: int, first: int = 300):
    """``n`` workers funded, bonded and registered for MODEL, their registrations in the
    snapshot of the next epoch."""
    ws = [ident(first + i) for i in range(n)]
    fund = [
        make_tx(
            c.users[0],
            CHAIN,
            TxKind.TRANSFER,
            c.state.account(c.users[0].address.raw).nonce + i,
            amount=1_000 * AIPG,
            recipient=w.address,
        )
        for i, w in enumerate(ws)
    ]
    c.next(transactions=fund)
    c.next(transactions=[_tx(c, w, TxKind.BOND, amount=500 * AIPG) for w in ws])
    c.next(
        transactions=[_tx(c, w, TxKind.REGISTER_WORKER, job_id=MODEL, amount=DECLARED) for w in ws]
    )
    while c.state.height % c.state.params.epoch_length:
        c.next()
    return ws


def _commit(c: TestChain, jobs) -> None:
    n = c.state.account(GATEWAY.address.raw).nonce
    c.next(
        transactions=[
            make_tx(GATEWAY, CHAIN, TxKind.COMMIT, n + i, job_id=job_id(j))
            for i, j in enumerate(jobs)
        ]
    )
    for _ in range(COMMITTEE_DELAY):
        c.next()


def test_registration_needs_the_bond_and_can_be_withdrawn():
    c = TestChain()
    w = ident(300)
    c.next(
        transactions=[_tx(c, c.users[0], TxKind.TRANSFER, amount=1_000 * AIPG, recipient=w.address)]
    )
    with pytest.raises(LedgerError, match="bond of at least"):
        c.next(transactions=[_tx(c, w, TxKind.REGISTER_WORKER, job_id=MODEL, amount=DECLARED)])
    c.next(transactions=[_tx(c, w, TxKind.BOND, amount=100 * AIPG)])
    c.next(transactions=[_tx(c, w, TxKind.REGISTER_WORKER, job_id=MODEL, amount=DECLARED)])
    assert c.state.workers[w.public_bytes + MODEL].declared == DECLARED
    c.next(transactions=[_tx(c, w, TxKind.REGISTER_WORKER, job_id=MODEL, amount=0)])
    assert w.public_bytes + MODEL not in c.state.workers
    with pytest.raises(LedgerError, match="not registered"):
        c.next(transactions=[_tx(c, w, TxKind.REGISTER_WORKER, job_id=MODEL, amount=0)])


def test_weight_believes_the_declaration_while_it_is_honoured():
    # (declared, delivered, missed, the best rate among the model's workers): D97
    assert draw_weight(1_000, 0, 0, 0) == 1  # nothing delivered anywhere yet: all alike
    assert draw_weight(1_000, 0, 0, 50) == 400  # a newcomer: 8x the best worker's rate
    assert draw_weight(10**12, 0, 0, 50) == 400  # however much it declares
    assert draw_weight(1_000, 5, 0, 200) == 1_000  # 8x the best rate covers it
    assert draw_weight(1_000, 3_000, 1_000, 200) == 750  # it missed a quarter
    assert draw_weight(10**12, 3_000, 1_000, 200) == 1_200  # a liar: 8x the best, 3/4
    assert draw_weight(1_000, 0, 1_000, 200) == 1  # never did what it was drawn for
    assert draw_weight(0, 10, 0, 10) == 0


def test_certified_work_raises_the_measured_capacity_and_it_decays():
    c = TestChain(economy=True)
    c.next(transactions=c.economy_txs())  # the model's registered cost (D60)
    [w] = _workers(c, 1)
    [job] = [make_job(c, nonce=1)]
    _commit(c, [job])
    cert = Certificate(*work_on(c.state, c.keys, job, w))
    s = c.next(certificates=[cert])
    # the units the registered cost certifies, not the receipt's own figure
    units = certified_work(s, job, cert.receipt)
    assert units > 0
    assert s.capacity[w.public_bytes].recent == units  # the delivered sum (D97)
    for _ in range(c.state.params.epoch_length):
        c.next()
    row = decayed(s.capacity[w.public_bytes], c.state.height)
    assert row.recent == units - c.state.params.epoch_length  # (a small sum: 1 a block)
    got = worker_weights_at(c.state, c.state.height + 1, MODEL)[w.public_bytes]
    # one small job: the best rate (its own) believes 8x it
    assert got == draw_weight(DECLARED, row.recent, row.missed, row.recent >> 6)


def test_the_draw_excludes_the_gateway_and_client_and_the_predicate_follows_it():
    c = TestChain(n_users=4)
    ws = _workers(c, 4)
    client = c.users[1]
    jobs = [make_job(c, nonce=n, client=client) for n in range(20)]
    assert drawn_workers(c.state, jobs[0]) is None  # not committed: no draw yet
    _commit(c, jobs)
    keys = {w.public_bytes for w in ws}
    for job in jobs:
        ranked = drawn_workers(c.state, job)
        assert ranked and set(ranked) <= keys and len(set(ranked)) == len(ranked)
        drawn = next(w for w in ws if w.public_bytes == ranked[0])
        other = next(w for w in ws if w.public_bytes != ranked[0])
        assert drawn_assignment_ok(c.state, Certificate(*work_on(c.state, c.keys, job, drawn)))
        assert not drawn_assignment_ok(c.state, Certificate(*work_on(c.state, c.keys, job, other)))
    # the gateway's own key, even registered, is never drawn for its own jobs
    order = claim_order(c.state, jobs[0], [GATEWAY.public_bytes, *keys])
    assert order[-1] == GATEWAY.public_bytes and order[0] == drawn_workers(c.state, jobs[0])[0]


def test_ground_nonces_do_not_draw_the_adversarys_worker_more_often():
    """The gateway also runs one of 5 equal workers and grinds 1,000 nonces against the
    beacon it knows; once committed, its worker is drawn for about a fifth of them."""
    c = TestChain()
    ws = _workers(c, 5)
    mine = ws[0].public_bytes
    known = c.state  # the draw as it would be if the freshest beacon seeded it

    def would_draw(job):
        from aipg.pouw import sample_committee
        from aipg.stake.assign import assignment_seed

        weights = worker_weights_at(known, known.height + 1, MODEL)
        return sample_committee(weights, assignment_seed(known.beacon, job_id(job)), 1)[0]

    ground = [j for j in (make_job(c, nonce=n) for n in range(1_000)) if would_draw(j) == mine]
    ground = ground[:60]
    assert len(ground) == 60
    _commit(c, ground)
    hits = sum(drawn_workers(c.state, j)[0] == mine for j in ground)
    assert hits < 60 * 0.2 + 4 * (60 * 0.2 * 0.8) ** 0.5  # fair share 12, not 60


def test_load_spreads_over_equal_workers_with_the_real_scheduler():
    """A devnet-like run: 5 equal registered workers claim every one of 300 free jobs;
    the real Scheduler assigns by the chain's draw. The busiest does at most 1.5 times
    the average (by queue and key it was one node with nearly all of them)."""
    c = TestChain()
    ws = _workers(c, 5)
    # No job finishes here, so the per-worker cap on open assignments is lifted: the
    # test is of the draw's spread (tests/pouw/test_schedule.py tests the cap).
    config = SchedulerConfig(
        claim_window_ms=10, attempt_timeout_ms=60_000, draw_wait_ms=10**9, max_open_per_worker=300
    )
    sched = Scheduler(
        GATEWAY, lambda k: 0, config=config, order=lambda job, keys: claim_order(c.state, job, keys)
    )
    load = collections.Counter()
    now = 0
    for batch in range(10):
        jobs = [make_job(c, nonce=1_000 * batch + n).replace(deadline_ms=10**12) for n in range(30)]
        jobs = [sign(j, GATEWAY) for j in jobs]
        for j in jobs:
            sched.submit(j, now)
            for i, w in enumerate(ws):  # the first worker always claims first, reports 0
                sched.on_claim(
                    sign(Claim(job_id=job_id(j), model_id=j.model_id, queue=i, sent_ms=0), w),
                    now,
                )
        assert sched.tick(now + 20, c.state.height) == []  # the draw is not known yet
        _commit(c, jobs)
        now += 100
        for a in sched.tick(now, c.state.height):
            load[a.worker] += 1
    assert sum(load.values()) == 300
    average = 300 / len(ws)
    assert max(load.values()) <= 1.5 * average, load
