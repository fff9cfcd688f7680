"""Load that spreads over many blocks (D97): the draw's weights follow the work the chain
certified to each worker, and that feedback must not make the worker drawn early the
busiest for good."""

from __future__ import annotations

import collections
import random

from aipg.pouw import COMMITTEE_DELAY, Certificate, job_id
from aipg.stake.assign import drawn_workers, worker_weights_at
from aipg.stake.models import certified_work
from aipg.stake.tx import TxKind, make_tx
from aipg.testing.chainkit import (
    CHAIN,
    GATEWAY,
    TEST_MODEL,
    TestChain,
    ident,
    make_job,
    register_workers,
    work_on,
)

# Comparable to the jobs (a devnet node declares 10^6 units a block against a 3.4M-unit
# image): a quarter of it is below one big job.
DECLARED = 4_000
BIG = 1_900  # output tokens of a big job (units: prompt + output, TEST_COST)


def _register(c: TestChain, n: int, declared: int = DECLARED):
    ws = [ident(300 + i) for i in range(n)]
    register_workers(c, ws, declared)
    return ws


def _run(blocks: int, jobs_per_block: int, seed: int, serve=None):
    """Equal workers, each drawn job done by its drawn worker (``serve(worker, block)``
    False: it is not, and the next in the draw's order does it). Every block commits a batch and
    certifies the batch committed ``COMMITTEE_DELAY + 1`` blocks before it. Returns
    (jobs by worker, units by worker, the chain, the workers)."""
    rng = random.Random(seed)
    c = TestChain(economy=True)
    c.next(transactions=c.economy_txs())
    ws = _register(c, 5)
    by_key = {w.public_bytes: w for w in ws}
    jobs = collections.Counter()
    units = collections.Counter()
    batches: collections.deque = collections.deque()
    nonce = 0
    for b in range(blocks):
        batch = []
        for _ in range(jobs_per_block):
            nonce += 1
            big = rng.random() < 0.08
            batch.append((make_job(c, nonce=nonce, max_tokens=BIG if big else 16), big))
        certs = []
        if len(batches) > COMMITTEE_DELAY:
            for job, big in batches.popleft():
                ranked = drawn_workers(c.state, job)
                assert ranked, "every job is drawn"
                # the gateway's fallback: the next in the draw's order (Scheduler)
                doer = next(k for k in ranked if serve is None or serve(k, b))
                out = BIG if big else 4 + job.nonce % 5
                w = by_key[doer]
                certs.append(Certificate(*work_on(c.state, c.keys, job, w, output_tokens=out)))
                jobs[doer] += 1
                units[doer] += out
        gn = c.state.account(GATEWAY.address.raw).nonce
        commits = [
            make_tx(GATEWAY, CHAIN, TxKind.COMMIT, gn + i, job_id=job_id(j))
            for i, (j, _) in enumerate(batch)
        ]
        c.next(transactions=commits, certificates=certs)
        batches.append(batch)
    return jobs, units, c, ws


def test_equal_workers_share_the_load_over_many_blocks():
    """300 blocks at a demand far below the workers' capacity, 8 % of the jobs a hundred
    times the others: the busiest worker did at most 1.5x the average number of jobs
    (by the old weight, the one whose big job was drawn first weighed 3.8x the others
    until it decayed, and drew the next big jobs too)."""
    for seed in (1, 2):
        jobs, _, c, ws = _run(300, 3, seed)
        total = sum(jobs.values())
        assert total > 850
        average = total / len(ws)
        assert max(jobs.values()) <= 1.5 * average, (seed, jobs)
        weights = worker_weights_at(c.state, c.state.height + 1, TEST_MODEL)
        assert max(weights.values()) <= 1.5 * min(weights.values()), (seed, weights)


def test_a_worker_that_stops_delivering_loses_its_weight():
    """Measured capacity still counts: a worker that stops doing the jobs it is drawn
    for (offline, or a registration that never serves) sees them done by the next in
    the draw's order, its misses count against it, and within a hundred blocks it weighs
    less than half what the others do (and falls on: its delivered sum decays); before that it weighed as they did."""
    lazy = ident(300).public_bytes
    early = _run(60, 3, 3)[2].state
    before = worker_weights_at(early, early.height + 1, TEST_MODEL)
    assert before[lazy] * 1.5 >= max(before.values())
    _, _, c, _ = _run(160, 3, 3, serve=lambda w, b: not (w == lazy and b >= 60))
    weights = worker_weights_at(c.state, c.state.height + 1, TEST_MODEL)
    others = [v for k, v in weights.items() if k != lazy]
    assert weights[lazy] * 2 < min(others), weights
    assert c.state.capacity[lazy].missed > 0


def test_a_free_job_done_past_the_draw_is_the_drawn_workers_miss():
    """A free job done by the draw's runner-up is the drawn worker's miss, by the job's
    registered units; the doer's capacity does not grow (D64); one done by a worker
    drawn further down is nobody's miss."""
    c = TestChain(economy=True)
    c.next(transactions=c.economy_txs())
    ws = _register(c, 3)
    by_key = {w.public_bytes: w for w in ws}
    free = make_job(c, nonce=1)
    gn = c.state.account(GATEWAY.address.raw).nonce
    c.next(transactions=[make_tx(GATEWAY, CHAIN, TxKind.COMMIT, gn, job_id=job_id(free))])
    for _ in range(COMMITTEE_DELAY):
        c.next()
    drawn, other = drawn_workers(c.state, free)[:2]
    cert = Certificate(*work_on(c.state, c.keys, free, by_key[other], output_tokens=6))
    c.next(certificates=[cert])
    assert drawn not in c.state.capacity or c.state.capacity[drawn].recent == 0
    assert c.state.capacity[drawn].missed == certified_work(c.state, free, cert.receipt)
    assert other not in c.state.capacity  # done past the draw: no capacity for the doer
    # a worker drawn third doing a job is the gateway's choice, not its fallback: no miss
    free2 = make_job(c, nonce=2)
    c.next(transactions=[make_tx(GATEWAY, CHAIN, TxKind.COMMIT, gn + 1, job_id=job_id(free2))])
    for _ in range(COMMITTEE_DELAY):
        c.next()
    first, _, third = drawn_workers(c.state, free2)[:3]
    before = c.state.capacity.get(first)
    cert = Certificate(*work_on(c.state, c.keys, free2, by_key[third], output_tokens=6))
    c.next(certificates=[cert])
    assert c.state.capacity.get(first) == before
