"""The validators' overlay on a real network (D105): consensus among validators that
start connected only to followers, and goes on when a validator is killed.

Ten whole nodes over real websockets on 127.0.0.1: three followers first (every node
bootstraps from them alone, so no validator starts linked to another) and seven
validators. Followers do not subscribe to "consensus" and so never relay a vote
(D102): the chain moves only because each validator dials and keeps its ring
neighbours. One validator is then killed; the six left (above the two-thirds quorum)
go on finalizing the same blocks, and the followers follow.
"""

from __future__ import annotations

import pytest
import trio

from aipg.models import build_demo_llm
from aipg.node.overlay import ring_neighbours
from aipg.node.protocol.messages import topic
from aipg.testing.nodes import NodeSpec, open_node_world
from aipg.wire import PeerId

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

FOLLOWERS = 3
VALIDATORS = 7


async def heights(nodes, height: int, timeout: float) -> None:
    with trio.fail_after(timeout):
        for n in nodes:
            while n.chain.height < height:
                await n.chain.wait_for_block()


def same_blocks(nodes, first: int, last: int) -> None:
    for h in range(first, last + 1):
        hashes = {n.chain.chain.store.finalized(h).block.hash for n in nodes}
        assert len(hashes) == 1, f"every node finalized the same block {h}"


async def test_validators_linked_only_through_the_overlay_survive_a_killed_one(tmp_path):
    llm = build_demo_llm(tmp_path / "llm")
    follower = NodeSpec(worker=False, validator=False)
    specs = [follower] * FOLLOWERS + [NodeSpec(worker=False)] * VALIDATORS
    async with open_node_world(tmp_path / "w", specs, [llm], loopback=True) as world:
        followers, validators = world.nodes[:FOLLOWERS], world.nodes[FOLLOWERS:]
        for f in followers:
            assert topic("consensus") not in f.host.router.subscribed_topics()
        keys = [v.identity.public_bytes for v in validators]
        # every validator holds (and keeps) a link to each of its ring neighbours
        with trio.fail_after(60):
            for v in validators:
                want = {
                    PeerId.from_public_key(k)
                    for k in ring_neighbours(keys, v.identity.public_bytes)
                }
                assert len(want) == 4
                while not (v.host.kept_peers == want and all(map(v.host.is_connected, want))):
                    await v.chain.wait_for_block()
        start = max(n.chain.height for n in world.nodes)
        await heights(world.nodes, start + 3, 60)
        same_blocks(world.nodes, 1, start + 3)

        victim = validators[2]
        world.stop(FOLLOWERS + 2)
        alive = [n for n in world.nodes if n is not victim]
        with trio.fail_after(30):
            while any(v.host.is_connected(victim.host.peer_id) for v in alive):
                await alive[0].chain.wait_for_block()
        killed_at = max(n.chain.height for n in alive)
        # rounds the dead validator would have proposed time out; the others go on
        await heights(alive, killed_at + 6, 120)
        same_blocks(alive, 1, killed_at + 6)
        assert victim.chain.height < killed_at + 6
        for f in followers:  # they followed on "blocks", never hearing a vote
            assert topic("consensus") not in f.host.router.subscribed_topics()
