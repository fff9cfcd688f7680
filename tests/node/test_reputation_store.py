"""Worker reputation survives restarts: a real SQLite file in a data dir, reopened."""

from __future__ import annotations

import pytest

from aipg.node.apikeys import ApiKeyStore
from aipg.node.datadir import DataDir
from aipg.node.protocol.messages import WorkReport
from aipg.node.services.catalog import ModelCatalog
from aipg.node.services.gateway import GatewayService
from aipg.node.services.reputation import ReputationStore
from aipg.node.services.work import WorkTracker
from aipg.pouw import Claim, PouwError, ReputationConfig, Result, job_id
from aipg.testing.chainkit import TestChain, ident, make_work
from aipg.testing.world import identity, signed_job
from aipg.wire import sign

from .test_bounds import ChainOf, Clock, GatewayChain, Host, _ack, _nothing


def test_a_ban_and_a_score_are_read_back_by_a_new_store(tmp_path):
    path = DataDir(tmp_path).reputation_file
    store = ReputationStore(path)
    rep = store.reputation()
    cheat, good = ident(1).public_bytes, ident(2).public_bytes
    rep.on_fraud(cheat)
    rep.on_success(good)
    store.close()

    again = ReputationStore(path).reputation()
    assert path.name == "reputation.sqlite" and path.exists()
    assert again.banned(cheat)
    assert again.score(good) == ReputationConfig().initial + ReputationConfig().success
    again.on_success(cheat)
    again.on_timeout(cheat)
    assert again.banned(cheat)  # neither a success nor a timeout lifts a ban


def test_the_stored_table_keeps_its_bound_and_its_order(tmp_path):
    path = tmp_path / "reputation.sqlite"
    store = ReputationStore(path)
    rep = store.reputation(ReputationConfig(max_scores=4, max_bans=2))
    workers = [ident(10 + i).public_bytes for i in range(10)]
    for w in workers:
        rep.on_timeout(w)
    for w in workers[:3]:
        rep.on_fraud(w)
    store.close()
    rows = ReputationStore(path).load()
    assert rows == [(w, 450) for w in workers[-4:]] + [(w, 0) for w in workers[1:3]]


def _gateway(tmp_path, store: ReputationStore, tracker: WorkTracker) -> GatewayService:
    return GatewayService(
        identity("gateway"),
        Host(),
        ModelCatalog(),
        GatewayChain(),
        tracker,
        ApiKeyStore(DataDir(tmp_path)),
        _ack,
        _nothing,
        Clock(),
        reputation=store.reputation(),
    )


def test_a_worker_convicted_before_a_restart_stays_banned_after_it(tmp_path):
    c = TestChain(n_validators=4)
    for _ in range(3):
        c.next()
    path = DataDir(tmp_path).reputation_file
    cheat = ident(300)
    store = ReputationStore(path)
    tracker = WorkTracker(ChainOf(c))
    gw = _gateway(tmp_path, store, tracker)
    job, assignment, receipt, verdicts = make_work(c, cheat, valid=False)
    tracker.add_report(WorkReport(job, assignment, Result(receipt, (), (), "", b"", b"", ())))
    for v in verdicts:
        tracker.add_verdict(v)  # the committee convicts: the gateway hears the outcome
    assert gw.scheduler.reputation.banned(cheat.public_bytes)
    store.close()

    store = ReputationStore(path)  # the node restarts on the same data dir
    gw = _gateway(tmp_path, store, WorkTracker(ChainOf(c)))
    assert gw.scheduler.reputation.banned(cheat.public_bytes)
    own = signed_job(gw.identity)
    gw.scheduler.submit(own, 0)
    with pytest.raises(PouwError, match="banned"):
        gw.on_claim(sign(Claim(job_id(own), own.model_id, 0, 0), cheat))
    store.close()
