"""Every table a stranger can grow stays at its bound, and evicts what it says it does.

Each test floods one table with far more entries than its bound, built from real signed
records (aipg.testing.world, aipg.testing.chainkit) and handed to the real service, and
checks three things: the size stays at the bound, the evicted entries are the ones the
rule names, and the honest entries that must survive did. Bounds are lowered with
monkeypatch so that a flood is a few dozen records.
"""

from __future__ import annotations

import dataclasses

import pytest
import trio
from trio.testing import wait_all_tasks_blocked

from aipg.models import SamplingParams, build_demo_llm, load_model_dir, sign_announcement
from aipg.node.apikeys import ApiKeyStore
from aipg.node.datadir import DataDir
from aipg.node.protocol.messages import JobAck, WorkerStatus, WorkReport
from aipg.node.services import catalog as catalog_mod
from aipg.node.services import chain as chain_mod
from aipg.node.services import gateway as gateway_mod
from aipg.node.services import models as models_mod
from aipg.node.services import verifier as verifier_mod
from aipg.node.services import work as work_mod
from aipg.node.services import worker as worker_mod
from aipg.node.services.catalog import ModelCatalog
from aipg.node.services.chain import ChainService, _Finalizer
from aipg.node.services.gateway import GatewayService
from aipg.node.services.gateway_api import JobFailed, Overloaded
from aipg.node.services.latents import DiskLatentStore
from aipg.node.services.models import ModelService
from aipg.node.services.verifier import VerifierService
from aipg.node.services.work import WorkIntake, WorkTracker
from aipg.node.services.worker import WorkerService
from aipg.pouw import Claim, PouwError, Result, job_id, make_commit, receipt_id
from aipg.stake.chain import Chain
from aipg.stake.challenge import ChallengeAnswer
from aipg.testing.chainkit import TestChain, TrackerChain, ident, make_certificate, make_work
from aipg.testing.nodes import completion
from aipg.testing.world import identity, signed_assignment, signed_job, signed_receipt
from aipg.wire import PeerId, WireError, decode, encode, sign


@pytest.fixture(scope="module")
def llm_dir(tmp_path_factory):
    return build_demo_llm(tmp_path_factory.mktemp("bounds") / "llm")


class Clock:
    """Milliseconds that move only when a test moves them."""

    def __init__(self, now: int = 1_000_000):
        self.now = now

    def __call__(self) -> int:
        return self.now


class Host:
    """The gossip host as the services use it: publishing goes nowhere."""

    async def publish(self, topic: str, data: bytes) -> None:
        pass

    async def request(self, peer, protocol, data, timeout=None) -> bytes:
        raise AssertionError("no request is made in these tests")

    def connected_peers(self) -> list:
        return []


class ChainOf(TrackerChain):
    """What the tracker reads of a TestChain; ``final=False``: no seed block is final."""

    def __init__(self, chain: TestChain, *, final: bool = True):
        super().__init__(chain)
        self.final = final

    def validator_snapshot_at(self, height: int):
        return self.c.state.validator_snapshot_at(height) if self.final else None


class GatewayChain:
    height = 10

    def __init__(self):
        self.committed: list[bytes] = []

    def bond_of(self, key: bytes) -> int:
        return 0

    def work_paid(self, job_id: bytes) -> int | None:
        return None

    async def escrow(self, payer, job_id: bytes, fee: int) -> None:
        raise AssertionError("free-tier jobs escrow nothing")

    async def commit_job(self, sender, job_id: bytes) -> None:
        self.committed.append(job_id)

    def claim_order(self, job, claimants):
        return sorted(claimants)


def _chain(economy: bool = False) -> TestChain:
    """A test chain three blocks high; with ``economy``, its jobs' model has a
    registered cost and their gateway a bond, so certified work earns from the pool."""
    c = TestChain(n_validators=4, economy=economy)
    for i in range(3):
        c.next(transactions=c.economy_txs() if economy and i == 0 else ())
    return c


def _report(c: TestChain, nonce: int, worker=None, text: str = "") -> tuple[WorkReport, tuple]:
    job, assignment, receipt, verdicts = make_work(c, worker or ident(300), nonce=nonce)
    return WorkReport(job, assignment, Result(receipt, (), (), text, b"", b"", ())), verdicts


