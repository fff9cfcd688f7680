"""D94 on a chain of in-process nodes with forced errors on: the worker hands its
gateway the output at once and signs the receipt once the job's seed beacon is known.
An unforced job's plain receipt follows and certifies; a worker that delivers and never
signs (fault switch) leaves the client answered, the job ended at the gateway after
``RECEIPT_DUE_BLOCKS`` (not reassigned, not certified), and its reputation docked."""

from __future__ import annotations

import pytest
import trio

from aipg.models import build_demo_llm, load_model_dir
from aipg.pouw import COMMITTEE_DELAY, JobState
from aipg.stake.assign import worker_weights_at
from aipg.testing.nodes import NodeSpec, add_paid_account, completion, open_node_world
from aipg.wire import UNITS_PER_AIPG, Identity

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def llm_dir(tmp_path_factory):
    return build_demo_llm(tmp_path_factory.mktemp("early") / "llm")


async def test_the_answer_comes_first_and_a_worker_that_never_signs_is_bounded(tmp_path, llm_dir):
    model = load_model_dir(llm_dir)
    specs = [NodeSpec(worker=False), NodeSpec(), *(NodeSpec(worker=False) for _ in range(3))]
    client = Identity.from_seed(b"\x46" * 32)
    # forced_error_bps 1: every LLM receipt waits for its beacon (the job may be forced),
    # and (but one in 10,000) none is forced. Paid jobs on the latency route (D84) are
    # assigned before that beacon exists (500 ms blocks: about 1.5 s after the request).
    async with open_node_world(
        tmp_path,
        specs,
        [llm_dir],
        forced_error_bps=1,
        block_time_ms=500,
        accounts=[(client, UNITS_PER_AIPG)],
    ) as world:
        gateway, worker = world.nodes[0], world.nodes[1]
        gw = gateway.gateway
        account = add_paid_account(gateway, client)

        def registered() -> bool:  # the worker in an epoch's snapshot: trusted for paid jobs
            s = gateway.chain.state
            return bool(worker_weights_at(s, s.height, model.model_id))

        await world.until(gateway, lambda: gw.live_workers(model.model_id) and registered(), 60)

        # 1. An honest worker: the answer before the beacon, the plain receipt after it.
        result = await gw.complete(completion("aipg-demo-llm", "early bird", account=account))
        answered_at = gateway.chain.height
        jid = bytes.fromhex(result.job_id)
        entry = gw.jobs[jid]
        assert entry.early is not None and entry.report is None
        assert gw.job_view(result.job_id)["status"] == "signing"
        committed = await world.until(gateway, lambda: gateway.chain.state.commitments.get(jid))
        assert answered_at < committed + COMMITTEE_DELAY
        with trio.fail_after(30):
            await entry.done.wait()
        assert not entry.failed and entry.report is not None
        assert entry.report.result.output_token_ids == entry.early.output_token_ids
        assert entry.report.result.text == result.text
        assert worker.worker.forced.forced == 0
        await world.until(gateway, lambda: jid in gateway.chain.state.certified)

        # 2. The same worker now delivers and never signs.
        key = worker.identity.public_bytes
        score = gw.scheduler.reputation.score(key)
        worker.worker.forced.never_sign = True
        result = await gw.complete(
            completion("aipg-demo-llm", "never signed", seed=11, account=account)
        )
        jid2 = bytes.fromhex(result.job_id)
        entry2 = gw.jobs[jid2]
        assert result.text == entry2.early.text and result.completion_tokens > 0
        with trio.fail_after(60):
            await entry2.done.wait()
        assert entry2.report is None and "never signed" in entry2.failed
        assert gateway.chain.height > gw.receipt_due(jid2, entry2)
        assert gw.unsigned == 1
        assert gw.scheduler.reputation.score(key) < score
        assert gw.scheduler.state(jid2) is JobState.DONE  # never reassigned
        assert gw.job_view(result.job_id)["status"] == "failed"
        assert worker.worker.signing == 0 and worker.worker.executed == 2
        assert jid2 not in gateway.chain.state.certified
        # The gateway holds nothing open for it.
        assert not any(not e.done.is_set() for e in gw.jobs.values())
