"""The node's services in one process over the in-memory transport: gateway, worker and
verifier doing real jobs on real models, with real chain stores, no HTTP, no subprocess.

Each test starts a small world of whole nodes (:mod:`aipg.testing.nodes`), hands a
request to one node's gateway and follows the job through its claim, assignment,
execution, report, committee and block, waiting on the nodes' own block events.
"""

from __future__ import annotations

import pytest

from aipg.models import build_demo_diffusion, build_demo_llm, load_model_dir
from aipg.node.services.faults import Faults
from aipg.node.services.gateway_api import ImageRequest
from aipg.pouw import VerdictReason
from aipg.testing.nodes import NodeSpec, completion, open_node_world
from aipg.wire import PeerId

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def llm_dir(tmp_path_factory):
    return build_demo_llm(tmp_path_factory.mktemp("inprocess") / "llm")


@pytest.fixture(scope="module")
def diffusion_dir(tmp_path_factory):
    return build_demo_diffusion(tmp_path_factory.mktemp("inprocess") / "diffusion")


async def test_a_gateway_job_is_run_by_a_worker_certified_by_its_committee_and_paid(
    tmp_path, llm_dir
):
    model = load_model_dir(llm_dir)
    specs = [NodeSpec(worker=False), NodeSpec(), NodeSpec(worker=False), NodeSpec(worker=False)]
    async with open_node_world(tmp_path, specs, [llm_dir]) as world:
        gateway, worker = world.nodes[0], world.nodes[1]
        await world.wait_for_worker(gateway, model.model_id)

        result = await gateway.gateway.complete(completion("aipg-demo-llm", "the grid"))

        assert result.worker == str(worker.identity.peer_id)
        assert 1 <= result.completion_tokens <= 8
        job_id = bytes.fromhex(result.job_id)
        tracked = await world.wait_for_block_with(gateway, job_id)
        assert tracked.certified
        committee = set(tracked.seated())
        assert committee and set(tracked.verdicts) <= committee
        # Neither the gateway nor the worker sits on the job's committee.
        assert {gateway.identity.public_bytes, worker.identity.public_bytes}.isdisjoint(
            tracked.committee.candidates
        )
        assert all(v.valid for v in tracked.verdicts.values())
        # Every validator that re-checked it is on the committee and ran a real check.
        checked = sum(n.verifier.outcomes["valid"] for n in world.nodes if n.verifier)
        assert checked >= len(tracked.verdicts)
        assert worker.worker is not None and worker.worker.executed == 1
        # The API's figure is the ledger's: what the block paid this job.
        view = gateway.gateway.job_view(result.job_id)
        assert view["status"] == "paid" and view["reward"] is not None
        paid = gateway.chain.work_paid(job_id)
        assert paid is not None and paid > 0
        await world.wait_for_height(tracked.block_height)
        assert {n.chain.work_paid(job_id) for n in world.nodes} == {paid}  # one chain, one figure


async def test_a_worker_that_alters_its_tokens_is_convicted_by_the_verifiers(tmp_path, llm_dir):
    model = load_model_dir(llm_dir)
    cheat = NodeSpec(faults=Faults(cheat_tokens=True))
    specs = [NodeSpec(worker=False), cheat, NodeSpec(worker=False), NodeSpec(worker=False)]
    async with open_node_world(tmp_path, specs, [llm_dir]) as world:
        gateway, cheater = world.nodes[0], world.nodes[1]
        await world.wait_for_worker(gateway, model.model_id)
        bond_before = gateway.chain.bond_of(cheater.identity.public_bytes)

        result = await gateway.gateway.complete(completion("aipg-demo-llm", "a cheat"))

        tracked = await world.wait_for_block_with(gateway, bytes.fromhex(result.job_id))
        assert tracked.fraud
        invalid = [v for v in tracked.verdicts.values() if not v.valid]
        # Each invalid vote names what the check found, never an unreachable worker.
        assert invalid and all(
            v.reason not in (VerdictReason.OK, VerdictReason.UNAVAILABLE) for v in invalid
        )
        assert gateway.chain.bond_of(cheater.identity.public_bytes) < bond_before
        # The gateway bars the convicted worker from its later jobs.
        assert gateway.gateway.scheduler.reputation.banned(cheater.identity.public_bytes)
        assert str(PeerId.from_public_key(tracked.report.result.receipt.signer)) == result.worker


async def test_verifiers_fetch_an_image_jobs_latents_from_its_worker_and_certify_it(
    tmp_path, diffusion_dir
):
    model = load_model_dir(diffusion_dir)
    specs = [NodeSpec(worker=False), NodeSpec(), NodeSpec(worker=False), NodeSpec(worker=False)]
    async with open_node_world(tmp_path, specs, [diffusion_dir]) as world:
        gateway, worker = world.nodes[0], world.nodes[1]
        await world.wait_for_worker(gateway, model.model_id)
        request = ImageRequest(
            model=model.manifest.name,
            prompt="a lighthouse",
            size=None,
            steps=None,
            guidance_milli=None,
            seed=3,
            tier="free",
            account=None,
            client="127.0.0.1",
        )

        result = await gateway.gateway.generate_image(request)

        assert result.png.startswith(b"\x89PNG") and result.worker == str(worker.identity.peer_id)
        tracked = await world.wait_for_block_with(gateway, bytes.fromhex(result.job_id))
        assert tracked.certified and all(v.valid for v in tracked.verdicts.values())
        # The members re-ran steps from latents they fetched from the worker on ``job``.
        assert worker.worker is not None and worker.worker.latents_served > 0