async def _ack(key: bytes, data: bytes, timeout: float) -> bytes:
    return encode(JobAck(True))


async def _nothing(job) -> None:
    pass


def _gateway(tmp_path, llm_dir, clock: Clock, **kw) -> GatewayService:
    catalog = ModelCatalog()
    catalog.host_model(load_model_dir(llm_dir))
    tracker = WorkTracker(ChainOf(_chain()))
    keys = ApiKeyStore(DataDir(tmp_path))
    return GatewayService(
        identity("gateway"),
        Host(),
        catalog,
        GatewayChain(),
        tracker,
        keys,
        _ack,
        _nothing,
        clock,
        **kw,
    )


def _status(worker, models, clock: Clock) -> WorkerStatus:
    return sign(WorkerStatus(tuple(models), 0, clock.now), worker)


# -- the gateway's jobs ----------------------------------------------------------------------


async def test_gateway_jobs_keep_every_waiting_client_and_the_newest_finished(
    tmp_path, llm_dir, monkeypatch
):
    monkeypatch.setattr(gateway_mod, "MAX_GATEWAY_JOBS", 16)
    monkeypatch.setattr(gateway_mod, "MAX_OPEN_JOBS", 5)
    clock = Clock()
    gw = _gateway(tmp_path, llm_dir, clock)
    worker = identity("bounds-worker")
    mid = load_model_dir(llm_dir).model_id
    request = completion("aipg-demo-llm", "the grid")
    failures: list[str] = []

    async def client() -> None:
        try:
            await gw.complete(request)
        except JobFailed as e:
            failures.append(str(e))

    async def newest_job(nursery) -> bytes:
        nursery.start_soon(client)
        await wait_all_tasks_blocked()
        return next(reversed(gw.jobs))

    async with trio.open_nursery() as nursery:
        await gw.on_worker_status(_status(worker, [mid], clock))
        waiting = [await newest_job(nursery) for _ in range(4)]
        finished = []
        for _ in range(60):  # each job claimed, assigned and reported: its client is answered
            async with trio.open_nursery() as one:
                jid = await newest_job(one)
                job = gw.jobs[jid].job
                gw.on_claim(sign(Claim(jid, job.model_id, 0, clock.now), worker))
                clock.now += 200  # past the claim window
                await gw._tick()
                assignment = gw.scheduler.assignment(jid)
                receipt = signed_receipt(worker, job, assignment)
                gw.on_report(WorkReport(job, assignment, Result(receipt, (), (), "", b"", b"", ())))
            finished.append(jid)
            assert len(gw.jobs) <= 16
        assert len(gw.jobs) == 16
        assert list(gw.jobs) == waiting + finished[-12:]  # oldest finished went first
        assert not any(gw.jobs[jid].done.is_set() for jid in waiting)
        assert gw.job_view(finished[-1].hex())["status"] == "verifying"
        assert gw.job_view(finished[0].hex()) is None  # forgotten (no tracker here knows it)
        waiting.append(await newest_job(nursery))
        with pytest.raises(Overloaded):
            await gw.complete(request)  # every open slot has a client waiting on it
        assert len(gw.jobs) == 16 and set(waiting) <= set(gw.jobs)
        nursery.cancel_scope.cancel()
    assert failures == []


