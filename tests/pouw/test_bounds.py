"""The pouw tables are bounded: the scheduler's jobs and claims, reputation, latents,
and the one eviction rule they share (fuzzed with hypothesis)."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from aipg.pouw import Claim, LatentRequest, PouwError, job_id
from aipg.pouw.bounds import evict_over
from aipg.pouw.execute import LatentStore
from aipg.pouw.schedule import JobState, Reputation, ReputationConfig, Scheduler, SchedulerConfig
from aipg.testing.world import World, identity
from aipg.wire import sign

W = World()
CONFIG = SchedulerConfig(claim_window_ms=100, attempt_timeout_ms=1_000, max_jobs=8, max_claims=4)


def _claim(job, worker):
    return sign(Claim(job_id=job_id(job), model_id=job.model_id, queue=0, sent_ms=0), worker)


@given(
    st.lists(st.booleans(), max_size=40),
    st.integers(min_value=0, max_value=40),
)
def test_evict_over_takes_the_oldest_the_rule_accepts_and_nothing_else(flags, bound):
    table = OrderedDict(enumerate(flags))
    evicted = evict_over(table, bound, lambda finished: finished)
    finished = [k for k, f in enumerate(flags) if f]
    assert [k for k, _ in evicted] == finished[: len(evicted)]  # oldest first
    expected = len(flags) if len(flags) <= bound else max(bound, len(flags) - len(finished))
    assert len(table) == expected
    assert all(k in table for k, f in enumerate(flags) if not f)  # never the open ones


def test_the_scheduler_forgets_finished_jobs_oldest_first_and_never_an_open_one():
    s = Scheduler(W.gateway, lambda k: 0, config=CONFIG)
    worker = W.worker
    open_jobs = [s.submit(W.llm_job(seed=i, created_ms=0, deadline_ms=10**9), 0) for i in range(3)]
    done = []
    for i in range(3, 40):
        job = W.llm_job(seed=i, created_ms=0, deadline_ms=10**9)
        jid = s.submit(job, 0)
        s.on_claim(_claim(job, worker), 0)
        [a] = s.tick(100 * i + 100, 10)
        s.on_receipt(W.receipt(job, a), 100 * i + 100)
        done.append(jid)
        assert len(s) <= 8
    assert len(s) == 8
    assert [s.state(j) for j in open_jobs] == [JobState.COLLECTING] * 3
    assert [j for j in done if _known(s, j)] == done[-5:]


def test_a_scheduler_full_of_open_jobs_refuses_more():
    s = Scheduler(W.gateway, lambda k: 0, config=CONFIG)
    for i in range(8):
        s.submit(W.llm_job(seed=i), 0)
    with pytest.raises(PouwError, match="open"):
        s.submit(W.llm_job(seed=99), 0)
    assert len(s) == 8


def test_a_job_keeps_a_bounded_number_of_claims():
    s = Scheduler(W.gateway, lambda k: 0, config=CONFIG)
    job = W.llm_job(created_ms=0, deadline_ms=10_000)
    s.submit(job, 0)
    first = [identity(f"claimant-{i}") for i in range(4)]
    for w in first:
        s.on_claim(_claim(job, w), 0)
    s.on_claim(_claim(job, first[0]), 0)  # a claimant may claim again
    with pytest.raises(PouwError, match="enough claims"):
        s.on_claim(_claim(job, identity("one-too-many")), 0)
    [a] = s.tick(100, 10)
    assert a.worker in {w.public_bytes for w in first}


def test_reputation_forgets_the_least_recently_seen_and_keeps_bans():
    changes = []
    rep = Reputation(
        ReputationConfig(max_scores=4, max_bans=3), on_change=lambda w, s: changes.append((w, s))
    )
    cheats = [identity(f"cheat-{i}").public_bytes for i in range(3)]
    for c in cheats:
        rep.on_fraud(c)
    regular = identity("regular").public_bytes
    newcomers = [identity(f"newcomer-{i}").public_bytes for i in range(40)]
    for i, n in enumerate(newcomers):
        rep.on_timeout(n)
        if i % 3 == 0:
            rep.on_success(regular)  # seen often: never the least recently seen
    assert len(rep) == 4 + 3
    assert all(rep.banned(c) for c in cheats)  # newcomers never push a ban out
    assert rep.score(regular) > ReputationConfig().initial
    assert [n for n in newcomers if rep.score(n) != ReputationConfig().initial] == newcomers[-3:]
    assert (newcomers[0], None) in changes  # the store hears what was forgotten
    rep.on_fraud(identity("fourth-cheat").public_bytes)
    assert not rep.banned(cheats[0]) and rep.banned(cheats[1])  # only more bans push one out


def test_reputation_loads_its_stored_table_within_the_bounds():
    known = [(identity(f"w{i}").public_bytes, 0 if i % 2 else 600) for i in range(10)]
    forgotten = []
    rep = Reputation(
        ReputationConfig(max_scores=2, max_bans=2),
        known=known,
        on_change=lambda w, s: forgotten.append(w),
    )
    assert len(rep) == 4
    assert [w for w, _ in known if rep.banned(w)] == [known[7][0], known[9][0]]
    assert [rep.score(known[i][0]) for i in (6, 8)] == [600, 600]
    assert len(forgotten) == 6


def test_the_latent_store_keeps_the_newest_receipts():
    store = LatentStore(capacity=4)
    latents = [np.zeros((1, 4, 2, 2), np.float32)] * 3
    for i in range(20):
        store.put(bytes([i]) * 32, latents)
    assert len(store) == 4
    store.serve(LatentRequest(receipt_id=bytes([19]) * 32, steps=(0, 2)))
    with pytest.raises(PouwError, match="no latents"):
        store.serve(LatentRequest(receipt_id=bytes([15]) * 32, steps=(0,)))


def _known(s: Scheduler, jid: bytes) -> bool:
    try:
        s.state(jid)
        return True
    except PouwError:
        return False
