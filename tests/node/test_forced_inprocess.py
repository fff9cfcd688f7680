"""Forced errors on a chain of in-process nodes (D75): every LLM job is forced; the
client still gets the right answer, before the job's seed beacon exists (D94), the lazy
validator loses stake, the diligent ones don't, and the worker is paid and not barred by
its gateway."""

from __future__ import annotations

import pytest
import trio

from aipg.models import build_demo_llm, load_model_dir
from aipg.node.services.faults import Faults
from aipg.pouw import COMMITTEE_DELAY
from aipg.pouw.forced import forced_output
from aipg.stake.assign import worker_weights_at
from aipg.stake.forced import UNREVEALED
from aipg.stake.types import BPS
from aipg.testing.nodes import NodeSpec, add_paid_account, completion, open_node_world
from aipg.wire import UNITS_PER_AIPG, Identity

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def llm_dir(tmp_path_factory):
    return build_demo_llm(tmp_path_factory.mktemp("forced") / "llm")


async def test_a_forced_error_costs_the_lazy_validator_and_the_client_gets_the_right_answer(
    tmp_path, llm_dir
):
    model = load_model_dir(llm_dir)
    lazy = NodeSpec(worker=False, faults=Faults(lazy_votes=True))
    specs = [
        NodeSpec(worker=False),
        NodeSpec(),
        lazy,
        NodeSpec(worker=False),
        NodeSpec(worker=False),
    ]
    client = Identity.from_seed(b"\x45" * 32)
    # A paid job on the latency route (D84) is assigned before its seed beacon exists;
    # 500 ms blocks: that beacon is final about three blocks (1.5 s) after the request,
    # and the answer must come before it (D94).
    async with open_node_world(
        tmp_path,
        specs,
        [llm_dir],
        forced_error_bps=BPS,
        block_time_ms=500,
        accounts=[(client, UNITS_PER_AIPG)],
    ) as world:
        gateway, worker, sloth = world.nodes[0], world.nodes[1], world.nodes[2]
        diligent = [n.identity.public_bytes for n in world.nodes[3:]]
        account = add_paid_account(gateway, client)

        def registered() -> bool:  # the worker in an epoch's snapshot: trusted for paid jobs
            s = gateway.chain.state
            return bool(worker_weights_at(s, s.height, model.model_id))

        await world.until(
            gateway, lambda: gateway.gateway.live_workers(model.model_id) and registered(), 60
        )
        state = gateway.chain.state
        bonds = {k: state.bond(k).stake for k in [*diligent, sloth.identity.public_bytes]}
        worker_bond = state.bond(worker.identity.public_bytes).stake
        # A worker shielding a lazy friend leaves its valid vote out of its
        # ForcedErrors; the vote is owed all the same (D95), and the member's own node
        # carries it (it would be slashed as much for keeping it back).
        omitted = sloth
        counted = worker.worker.forced.votes_of

        def omitting(rid):
            votes = counted(rid)
            if votes is None:
                return None
            return {k: v for k, v in votes.items() if k != omitted.identity.public_bytes}

        worker.worker.forced.votes_of = omitting

        result = await gateway.gateway.complete(
            completion("aipg-demo-llm", "a trap", account=account)
        )
        answered_at = gateway.chain.height

        # D94: the non-streamed answer came before the job's seed beacon block (the
        # receipt needs it to know whether it is forced), and before the receipt.
        jid = bytes.fromhex(result.job_id)
        entry = gateway.gateway.jobs[jid]
        assert entry.early is not None and entry.report is None
        assert result.text == entry.early.text
        committed = await world.until(
            gateway, lambda: gateway.chain.state.commitments.get(jid), timeout=30
        )
        assert answered_at < committed + COMMITTEE_DELAY
        with trio.fail_after(30):  # the receipt follows once the beacon is known
            await entry.done.wait()
        assert entry.report is not None and not entry.failed
        assert gateway.chain.height >= committed + COMMITTEE_DELAY
        delivered = entry.report.result
        assert delivered.output_token_ids == entry.early.output_token_ids
        assert worker.worker.forced.forced == 1
        # The committee checks the forced receipt; the client got the true output: the
        # tokens the worker streamed as it generated them, of which the receipt's are
        # the prescribed change.
        tracked = await world.until(gateway, lambda: gateway.tracker.for_job(jid), timeout=30)
        checked = tracked.report.result.output_token_ids
        vocab = model.manifest.llm.vocab_size
        assert checked == forced_output(delivered.output_token_ids, vocab)
        assert checked != delivered.output_token_ids
        assert result.completion_tokens == len(delivered.output_token_ids)
        # The trap is sprung once the commit phase is over; the lazy vote is reviewed.
        lazy_key = sloth.identity.public_bytes
        await world.until(
            gateway, lambda: gateway.chain.state.bond(lazy_key).stake < bonds[lazy_key], timeout=60
        )
        s = gateway.chain.state
        assert s.bond(lazy_key).stake == bonds[lazy_key] - bonds[lazy_key] * 500 // BPS
        assert all(s.bond(k).stake == bonds[k] for k in diligent)
        assert s.bond(worker.identity.public_bytes).stake == worker_bond
        assert jid in s.certified and not s.convictions
        assert not gateway.gateway.scheduler.reputation.banned(worker.identity.public_bytes)
        # D95: past the reveal period of the first ForcedError nothing is owed: the
        # omitted vote was carried by its member's own node, and slashed once.
        first = s.punished[b"forced" + jid]
        due = first + s.params.review_period + 1
        await world.until(gateway, lambda: gateway.chain.height >= due, timeout=60)
        s = gateway.chain.state
        assert omitted.owed_reveals.offered >= 1
        assert not any(k.startswith(UNREVEALED) for k in s.punished)
        assert all(s.bond(k).stake == bonds[k] for k in diligent)
        assert s.bond(lazy_key).stake == bonds[lazy_key] - bonds[lazy_key] * 500 // BPS