async def test_gateway_workers_are_bounded_per_model_and_forget_the_expired(
    tmp_path, llm_dir, monkeypatch
):
    monkeypatch.setattr(gateway_mod, "MAX_WORKERS_PER_MODEL", 8)
    monkeypatch.setattr(gateway_mod, "MAX_WORKER_MODELS", 4)
    clock = Clock()
    gw = _gateway(tmp_path, llm_dir, clock)
    mid = load_model_dir(llm_dir).model_id
    honest = identity("honest-worker")
    strangers = [identity(f"stranger-{i}") for i in range(40)]
    for i, s in enumerate(strangers):
        await gw.on_worker_status(_status(s, [mid, bytes([i]) * 32], clock))  # and a fake model
        if i % 4 == 0:
            await gw.on_worker_status(_status(honest, [mid], clock))  # heard every 2 s
        clock.now += 10
    assert set(gw.workers) == {mid}  # models nobody announced are not recorded
    seen = gw.workers[mid]
    assert len(seen) == 8
    assert honest.public_bytes in seen  # recently heard survives the flood
    assert set(seen) - {honest.public_bytes} == {s.public_bytes for s in strangers[-7:]}

    clock.now += gateway_mod.WORKER_STATUS_TTL_MS + 1
    await gw.on_worker_status(_status(honest, [mid], clock))
    assert list(gw.workers[mid]) == [honest.public_bytes]  # the expired went
    assert gw.live_workers(mid) == 1

    for i in range(10):  # more announced models than the table holds
        manifest = dataclasses.replace(load_model_dir(llm_dir).manifest, name=f"fake-{i}")
        model = gw.catalog.announce(manifest)
        await gw.on_worker_status(_status(strangers[i], [model.id], clock))
    assert len(gw.workers) == 4


# -- the model catalog and its announcers -----------------------------------------------------


def test_announced_models_are_bounded_and_hosted_ones_survive(tmp_path, llm_dir, monkeypatch):
    monkeypatch.setattr(catalog_mod, "MAX_ANNOUNCED_MODELS", 8)
    monkeypatch.setattr(models_mod, "MAX_ANNOUNCERS_PER_MODEL", 4)
    service = ModelService(identity("node"), Host(), ModelCatalog(), tmp_path / "blobs")
    hosted = service.host_dir(llm_dir)
    base = hosted.manifest
    keep = dataclasses.replace(base, name="honest-announced")
    honest = PeerId.from_public_key(identity("publisher").public_bytes)
    fakes = []
    for i in range(50):
        stranger = PeerId.from_public_key(identity(f"announcer-{i}").public_bytes)
        fake = dataclasses.replace(base, name=f"fake-{i}")
        service.on_announcement(_announcement(fake), stranger)
        fakes.append(service.catalog.resolve(f"fake-{i}") or fake)
        service.on_announcement(_announcement(base), stranger)  # the hosted one, by all
        if i % 5 == 0:
            service.on_announcement(_announcement(keep), honest)  # re-announced, as nodes do
    catalog = service.catalog
    assert len(catalog) == 1 + 8
    assert catalog.resolve("aipg-demo-llm") is hosted and hosted.model_dir is not None
    assert catalog.resolve("honest-announced") is not None
    assert [m.manifest.name for m in catalog.all() if m.model_dir is None] == sorted(
        ["honest-announced", *(f"fake-{i}" for i in range(43, 50))]
    )
    assert len(service.announcers[hosted.id]) == 4  # the four most recent announcers
    assert set(service.announcers) == {m.id for m in catalog.all()}  # none of evicted models


def _announcement(manifest):
    return sign_announcement(manifest, identity("any-publisher"), 0)


# -- work in flight -------------------------------------------------------------------------


def test_the_tracker_evicts_finished_work_before_a_report_being_voted_on():
    c = _chain()
    tracker = WorkTracker(ChainOf(c), max_tracked=8)
    voting, _ = _report(c, nonce=0)
    undecided, _ = tracker.add_report(voting)  # its committee has not voted yet
    included = []
    for n in range(1, 40):
        report, verdicts = _report(c, nonce=n)
        tracked, _ = tracker.add_report(report)
        for v in verdicts:
            tracker.add_verdict(v)
        tracker.mark_included(tracked.outcome, height=4)
        included.append(tracked.receipt_id)
        assert len(tracker) <= 8
    assert len(tracker) == 8
    assert tracker.for_receipt(undecided.receipt_id) is undecided
    assert [rid for rid in included if tracker.for_receipt(rid)] == included[-7:]


def test_the_tracker_keeps_decided_work_no_block_has_carried_over_undecided_reports():
    c = _chain()
    tracker = WorkTracker(ChainOf(c), max_tracked=4)
    report, verdicts = _report(c, nonce=0)
    owed, _ = tracker.add_report(report)
    for v in verdicts:
        tracker.add_verdict(v)
    assert owed.certified
    flood = [tracker.add_report(_report(c, nonce=n)[0])[0].receipt_id for n in range(1, 30)]
    assert len(tracker) == 4
    certs, frauds = tracker.pending_outcomes()
    assert [c for c in certs if c.verdicts] == [owed.outcome] and frauds == []
    # and the claims of the undecided reports kept, for their audit draws (D79)
    claims = [receipt_id(c.receipt) for c in certs if not c.verdicts]
    assert claims == flood[-3:]
    assert [rid for rid in flood if tracker.for_receipt(rid)] == flood[-3:]


