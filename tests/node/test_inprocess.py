"""The node's services in one process over the in-memory transport: gateway, worker and
verifier doing real jobs on real models, with real chain stores, no HTTP, no subprocess.

Each test starts a small world of whole nodes (:mod:`aipg.testing.nodes`), hands a
request to one node's gateway and follows the job through its claim, assignment,
execution, report, committee and block, waiting on the nodes' own block events.
"""

from __future__ import annotations

import pytest
import trio

from aipg.gossip import GossipConfig, GossipHost, MemoryTransport
from aipg.models import build_demo_diffusion, build_demo_llm, load_model_dir
from aipg.node.protocol.messages import topic
from aipg.node.services.faults import Faults
from aipg.pouw import VerdictReason
from aipg.stake.block import FinalizedBlock
from aipg.stake.builder import make_block, make_commit
from aipg.stake.challenge import ChallengeAnswer, WithholdingChallenge
from aipg.testing.nodes import VALIDATOR_STAKE, NodeSpec, completion, image, open_node_world
from aipg.wire import Identity, Multiaddr, PeerId, encode

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
        # The block opened a conviction; its review (here the same two members: nobody
        # else is eligible) upholds it a block later, and only then is the bond cut.
        assert tracked.review is not None
        await world.until(
            gateway,
            lambda: gateway.chain.bond_of(cheater.identity.public_bytes) != bond_before,
            timeout=60,
        )
        assert gateway.chain.bond_of(cheater.identity.public_bytes) < bond_before
        assert not gateway.chain.state.convictions
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
        request = image(model.manifest.name, "a lighthouse", seed=3)

        result = await gateway.gateway.generate_image(request)

        assert result.png.startswith(b"\x89PNG") and result.worker == str(worker.identity.peer_id)
        tracked = await world.wait_for_block_with(gateway, bytes.fromhex(result.job_id))
        assert tracked.certified and all(v.valid for v in tracked.verdicts.values())
        # The members re-ran steps from latents they fetched from the worker on ``job``.
        assert worker.worker is not None and worker.worker.latents_served > 0


