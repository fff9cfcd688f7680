"""Jobs across a 300-node in-memory network with max_peers 16 (issue 13's test).

One :class:`aipg.gossip.MemoryNetwork` holds 290 plain gossip hosts (DHT, AutoNAT,
relays; 30% behind NAT) and 10 whole nodes: two gateways and five more validators, and
three workers (two behind NAT) that are not validators, as most GPU operators will not
be. Each node bootstraps from two random plain hosts and only the last public node
before it, so the nodes are far from a full mesh: the validators hold their overlay
(D105) and little else, and a committee member reaches the worker for its latents by
dial on demand (address book, DHT lookup) or through a relay. Every job goes from a
random gateway (fixed seed) to whichever worker the gateway's draw gives; each completes
and is certified in a finalized block with at least one seated member that had no
connection to the worker when the job was submitted.

The workers are not validators. A worker that is one keeps overlay links to four
validators besides the gateways and its bootstrap node: linked to seven of the nine
others, all of a job's seated members were linked to it once in a few dozen draws (a CI
run failed so). A worker that is not is linked to two or three of the seven validators
when a job is submitted, fewer than the votes a certificate carries.
"""

from __future__ import annotations

import random

import pytest

from aipg.models import build_demo_diffusion, build_demo_llm, load_model_dir
from aipg.node.overlay import overlay_edges
from aipg.node.services.gateway_api import ImageRequest
from aipg.testing.nodes import NodeSpec, completion, open_node_world

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

PLAIN_HOSTS = 290
MAX_PEERS = 16


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("reach300")
    return build_demo_llm(root / "llm"), build_demo_diffusion(root / "diffusion")


def image(model: str, prompt: str) -> ImageRequest:
    return ImageRequest(
        model=model,
        prompt=prompt,
        size=None,
        steps=None,
        guidance_milli=None,
        seed=3,
        tier="free",
        account=None,
        client="127.0.0.1",
    )


async def test_jobs_from_random_gateways_to_random_workers_among_300_nodes(tmp_path, model_dirs):
    llm, diffusion = (load_model_dir(d) for d in model_dirs)
    gateway = NodeSpec(worker=False, max_peers=MAX_PEERS)
    validator = NodeSpec(worker=False, max_peers=MAX_PEERS)
    public_worker = NodeSpec(validator=False, max_peers=MAX_PEERS)
    natted_worker = NodeSpec(validator=False, nat=True, max_peers=MAX_PEERS)
    specs = [
        gateway,
        validator,
        natted_worker,
        validator,
        gateway,
        public_worker,
        validator,
        natted_worker,
        validator,
        validator,
    ]
    async with open_node_world(
        tmp_path,
        specs,
        list(model_dirs),
        committee_size=4,
        extra_hosts=PLAIN_HOSTS,
        seed=11,
    ) as world:
        nodes = world.nodes
        by_key = {n.identity.public_bytes: n for n in nodes}
        assert len(nodes) + len(world.hosts) >= 300
        gateways = [nodes[0], nodes[4]]
        workers = [nodes[2], nodes[5], nodes[7]]
        for w in workers:
            await world.until(nodes[0], w.host.reach.published.is_set, 90)
        for g in gateways:
            for m in (llm, diffusion):
                await world.until(g, lambda g=g, m=m: g.gateway.live_workers(m.model_id) == 3, 90)
        # every validator holds its overlay links (D105)
        validators = [n for n, spec in zip(nodes, specs, strict=True) if spec.validator]
        overlay = overlay_edges(n.identity.public_bytes for n in validators)
        await world.until(
            nodes[0],
            lambda: all(n.chain.overlay_linked == len(n.host.kept_peers) for n in nodes),
            60,
        )
        for a, b in (tuple(e) for e in overlay):
            assert by_key[a].host.is_connected(by_key[b].host.peer_id)
        # not a full mesh: besides the overlay, most pairs of whole nodes have no connection
        pairs = [
            (a, b)
            for i, a in enumerate(nodes)
            for b in nodes[i + 1 :]
            if frozenset((a.identity.public_bytes, b.identity.public_bytes)) not in overlay
        ]
        linked = sum(a.host.is_connected(b.host.peer_id) for a, b in pairs)
        assert linked < len(pairs) // 2
        for n in nodes:  # regular connections within max_peers (transient and relay clients aside)
            conns = n.host._conns.values()
            regular = [c for c in conns if not c.transient and not n.host._reserved(c)]
            assert len(regular) <= MAX_PEERS

        rng = random.Random(13)
        jobs = [("llm", f"job {k} across the network") for k in range(4)]
        jobs.append(("diffusion", "a lighthouse behind a router"))
        served: set[str] = set()
        for kind, prompt in jobs:
            gw = rng.choice(gateways)
            # whoever the draw picks: who had no connection to it at submission
            unlinked = {
                str(w.identity.peer_id): {
                    n.identity.public_bytes
                    for n in nodes
                    if not w.host.is_connected(n.host.peer_id)
                }
                for w in workers
            }
            if kind == "llm":
                result = await gw.gateway.complete(completion(llm.manifest.name, prompt))
            else:
                result = await gw.gateway.generate_image(image(diffusion.manifest.name, prompt))
            served.add(result.worker)
            tracked = await world.wait_for_block_with(gw, bytes.fromhex(result.job_id), 120)
            assert tracked.certified and all(v.valid for v in tracked.verdicts.values())
            seated = set(tracked.verdicts) & set(tracked.committee.members)
            assert len(seated) >= 2, (kind, "the certificate names seated members")
            assert seated & unlinked[result.worker], (kind, "every seated member was linked")
        assert sum(w.worker.latents_served for w in workers) > 0
        # nobody can dial a NATed worker: a validator it never dialed reaches it through
        # a relay (whichever worker the diffusion job's draw gave)
        for w in (nodes[2], nodes[7]):
            stranger = next(n for n in validators if not w.host.is_connected(n.host.peer_id))
            before = w.host.relayed_connections
            assert await stranger.host.ensure_connection(w.host.peer_id)
            assert stranger.host._conns[w.host.peer_id].relayed
            assert w.host.relayed_connections == before + 1