def test_early_verdicts_are_bounded_in_all_and_one_per_validator():
    c = _chain()
    tracker = WorkTracker(ChainOf(c), max_early=10)
    reports = [_report(c, nonce=n) for n in range(8)]
    for _, verdicts in reports:
        for v in verdicts:
            tracker.add_verdict(v)  # their reports have not arrived
            tracker.add_verdict(v)  # a duplicate counts once
    assert tracker.early_verdicts() <= 10
    last_report, last_verdicts = reports[-1]
    tracked, _ = tracker.add_report(last_report)  # the newest receipt's votes were kept
    assert tracked.certified and len(tracked.verdicts) == len(last_verdicts)
    assert tracker.early_verdicts() <= 10 - len(last_verdicts)


def test_pending_commitments_are_bounded_and_only_placeable_ones_are_offered(monkeypatch):
    """A flood of signed commitments on receipts nobody tracks (a bonded key can sign as
    many as it likes): the pending table keeps the newest up to its bound, and a
    proposal offers only commitments on tracked receipts from their committees."""
    monkeypatch.setattr(work_mod, "MAX_PENDING_COMMITS", 16)
    c = _chain()
    tracker = WorkTracker(ChainOf(c))
    report, verdicts = _report(c, nonce=1)
    tracker.add_report(report)
    member = verdicts[0]
    real = make_commit(c.keys[member.signer], member)
    tracker.add_commit(real)
    junk_key = c.keys[member.signer]
    for n in range(200):
        fake = member.replace(receipt_id=bytes([n % 256]) * 32)
        tracker.add_commit(make_commit(junk_key, sign(fake, junk_key)))
    assert len(tracker._commits) == 16
    assert tracker.pending_commits() == []  # the real one was the oldest: evicted
    tracker.add_commit(real)
    assert tracker.pending_commits() == [real]
    stranger = make_commit(
        ident(901), sign(member.replace(signer=ident(901).public_bytes), ident(901))
    )
    with pytest.raises(PouwError, match="not a candidate"):
        tracker.add_commit(stranger)


def test_pending_challenge_answers_are_bounded(monkeypatch):
    c = _chain()
    tracker = WorkTracker(ChainOf(c))
    worker = ident(300)
    for n in range(3 * work_mod.MAX_PENDING_ANSWERS):
        answer = ChallengeAnswer(
            bytes([n]) * 32, ident(1).public_bytes, (1,), (1,), (bytes(32),), (bytes(4),)
        )
        tracker.add_answer(sign(answer, worker))
    assert len(tracker.pending_answers()) == work_mod.MAX_PENDING_ANSWERS
    assert (
        tracker.pending_answers()[-1].receipt_id
        == bytes([3 * work_mod.MAX_PENDING_ANSWERS - 1]) * 32
    )


