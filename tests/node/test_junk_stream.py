"""Junk streams (D85) end to end: whole nodes in one process (memory transport).

A worker with the ``junk_stream`` fault streams tokens it did not generate, then signs
the honest result. The gateway refuses the result (D50), and its signed chunks against
the signed receipt are evidence a block carries: the worker's bond is slashed, and the
receipt, which its committee finds valid, is never paid.
"""

from __future__ import annotations

import pytest
import trio

from aipg.models import build_demo_llm, load_model_dir
from aipg.node.services.faults import Faults
from aipg.node.services.gateway_api import JobFailed
from aipg.stake.equivocation import junk_stream_key
from aipg.stake.types import BPS
from aipg.testing.nodes import NodeSpec, completion, open_node_world

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def llm_dir(tmp_path_factory):
    return build_demo_llm(tmp_path_factory.mktemp("junk") / "llm")


# forced_bps 1: a chain with forced errors, where the output comes before its receipt
# (D94) and the evidence is built when the receipt follows
@pytest.mark.parametrize("forced_bps", [0, 1])
async def test_a_junk_stream_is_slashed_on_chain_and_its_receipt_never_paid(
    tmp_path, llm_dir, forced_bps
):
    model = load_model_dir(llm_dir)
    junk = NodeSpec(faults=Faults(junk_stream=True))
    specs = [NodeSpec(worker=False), junk, NodeSpec(worker=False), NodeSpec(worker=False)]
    async with open_node_world(tmp_path, specs, [llm_dir], forced_error_bps=forced_bps) as world:
        gateway, worker = world.nodes[0], world.nodes[1]
        built = []
        add = gateway.tracker.add_junk_stream
        gateway.tracker.add_junk_stream = lambda ev: (built.append(ev), add(ev))
        await world.wait_for_worker(gateway, model.model_id)
        key = worker.identity.public_bytes
        stake = gateway.chain.state.bond(key).stake
        pieces: list[str] = []

        async def on_text(piece: str) -> None:
            pieces.append(piece)

        # The only worker's result disagrees with its stream: the job fails at once.
        with trio.fail_after(30), pytest.raises(JobFailed, match="no worker could run"):
            await gateway.gateway.complete(completion("aipg-demo-llm", "the grid"), on_text)
        [jid] = list(gateway.gateway.jobs)
        await world.until(gateway, lambda: built, 60)
        [evidence] = built
        assert evidence.receipt.job_id == jid and evidence.chunk.signer == key
        aid = evidence.receipt.assignment_id

        state = await world.until(
            gateway,
            lambda: (
                gateway.chain.state
                if junk_stream_key(aid) in gateway.chain.state.punished
                else None
            ),
            60,
        )
        cut = stake * state.params.fraud_slash_bps // BPS
        assert state.bond(key).stake == stake - cut
        assert not gateway.tracker.pending_junk_streams()  # carried: not offered again

        # Its receipt went out on `receipts` and its committee finds it valid, but no
        # block will carry the certificate: the ledger refuses it (D85).
        tracked = await world.until(
            gateway,
            lambda: (t := gateway.tracker.for_job(jid)) is not None and t.set_aside and t,
            120,
        )
        assert tracked.certified and "contradicts" in tracked.set_aside
        assert gateway.chain.work_paid(jid) is None
