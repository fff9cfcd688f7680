"""Nodes that do not vote follow the chain on the "blocks" topic (D102).

A follower never subscribes to "consensus": it hears one copy of each finalized block
(its proposer publishes it, every node passes it on once) instead of every proposal and
vote. Real nodes in one process over the in-memory transport.
"""

from __future__ import annotations

import pytest

from aipg.models import build_demo_llm
from aipg.node.protocol.messages import topic
from aipg.testing.nodes import NodeSpec, open_node_world

pytestmark = pytest.mark.slow


async def test_followers_follow_the_chain_on_blocks_without_hearing_votes(tmp_path):
    llm = build_demo_llm(tmp_path / "llm")
    follower = NodeSpec(worker=False, validator=False)
    specs = [NodeSpec(worker=False)] * 3 + [follower] * 2
    async with open_node_world(tmp_path / "w", specs, [llm]) as world:
        validators, followers = world.nodes[:3], world.nodes[3:]
        await world.wait_for_height(6, timeout=60)
        for h in range(1, 7):
            hashes = {n.chain.chain.store.finalized(h).block.hash for n in world.nodes}
            assert len(hashes) == 1, f"every node finalized the same block {h}"
        for f in followers:
            assert topic("consensus") not in f.host.router.subscribed_topics()
            assert topic("blocks") in f.host.router.subscribed_topics()
        for v in validators:
            assert topic("consensus") in v.host.router.subscribed_topics()
        # each height's block came once from its proposer: the validators published them all
        published = sum(v.chain.blocks_published for v in validators)
        assert published >= 6
        assert sum(f.chain.blocks_published for f in followers) == 0