async def test_waiting_reports_are_bounded_by_count_and_by_bytes(monkeypatch):
    monkeypatch.setattr(work_mod, "MAX_WAITING_REPORTS", 8)
    c = _chain()
    intake = WorkIntake(WorkTracker(ChainOf(c, final=False)), None, trio.sleep_forever)
    reports = [_report(c, nonce=n)[0] for n in range(30)]
    for r in reports:
        await intake.on_report(r)
        await intake.on_report(r)  # by gossip and by the job protocol: waits once
    assert len(intake.waiting) == 8
    assert list(intake.waiting) == [receipt_id(r.result.receipt) for r in reports[-8:]]

    big = [_report(c, nonce=100 + n, text="x" * 100_000)[0] for n in range(10)]
    size = len(encode(big[0]))
    monkeypatch.setattr(work_mod, "MAX_WAITING_BYTES", 3 * size + size // 2)
    for r in big:
        await intake.on_report(r)
        assert intake.waiting_bytes <= work_mod.MAX_WAITING_BYTES
    assert list(intake.waiting) == [receipt_id(r.result.receipt) for r in big[-3:]]
    assert intake.waiting_bytes == sum(len(encode(r)) for r in big[-3:])


# -- the worker and the verifier ----------------------------------------------------------


async def test_a_queued_assignment_survives_a_flood_of_jobs(llm_dir, monkeypatch, tmp_path):
    monkeypatch.setattr(worker_mod, "MAX_KNOWN_JOBS", 8)
    catalog = ModelCatalog()
    model = catalog.host_model(load_model_dir(llm_dir))
    me, gateway = identity("flood-worker"), identity("flood-gateway")
    sent, reports = trio.open_memory_channel(100)

    async def send_job(key: bytes, data: bytes, timeout: float) -> bytes:
        sent.send_nowait(data)
        return encode(JobAck(True))

    async def on_status(status) -> None:
        pass

    latents = DiskLatentStore(tmp_path / "latents")
    worker = WorkerService(me, Host(), catalog, latents, Clock(), send_job, on_status)
    job = signed_job(gateway, model_id=model.id, llm=SamplingParams(max_tokens=2), nonce=1)
    await worker.on_job(job)
    assignment = signed_assignment(gateway, job, me, height=3)
    assert (await worker.on_assignment(assignment)).ok
    for n in range(2, 40):  # strangers' jobs for the same model push it out of the table
        await worker.on_job(signed_job(identity(f"gw-{n}"), model_id=model.id, nonce=n))
    assert len(worker._jobs) == 8 and job_id(job) not in worker._jobs
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.run)
        with trio.fail_after(60):
            async for data in reports:
                try:
                    report = decode(data, WorkReport)
                    break
                except WireError:
                    continue  # one of its claims
        nursery.cancel_scope.cancel()
    assert report.assignment == assignment and report.result.receipt.job_id == job_id(job)


async def test_the_verification_queue_and_its_memory_are_bounded(monkeypatch):
    monkeypatch.setattr(verifier_mod, "VERIFY_QUEUE", 4)
    monkeypatch.setattr(verifier_mod, "MAX_CONSIDERED", 8)
    c = _chain()
    tracker = WorkTracker(ChainOf(c))
    me = next(iter(c.keys.values()))
    verifier = VerifierService(me, Host(), ModelCatalog(), tracker)
    seated = []
    for n in range(60):
        tracked, _ = tracker.add_report(_report(c, nonce=n)[0])
        if me.public_bytes in tracked.seated():
            verifier.consider(tracked)
            verifier.consider(tracked)  # once per receipt
            seated.append(tracked)
    assert len(seated) > 12
    assert verifier._send.statistics().current_buffer_used == 4
    assert verifier.outcomes["skipped"] == len(seated) - 4
    assert len(verifier._considered) == 8


# -- the chain service's job rewards -------------------------------------------------------


async def test_job_rewards_keep_the_most_recently_paid_jobs(tmp_path, monkeypatch):
    monkeypatch.setattr(chain_mod, "MAX_JOB_REWARDS", 9)
    c = _chain(economy=True)
    chain = Chain.open(tmp_path / "chain.sqlite", c.genesis)
    for block, commit in zip(c.blocks, c.commits, strict=True):
        chain.finalize(block, commit)  # the store catches up with the test chain
    service = ChainService(chain, Host(), None, None, WorkTracker(ChainOf(c)), Clock())
    paid = []
    for n in range(8):  # eight blocks, three certified jobs each, all paid by the ledger
        certs = [make_certificate(c, ident(300 + i), nonce=10 * n + i) for i in range(3)]
        c.commit(c.build(certificates=certs))
        for block, commit in zip(c.blocks[chain.height :], c.commits[chain.height :], strict=True):
            _Finalizer(service).finalize(block, commit)  # the jobs' commitments, then this
        paid += [job_id(cert.job) for cert in certs]
    assert len(service.job_rewards) == 9
    assert set(service.job_rewards) == set(paid[-9:])  # the last three blocks' jobs
    assert all(service.work_paid(j) == c.state.paid[j] > 0 for j in paid[-3:])  # the ledger's
    assert service.work_paid(paid[0]) is None  # the oldest paid went first
    chain.close()
