"""The paid tier under load: whole nodes in one process (the memory transport), one
custodial account sending a burst of concurrent paid completions through a gateway.

Every request escrows its fee before any work; every job is certified and paid from its
own escrow; the account's balance is what a replay of the chain says; no nonce is left
behind, so the account keeps working.
"""

from __future__ import annotations

import time

import pytest
import trio

from aipg.models import build_demo_llm, load_model_dir
from aipg.node.services.gateway import PAID_FEE_PER_TOKEN
from aipg.node.services.gateway_api import InsufficientFunds
from aipg.pouw import Tier
from aipg.stake.tx import TxKind
from aipg.stake.useful_work import fee_charged
from aipg.testing.nodes import NodeSpec, add_paid_account, completion, open_node_world
from aipg.wire import UNITS_PER_AIPG, Identity

pytestmark = pytest.mark.slow

BURST = 50
MAX_TOKENS = 8
FUNDS = 100 * UNITS_PER_AIPG


@pytest.fixture(scope="module")
def llm_dir(tmp_path_factory):
    return build_demo_llm(tmp_path_factory.mktemp("paid") / "llm")


def replay_account(store, address: bytes, state) -> tuple[int, int, int]:
    """What the finalized chain says ``address`` spent: (transaction fees, fees charged
    for its paid jobs, escrows still locked), by plain arithmetic over every block."""
    tx_fees = charged = 0
    locked: dict[bytes, int] = {}
    claims: dict[bytes, object] = {}
    certified: set[bytes] = set()
    for fb in store.finalized_range(1, store.height):
        for tx in fb.block.body.transactions:
            if tx.sender == address:
                tx_fees += tx.fee
                assert tx.kind == TxKind.ESCROW, "the gateway signs nothing else for it"
                locked[tx.job_id] = tx.amount
        for cert in fb.block.body.certificates:
            if cert.job.tier == Tier.PAID and cert.job.client == address:
                if not cert.verdicts:  # a claim (D79): paid by its draw or a certificate
                    claims[cert.receipt.job_id] = cert
                    continue
                certified.add(cert.receipt.job_id)
                locked.pop(cert.receipt.job_id)  # paid from its own escrow, or not at all
                charged += fee_charged(cert.job, cert.receipt)
    for jid, claim in claims.items():  # drawn unaudited: the chain paid it from its escrow
        if jid not in certified and jid in state.certified:
            locked.pop(jid)
            charged += fee_charged(claim.job, claim.receipt)
    return tx_fees, charged, sum(locked.values())


async def test_a_burst_of_paid_requests_all_settle_and_the_account_keeps_working(tmp_path, llm_dir):
    model = load_model_dir(llm_dir)
    client = Identity.from_seed(b"\x42" * 32)
    address = client.address.raw
    specs = [NodeSpec(worker=False), NodeSpec(), NodeSpec(), NodeSpec(worker=False)]
    async with open_node_world(tmp_path, specs, [llm_dir], accounts=[(client, FUNDS)]) as world:
        gateway = world.nodes[0]
        account = add_paid_account(gateway, client)
        await world.wait_for_worker(gateway, model.model_id)
        results: list = [None] * BURST

        async def request(i: int) -> None:
            req = completion(
                model.manifest.name, f"paid {i}", max_tokens=MAX_TOKENS, seed=i, account=account
            )
            results[i] = await gateway.gateway.complete(req)

        started = time.monotonic()
        async with trio.open_nursery() as nursery:
            for i in range(BURST):
                nursery.start_soon(request, i)
        answered_s = time.monotonic() - started

        # A 51st request after the burst escrows at once: no nonce was left behind.
        results.append(
            await gateway.gateway.complete(
                completion(model.manifest.name, "one more", max_tokens=MAX_TOKENS, account=account)
            )
        )
        for r in results:  # certified by its committee, or paid by its claim's draw (D79)
            tracked = await world.wait_for_settled(gateway, bytes.fromhex(r.job_id), 120)
            assert tracked.certified or tracked.paid_unaudited, r.job_id
        settled_s = time.monotonic() - started

        state = gateway.chain.state
        tx_fees, charged, locked = replay_account(gateway.chain.chain.store, address, state)
        assert locked == 0 and not any(k.endswith(address) for k in state.escrows)
        # Charged exactly the price of the tokens generated, never the escrowed maximum.
        generated = sum(r.completion_tokens for r in results)
        assert charged == PAID_FEE_PER_TOKEN * generated
        assert state.balance(address) == FUNDS - charged - tx_fees
        # Every job paid its worker at least its fee (plus a share of the work pool).
        for r in results:
            job = gateway.tracker.for_job(bytes.fromhex(r.job_id)).report.job
            assert gateway.chain.work_paid(job.id) >= PAID_FEE_PER_TOKEN * r.completion_tokens
            assert job.fee == PAID_FEE_PER_TOKEN * MAX_TOKENS
        # One escrow per request, every nonce used once, nothing waiting.
        assert state.account(address).nonce == BURST + 1
        assert gateway.chain.next_nonce(address) == BURST + 1
        assert not gateway.chain.mempool.transactions()
        print(
            f"\n{BURST} paid requests answered in {answered_s:.1f} s, settled in {settled_s:.1f} s"
        )


async def test_a_paid_request_the_account_cannot_cover_fails_before_any_work(tmp_path, llm_dir):
    model = load_model_dir(llm_dir)
    client = Identity.from_seed(b"\x43" * 32)
    fee = PAID_FEE_PER_TOKEN * MAX_TOKENS
    specs = [NodeSpec(worker=False), NodeSpec(), NodeSpec(worker=False)]
    async with open_node_world(
        tmp_path, specs, [llm_dir], accounts=[(client, fee + fee // 2)]
    ) as world:
        gateway, worker = world.nodes[0], world.nodes[1]
        account = add_paid_account(gateway, client)
        await world.wait_for_worker(gateway, model.model_id)
        req = completion(model.manifest.name, "afford", max_tokens=MAX_TOKENS, account=account)

        first = await gateway.gateway.complete(req)
        with pytest.raises(InsufficientFunds, match=r"cannot escrow the 0\.08 AIPG fee .*balance"):
            await gateway.gateway.complete(req)

        # Only the first job exists anywhere: the refused one was never published.
        assert list(gateway.gateway.jobs) == [bytes.fromhex(first.job_id)]
        assert worker.worker is not None and worker.worker.executed == 1
        assert gateway.chain.next_nonce(client.address.raw) == 1
