"""The overlay's links to NATed validators are direct (D109).

Six validators in memory, two of them behind NAT. A public validator could reach a NATed
neighbour only through one of its relays, while the NATed one can dial it directly. A
link that came up through a relay (the public end dialed first) is dialed again directly
by the NATed end, and the direct connection replaces the circuit at both ends.
"""

from __future__ import annotations

import pytest
import trio

from aipg.models import build_demo_llm
from aipg.node.overlay import overlay_edges
from aipg.testing.nodes import NodeSpec, open_node_world

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


@pytest.fixture(scope="module")
def llm_dir(tmp_path_factory):
    return build_demo_llm(tmp_path_factory.mktemp("overlay-nat") / "llm")


async def test_links_to_natted_validators_are_dialed_by_them_and_direct(tmp_path, llm_dir):
    public, natted = NodeSpec(worker=False), NodeSpec(worker=False, nat=True)
    specs = [public, public, public, natted, public, natted]
    async with open_node_world(tmp_path, specs, [llm_dir]) as world:
        nodes = world.nodes
        by_key = {n.identity.public_bytes: n for n in nodes}
        edges = overlay_edges(by_key)
        behind = {nodes[3].identity.public_bytes, nodes[5].identity.public_bytes}
        across = [tuple(e) for e in edges if e & behind and not e <= behind]
        assert across  # links from public validators to NATed ones

        def linked_directly() -> bool:
            return all(n.chain.overlay_linked == len(n.host.kept_peers) for n in nodes) and all(
                by_key[a].host.is_connected(by_key[b].host.peer_id)
                and not by_key[a].host.is_relayed(by_key[b].host.peer_id)
                and not by_key[b].host.is_relayed(by_key[a].host.peer_id)  # at both ends
                for a, b in across
            )

        await world.until(nodes[0], linked_directly, 60)
        assert all(n.host.reach.reachability == "private" for n in (nodes[3], nodes[5]))

        # A public validator that reaches its NATed neighbour first (the link dropped,
        # say) can do so only through a relay; the NATed end, already connected, dials
        # it again directly and the circuit goes.
        a, b = across[0]
        pub, nat = (by_key[a], by_key[b]) if b in behind else (by_key[b], by_key[a])
        for _ in range(3):  # (the NATed end's own round may relink it first: again)
            for x, y in ((pub, nat), (nat, pub)):
                conn = x.host._conns.get(y.host.peer_id)
                if conn is not None:
                    x.host._drop(conn, "test")
                    with trio.fail_after(5):
                        await conn.closed.wait()
            assert await pub.host.ensure_connection(nat.host.peer_id)
            if pub.host.is_relayed(nat.host.peer_id):
                break
        assert pub.host.is_relayed(nat.host.peer_id)

        def direct_both_ends() -> bool:  # (each end replaces the circuit as it registers)
            return not pub.host.is_relayed(nat.host.peer_id) and not nat.host.is_relayed(
                pub.host.peer_id
            )

        await world.until(nodes[0], direct_both_ends, 60)
        assert pub.host.is_connected(nat.host.peer_id) and nat.host.is_connected(pub.host.peer_id)
