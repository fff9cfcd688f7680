"""What an idle network sends (D88): a model's announcements do not grow with the number
of its hosts, and workers' statuses slow down as there are more of them."""

from __future__ import annotations

import pytest
import trio

from aipg.models import build_demo_llm, load_model_dir, sign_announcement
from aipg.node.protocol.messages import (
    STATUS_INTERVAL_MAX_S,
    STATUS_INTERVAL_S,
    WorkerStatus,
    status_interval_s,
    status_ttl_ms,
)
from aipg.node.services import gateway as gateway_mod
from aipg.node.services import models as models_mod
from aipg.node.services.catalog import ModelCatalog
from aipg.node.services.models import ANNOUNCE_ENOUGH, ModelService
from aipg.testing.nodes import completion
from aipg.testing.world import identity
from aipg.wire import PeerId, sign

from .test_bounds import Clock, _gateway, _status


@pytest.fixture(scope="module")
def llm_dir(tmp_path_factory):
    return build_demo_llm(tmp_path_factory.mktemp("idle") / "llm")


class RecordingHost:
    def __init__(self):
        self.sent: list[tuple[str, bytes]] = []

    async def publish(self, topic: str, data: bytes) -> None:
        self.sent.append((topic, data))

    async def request(self, peer, protocol, data, timeout=None) -> bytes:
        raise AssertionError("no request is made in these tests")

    def connected_peers(self) -> list:
        return []


async def _next_turn(service: ModelService, host: RecordingHost) -> bool:
    """Wait out one announcement turn (virtual time); whether ours went out."""
    sent, skipped = len(host.sent), service.announcements_skipped
    with trio.fail_after(2 * models_mod.ANNOUNCE_INTERVAL_S):
        while len(host.sent) == sent and service.announcements_skipped == skipped:
            await trio.sleep(0.5)
    return len(host.sent) > sent


async def test_a_model_enough_others_announced_is_not_announced_again(
    tmp_path, llm_dir, autojump_clock
):
    host = RecordingHost()
    service = ModelService(identity("node"), host, ModelCatalog(), tmp_path / "blobs")
    model = service.host_dir(llm_dir)
    others = [identity(f"host-{i}") for i in range(ANNOUNCE_ENOUGH)]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(service._announce_forever)
        assert await _next_turn(service, host)  # nobody else: ours goes out
        for who in others[:-1]:  # fewer than enough others: still ours
            ann = sign_announcement(model.manifest, who, 1)
            service.on_announcement(ann, PeerId.from_public_key(who.public_bytes))
        assert await _next_turn(service, host)
        for who in others:  # enough others this turn: ours is skipped
            ann = sign_announcement(model.manifest, who, 2)
            service.on_announcement(ann, PeerId.from_public_key(who.public_bytes))
        assert not await _next_turn(service, host)
        assert service.announcements_skipped == 1
        assert await _next_turn(service, host)  # heard nobody since: ours again
        nursery.cancel_scope.cancel()


def test_status_intervals_scale_with_the_workers_and_are_capped():
    assert status_interval_s(0) == status_interval_s(20) == STATUS_INTERVAL_S
    assert status_interval_s(100) == 50.0  # all of them together: two a second (D103)
    assert status_interval_s(10**6) == STATUS_INTERVAL_MAX_S
    for n in (0, 300, 5000, 10**6):
        assert status_ttl_ms(n) == 3500 * status_interval_s(n)


async def test_a_gateway_keeps_workers_longer_as_it_hears_more(tmp_path, llm_dir):
    clock = Clock()
    gw = _gateway(tmp_path, llm_dir, clock)
    mid = next(iter(gw.catalog.hosted())).id
    workers = [identity(f"worker-{i}") for i in range(200)]  # under the table's 256
    for w in workers:
        await gw.on_worker_status(sign(WorkerStatus((mid,), 0, clock.now), w))
    assert gw.workers_heard() == 200
    assert gw.status_ttl_ms == status_ttl_ms(200) == 350_000
    clock.now += 50_000  # past the small network's 35 s, within 200 workers' 350 s
    await gw.on_worker_status(sign(WorkerStatus((mid,), 0, clock.now), workers[0]))
    assert gw.live_workers(mid) == 200
    clock.now += 310_000  # and past it: only the one just heard is live
    assert gw.live_workers(mid) == 1


async def test_an_idle_gateway_does_not_tick_until_a_job_comes(tmp_path, llm_dir, autojump_clock):
    clock = Clock()
    gw = _gateway(tmp_path, llm_dir, clock)
    request = completion("aipg-demo-llm", "the grid")
    mid = load_model_dir(llm_dir).model_id
    outcome: list[str] = []

    async def client() -> None:
        try:
            await gw.complete(request)
            outcome.append("answered")
        except Exception as e:  # no worker: the job fails at its deadline
            outcome.append(type(e).__name__)

    async with trio.open_nursery() as nursery:
        await nursery.start(gw.run)
        await gw.on_worker_status(_status(identity("idle-worker"), [mid], clock))
        await trio.sleep(60)  # a virtual minute with no job: the loop sleeps
        assert gw.ticks == 0
        nursery.start_soon(client)
        with trio.fail_after(5):
            while gw.ticks < 3 and not outcome:  # an open job: a tick every TICK_S
                await trio.sleep(gateway_mod.TICK_S)
        assert not outcome, outcome
        clock.now += 10 * 60_000  # past the job's deadline: the next tick fails it
        with trio.fail_after(5):
            while not outcome:
                await trio.sleep(gateway_mod.TICK_S)
        assert outcome == ["JobFailed"]
        ticks = gw.ticks
        await trio.sleep(60)  # nothing open again
        assert gw.ticks == ticks
        nursery.cancel_scope.cancel()
