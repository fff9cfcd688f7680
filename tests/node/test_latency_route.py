"""The paid tier's latency route (D84): whole nodes in one process (memory transport).

A paid job is assigned as soon as its claim comes, before the beacon draw its commitment
waits for exists (and before the next block), and it earns its fee only unless its
worker happens to be the drawn one; with ``paid_route = "drawn"`` it waits for the draw
and goes to the drawn worker. A paid request the account cannot cover is still refused
(402) before anything is published or run.
"""

from __future__ import annotations

import pytest

from aipg.models import build_demo_llm, load_model_dir
from aipg.node.services.gateway import PAID_FEE_PER_TOKEN
from aipg.node.services.gateway_api import InsufficientFunds
from aipg.pouw import Assignment
from aipg.stake.assign import drawn_workers, worker_weights_at
from aipg.stake.useful_work import fee_charged
from aipg.testing.nodes import NodeSpec, add_paid_account, completion, open_node_world
from aipg.wire import UNITS_PER_AIPG, Identity, decode

pytestmark = pytest.mark.slow

MAX_TOKENS = 8


@pytest.fixture(scope="module")
def llm_dir(tmp_path_factory):
    return build_demo_llm(tmp_path_factory.mktemp("route") / "llm")


def _record_assignments(gateway):
    """Wrap the gateway's send_job: each assignment with the chain height it was sent at
    and whether the chain's draw of its job was known then."""
    sent: list[tuple[Assignment, int, bool]] = []
    send = gateway.gateway.send_job

    async def recording(worker: bytes, data: bytes, timeout: float) -> bytes:
        a = decode(data, Assignment)
        entry = gateway.gateway.jobs[a.job_id]
        known = gateway.chain.claim_order(entry.job, [a.worker]) is not None
        sent.append((a, gateway.chain.height, known))
        return await send(worker, data, timeout)

    gateway.gateway.send_job = recording
    return sent


async def test_a_paid_job_is_assigned_before_its_draw_and_earns_its_fee(tmp_path, llm_dir):
    model = load_model_dir(llm_dir)
    client = Identity.from_seed(b"\x44" * 32)
    specs = [NodeSpec(worker=False), NodeSpec(), NodeSpec(), NodeSpec(worker=False)]
    funds = UNITS_PER_AIPG  # 100 tokens of fee
    async with open_node_world(tmp_path, specs, [llm_dir], accounts=[(client, funds)]) as world:
        gateway = world.nodes[0]
        account = add_paid_account(gateway, client)
        await world.wait_for_worker(gateway, model.model_id)

        # both workers registered, their registration in an epoch snapshot: a draw exists
        def registered() -> bool:
            s = gateway.chain.state
            return len(worker_weights_at(s, s.height, model.model_id) or {}) == 2

        await world.until(
            gateway, lambda: gateway.gateway.live_workers(model.model_id) == 2 and registered(), 60
        )
        sent = _record_assignments(gateway)
        height = gateway.chain.height
        fast = await gateway.gateway.complete(
            completion(model.manifest.name, "fast", max_tokens=MAX_TOKENS, account=account)
        )
        [(a, at_height, known)] = sent
        assert a.job_id.hex() == fast.job_id
        assert not known  # the draw (two blocks after the escrow's block) did not exist
        assert at_height <= height + 1  # assigned within the block it was asked in

        gateway.gateway.paid_route = "drawn"
        drawn = await gateway.gateway.complete(
            completion(model.manifest.name, "drawn", max_tokens=MAX_TOKENS, account=account)
        )
        (b, _, b_known) = sent[-1]
        assert b.job_id.hex() == drawn.job_id and b_known
        state = gateway.chain.state
        job_b = gateway.gateway.jobs[b.job_id].job
        assert b.worker == drawn_workers(state, job_b)[0]  # the beacon's pick, not ours

        for r, assignment in ((fast, a), (drawn, b)):
            tracked = await world.wait_for_block_with(gateway, bytes.fromhex(r.job_id), 120)
            assert tracked.certified
            job = tracked.report.job
            charged = fee_charged(job, tracked.report.result.receipt)
            assert charged == PAID_FEE_PER_TOKEN * r.completion_tokens
            paid = gateway.chain.work_paid(job.id)
            state = gateway.chain.state
            ranked = drawn_workers(state, job)
            if ranked and ranked[0] != assignment.worker:
                assert paid == charged  # routed past the draw: its fee, no pool share
            else:
                assert paid >= charged

        # a request the account cannot cover: 402, nothing published, no nonce used
        nonce = gateway.chain.next_nonce(client.address.raw)
        jobs = list(gateway.gateway.jobs)
        big = completion(model.manifest.name, "too much", max_tokens=300, account=account)
        with pytest.raises(InsufficientFunds, match="cannot escrow"):
            await gateway.gateway.complete(big)
        assert list(gateway.gateway.jobs) == jobs and len(sent) == 2
        assert gateway.chain.next_nonce(client.address.raw) == nonce
