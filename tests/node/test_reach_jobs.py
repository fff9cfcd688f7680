"""Jobs across a network that is not a full mesh: a worker behind NAT, reached by its
gateway and its committee through relays and dial on demand (issue 13).

The worker dials out only (its transport refuses every inbound dial) and keeps at most
two regular connections; the gateway's assignment and every committee member's latent
fetch reach it by looking up its signed record (relayed addresses only) and opening a
circuit through one of its relays. A node restarted on its data dir comes back on the
port it had.
"""

from __future__ import annotations

import pytest

from aipg.models import build_demo_diffusion, load_model_dir
from aipg.testing.nodes import NodeSpec, image, open_node_world

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def diffusion_dir(tmp_path_factory):
    return build_demo_diffusion(tmp_path_factory.mktemp("reach") / "diffusion")


async def test_a_natted_worker_serves_a_job_and_its_latents_to_nodes_it_never_dialed(
    tmp_path, diffusion_dir
):
    model = load_model_dir(diffusion_dir)
    # The worker is not a validator (most GPU operators will not be), so the validators'
    # overlay (D105) links the five others among themselves and never to it: its only
    # regular connections are the two it dials, and every committee member that reaches
    # it for latents comes through a relay.
    plain = NodeSpec(worker=False)
    worker_spec = NodeSpec(nat=True, max_peers=2, validator=False)
    specs = [plain, plain, plain, plain, plain, worker_spec]
    # committee_size 4 of the five validators (all five drawn: seats and a reserve).
    async with open_node_world(tmp_path, specs, [diffusion_dir], committee_size=4) as world:
        gateway, worker = world.nodes[0], world.nodes[-1]
        await world.until(gateway, lambda: worker.host.reach.reachability == "private", 60)
        reach = worker.host.reach
        await world.until(gateway, lambda: len(reach.hub.reserved_on) == 2, 60)
        await world.until(gateway, reach.published.is_set, 60)
        await world.wait_for_worker(gateway, model.model_id, timeout=60)
        # the worker's own start-up dials (its DHT self-lookup) have gone idle and closed
        host = worker.host
        await world.until(gateway, lambda: not any(c.transient for c in host._conns.values()))
        assert len(host.connected_peers()) <= 2
        request = image(model.manifest.name, "a lighthouse behind a router", seed=3)

        result = await gateway.gateway.generate_image(request)

        assert result.worker == str(worker.identity.peer_id)
        tracked = await world.wait_for_block_with(gateway, bytes.fromhex(result.job_id), 120)
        assert tracked.certified and all(v.valid for v in tracked.verdicts.values())
        assert worker.worker.latents_served > 0
        # Nobody could dial the worker directly: whoever did reach it came through a relay.
        assert worker.host.relayed_connections > 0
        record = gateway.host.peer_record(worker.host.peer_id)
        assert record is not None and all(a.is_relayed for a in record.multiaddrs())