async def test_a_forged_finalized_block_is_rejected_scored_down_and_never_forwarded(
    tmp_path, llm_dir
):
    """A stranger with many keys and no stake gossips a 'finalized' block for the next
    height under a commit it signed itself: the node it reaches rejects it at the topic
    validator (the stranger's score drops), acts on nothing and forwards nothing."""
    specs = [NodeSpec(worker=False)] * 3
    async with open_node_world(tmp_path, specs, [llm_dir]) as world:
        target, others = world.nodes[0], world.nodes[1:]
        attacker = GossipHost(
            Identity.generate(),
            GossipConfig(
                listen=[],
                bootstrap=[
                    Multiaddr.parse(f"{target.host.listen_addrs[0]}/p2p/{target.identity.peer_id}")
                ],
            ),
            transport=MemoryTransport(world.network),
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(attacker.run)
            strangers = [Identity.generate() for _ in range(8)]
            rejected_before = target.host.router.stats.rejected
            others_before = [n.host.router.stats.rejected for n in others]
            with trio.fail_after(30):
                while target.host.router.stats.rejected == rejected_before:
                    state = target.chain.state  # forge the next block of the chain as it is
                    block = make_block(
                        state,
                        state.validators.proposer(),
                        time_ms=state.time_ms + 1,
                        last_commit=target.chain.chain.store.finalized(state.height).commit
                        if state.height
                        else None,
                    )
                    commit = make_commit(state.chain_id, block.height, block.hash, strangers)
                    await attacker.publish(
                        topic("consensus"), encode(FinalizedBlock(block, commit))
                    )
                    await target.host.router.heartbeat_done.wait()
            assert target.host.peer_score(attacker.peer_id) < 0
            assert target.chain.chain.store.finalized(block.height) is None or (
                target.chain.chain.store.finalized(block.height).block.hash != block.hash
            )  # the forged block was never applied
            # Nobody else saw it: the target forwarded nothing it rejected (by their next
            # heartbeat a forwarded copy would have been validated, and rejected, there).
            for n in others:
                await n.host.router.heartbeat_done.wait()
            assert [n.host.router.stats.rejected for n in others] == others_before
            nursery.cancel_scope.cancel()


async def test_a_validator_that_cannot_check_abstains_and_the_job_still_certifies(
    tmp_path, llm_dir
):
    """A seated member that does not host the model says so; its seat passes to a
    reserve, the job certifies, and the honest worker keeps its whole bond."""
    model = load_model_dir(llm_dir)
    # The non-hosting validator holds most of the stake and the draw is uncapped (D57's
    # cap lifted), so the stake-weighted draw seats it first on nearly every committee.
    blind = NodeSpec(worker=False, hosts=False, stake=1000 * VALIDATOR_STAKE)
    specs = [NodeSpec(worker=False), NodeSpec(), blind, *[NodeSpec(worker=False)] * 3]
    async with open_node_world(
        tmp_path, specs, [llm_dir], committee_size=3, weight_cap_bps=10_000
    ) as world:
        gateway, worker, blind_node = world.nodes[0], world.nodes[1], world.nodes[2]
        await world.wait_for_worker(gateway, model.model_id)
        bond = gateway.chain.bond_of(worker.identity.public_bytes)
        for attempt in range(3):
            result = await gateway.gateway.complete(completion("aipg-demo-llm", f"try {attempt}"))
            tracked = await world.wait_for_block_with(gateway, bytes.fromhex(result.job_id))
            assert tracked.certified and not tracked.fraud
            if blind_node.identity.public_bytes in tracked.committee.members:
                break
        else:
            pytest.fail("the heavy validator was never drawn onto a committee")
        abstention = tracked.verdicts[blind_node.identity.public_bytes]
        assert abstention.reason == VerdictReason.UNAVAILABLE
        assert blind_node.identity.public_bytes not in tracked.seated()
        assert len(tracked.seated()) == 3  # a reserve took the seat and voted
        assert all(tracked.verdicts[k].valid for k in tracked.seated())
        assert gateway.chain.bond_of(worker.identity.public_bytes) == bond


async def test_a_worker_that_signs_two_receipts_for_one_assignment_is_slashed(tmp_path, llm_dir):
    model = load_model_dir(llm_dir)
    equivocator = NodeSpec(faults=Faults(double_receipt=True))
    specs = [NodeSpec(worker=False), equivocator, NodeSpec(worker=False), NodeSpec(worker=False)]
    async with open_node_world(tmp_path, specs, [llm_dir]) as world:
        gateway, worker = world.nodes[0], world.nodes[1]
        await world.wait_for_worker(gateway, model.model_id)
        bond = gateway.chain.bond_of(worker.identity.public_bytes)

        result = await gateway.gateway.complete(completion("aipg-demo-llm", "twice"))

        tracked = await world.wait_for_block_with(gateway, bytes.fromhex(result.job_id))
        key = b"equivocation" + tracked.report.result.receipt.assignment_id
        await world.until(gateway, lambda: key in gateway.chain.state.punished, timeout=60)
        assert gateway.chain.bond_of(worker.identity.public_bytes) < bond
        assert gateway.tracker.pending_equivocations() == []  # carried once, then settled


async def test_a_validator_that_votes_both_ways_is_slashed_and_jailed(tmp_path, llm_dir):
    model = load_model_dir(llm_dir)
    flipper = NodeSpec(worker=False, faults=Faults(flip_verdicts=True))
    specs = [NodeSpec(worker=False), NodeSpec(), flipper, NodeSpec(worker=False)]
    async with open_node_world(tmp_path, specs, [llm_dir]) as world:
        gateway, flip_node = world.nodes[0], world.nodes[2]
        key = flip_node.identity.public_bytes
        await world.wait_for_worker(gateway, model.model_id)
        bond = gateway.chain.state.bond(key).stake

        result = await gateway.gateway.complete(completion("aipg-demo-llm", "both ways"))

        job_id = bytes.fromhex(result.job_id)
        await world.until(gateway, lambda: gateway.chain.state.bond(key).stake != bond, timeout=60)
        assert gateway.chain.state.bond(key).jailed_until > gateway.chain.height
        tracked = gateway.tracker.for_job(job_id)
        assert tracked is not None and key in tracked.committee.members  # both seated


async def test_a_false_accusation_is_overturned_on_review_and_costs_the_accuser(tmp_path, llm_dir):
    """A validator votes an honest worker's receipt invalid without checking. Its stake
    seats it first and makes the evidence (> 1/3); the review, drawn without it by the
    block that carried the evidence, re-runs the job: the accuser is slashed, the worker
    keeps its bond."""
    model = load_model_dir(llm_dir)
    accuser = NodeSpec(worker=False, faults=Faults(accuse=True), stake=1000 * VALIDATOR_STAKE)
    specs = [NodeSpec(worker=False), NodeSpec(), accuser, *[NodeSpec(worker=False)] * 4]
    # D57's cap lifted: the accuser's stake seats it first, as the docstring says.
    async with open_node_world(
        tmp_path, specs, [llm_dir], committee_size=2, weight_cap_bps=10_000
    ) as world:
        gateway, worker, liar = world.nodes[0], world.nodes[1], world.nodes[2]
        await world.wait_for_worker(gateway, model.model_id)
        state = gateway.chain.state
        worker_bond, liar_bond = (
            state.bond(worker.identity.public_bytes).stake,
            state.bond(liar.identity.public_bytes).stake,
        )

        result = await gateway.gateway.complete(completion("aipg-demo-llm", "honest work"))

        tracked = await world.wait_for_block_with(gateway, bytes.fromhex(result.job_id))
        assert tracked.fraud  # the accuser's stake alone made the evidence
        await world.until(
            gateway,
            lambda: gateway.chain.state.bond(liar.identity.public_bytes).stake != liar_bond,
            timeout=60,
        )
        state = gateway.chain.state
        assert state.bond(worker.identity.public_bytes).stake == worker_bond
        assert liar.identity.public_bytes not in tracked.review.committee.candidates
        assert all(v.valid for v in tracked.review.outcome.verdicts)
        # The reviewers committed before they revealed (D76): blocks carried the review
        # commitments of every counted reviewer from outside the first committee (a
        # first member's vote counts by the commitment it made then).
        store = gateway.chain.chain.store
        carried = {
            c.signer
            for fb in store.finalized_range(1, store.height)
            for c in fb.block.body.verdict_commits
            if c.review and c.receipt_id == tracked.receipt_id
        }
        counted = {v.signer for v in tracked.review.outcome.verdicts if v.valid}
        fresh = counted - set(tracked.committee.candidates)
        assert fresh and fresh <= carried
        # The gateway suspended the worker on the first outcome; the review lifts it.
        await world.until(gateway, lambda: tracked.review.settled, timeout=30)
        assert not gateway.gateway.scheduler.reputation.banned(worker.identity.public_bytes)


async def test_votes_are_committed_before_revealed_and_a_copier_counts_for_nothing(
    tmp_path, llm_dir
):
    """The committee's members commit (blocks carry the commitments) and reveal once the
    commit phase is over. A member that only copies another's revealed vote, without
    having committed, is not counted: the job certifies on the others' votes, and the
    verdict pool pays the copier nothing for it."""
    model = load_model_dir(llm_dir)
    copier = NodeSpec(worker=False, faults=Faults(copy_verdicts=True))
    specs = [
        NodeSpec(worker=False),
        NodeSpec(),
        copier,
        NodeSpec(worker=False),
        NodeSpec(worker=False),
    ]
    async with open_node_world(tmp_path, specs, [llm_dir]) as world:
        gateway, copy_node = world.nodes[0], world.nodes[2]
        key = copy_node.identity.public_bytes
        balances: dict[int, int] = {}
        committed_at: dict[tuple[bytes, bytes], int] = {}  # (receipt, member) -> height

        def record(block) -> None:
            balances[block.height] = gateway.chain.state.balance(copy_node.identity.address)
            for c in block.body.verdict_commits:
                committed_at.setdefault((c.receipt_id, c.signer), block.height)

        gateway.chain.on_block.append(record)
        await world.wait_for_worker(gateway, model.model_id)

        result = await gateway.gateway.complete(completion("aipg-demo-llm", "copy me"))

        tracked = await world.wait_for_block_with(gateway, bytes.fromhex(result.job_id))
        assert tracked.certified and key in tracked.committee.members
        counted = {v.signer for v in tracked.outcome.verdicts}
        assert key not in counted and len(counted) >= 2
        # Every counted vote was committed in a block before the one that counted it
        # (which then forgot the commitments); the copier never committed.
        rid = tracked.receipt_id
        assert all(committed_at[rid, k] < tracked.block_height for k in counted)
        assert (rid, key) not in committed_at
        assert not any(k[:32] == rid for k in gateway.chain.state.verdict_commits)
        # The copier did reveal (a copy of another's vote), and it was held, not counted.
        await world.until(gateway, lambda: key in tracked.verdicts, timeout=30)
        assert key in tracked.collector.held()
        # The block that paid the job paid the copier nothing (beyond a proposer's bonus).
        block = gateway.chain.chain.store.finalized(tracked.block_height).block
        if block.header.proposer != key:
            assert balances[tracked.block_height] == balances[tracked.block_height - 1]


async def test_a_worker_that_withholds_its_latents_is_challenged_on_chain_and_answers(
    tmp_path, diffusion_dir
):
    """The worker serves nobody its latents: each member puts a withholding challenge in
    a block and waits. The worker answers with the asked-for latents in a block before
    the deadline: the challenges close, their fees go to the worker, its bond is
    untouched, and the members re-check the job from the latents on chain: certified."""
    model = load_model_dir(diffusion_dir)
    withholder = NodeSpec(faults=Faults(withhold_latents=True))
    specs = [NodeSpec(worker=False), withholder, NodeSpec(worker=False), NodeSpec(worker=False)]
    async with open_node_world(tmp_path, specs, [diffusion_dir]) as world:
        gateway, worker = world.nodes[0], world.nodes[1]
        key = worker.identity.public_bytes
        state = gateway.chain.state
        bond, balance = state.bond(key).stake, state.balance(worker.identity.address)
        await world.wait_for_worker(gateway, model.model_id)
        challenges: list[WithholdingChallenge] = []
        answers: list[ChallengeAnswer] = []

        def record(block) -> None:
            challenges.extend(block.body.challenges)
            answers.extend(block.body.answers)

        gateway.chain.on_block.append(record)
        request = image(model.manifest.name, "a locked door", seed=5)

        result = await gateway.gateway.generate_image(request)

        await world.until(gateway, lambda: challenges, timeout=60)
        assert {c.receipt.job_id for c in challenges} == {bytes.fromhex(result.job_id)}
        assert {c.receipt.signer for c in challenges} == {key}
        await world.until(gateway, lambda: answers and not gateway.chain.state.challenges, 60)
        assert {a.challenger for a in answers} == {c.signer for c in challenges}
        state = gateway.chain.state
        assert state.bond(key).stake == bond  # answered in time: nothing slashed
        fees = len(answers) * state.params.challenge_fee
        assert state.balance(worker.identity.address) >= balance + fees
        assert worker.worker is not None and worker.worker.latents_served == 0
        tracked = await world.wait_for_block_with(gateway, bytes.fromhex(result.job_id))
        assert tracked.certified  # re-checked from the answers' latents
        assert {v.signer for v in tracked.outcome.verdicts} == {c.signer for c in challenges}


async def test_claims_are_drawn_for_audit_and_the_unaudited_are_paid_without_a_committee(
    tmp_path, llm_dir
):
    """D79: every node offers each report's claim; a new worker's first jobs are audited
    (checked by its committee as before); once its record lets the rate fall (25 % after
    two audits here; the claim's worth rate is 13 % at this bond), a claim the beacon
    does not draw is paid by the chain with no verdict at all."""
    model = load_model_dir(llm_dir)
    specs = [NodeSpec(worker=False), NodeSpec(), NodeSpec(worker=False), NodeSpec(worker=False)]
    over = {"audit_full_jobs": 1, "audit_floor_bps": 1}
    async with open_node_world(tmp_path, specs, [llm_dir], params_over=over) as world:
        gateway, worker = world.nodes[0], world.nodes[1]
        await world.wait_for_worker(gateway, model.model_id)
        audited = unaudited = 0
        for i in range(10):
            result = await gateway.gateway.complete(completion("aipg-demo-llm", f"job {i}"))
            job_id = bytes.fromhex(result.job_id)

            def settled(job_id=job_id):
                t = gateway.tracker.for_job(job_id)
                return t if t is not None and (t.block_height or t.paid_unaudited) else None

            tracked = await world.until(gateway, settled, timeout=60)
            if tracked.paid_unaudited:
                unaudited += 1
                assert not tracked.verdicts and tracked.outcome is None
                assert tracked.claim_height is not None
                assert job_id in gateway.chain.state.certified
                break
            audited += 1
            assert tracked.certified and tracked.verdicts
        assert audited >= 2  # the first two: the record's rate is 100 %
        assert unaudited == 1
        record = gateway.chain.state.audit_records[worker.identity.public_bytes]
        assert record.score >= 2
