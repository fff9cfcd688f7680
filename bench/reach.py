"""Reach benchmark: any node reaches any node in a sparse network with NATed nodes.

    python bench/reach.py --nodes 1000 --nat 0.3 --requests 300 --lookups 300

Builds an in-memory network of ``--nodes`` hosts (max_peers 16, each bootstrapping
from two random earlier public hosts, a ``--nat`` share behind a simulated NAT that
refuses inbound dials), waits until every host has published its signed record
(public ones after AutoNAT, NATed ones once they hold relay reservations), then:

* ``--lookups`` DHT lookups of random peers from random peers (the target's record
  removed from the searcher's address book first): hops (iterative rounds) and ms;
* ``--requests`` request round trips from a random node to a random node (dial on
  demand: from the address book or a lookup, directly or through a relay);
* the added latency of a relayed request over a direct one, on real websockets on
  127.0.0.1: one client, one relay, one target; medians of ``--rtt`` round trips each
  way, interleaved.

Last line: one JSON object (``nodes``, ``request_success``, ``lookup_hops_p50/p99``,
``lookup_ms_p50/p99``, ``lookup_found``, ``direct_ms_p50``, ``relayed_ms_p50``,
``relay_added_ms_p50``, ``setup_s``, ``peak_rss_mb``).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import resource
import statistics
import sys
import time

import trio
import trio.testing

from aipg.gossip import GossipError, GossipHost, WebsocketTransport
from aipg.gossip.relay import RELAY_PROTOCOL, RelayReservation, RelayReserve
from aipg.testing.gossipkit import (
    ECHO,
    LOOPBACK,
    echo,
    identity,
    reach_config,
    start_reach_network,
)
from aipg.wire import Multiaddr, decode, encode


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, math.ceil(q * len(xs)) - 1))] if xs else float("nan")


async def memory_part(args) -> dict:
    t0 = time.perf_counter()
    async with trio.open_nursery() as nursery:
        _, hosts, natted = await start_reach_network(
            nursery, args.nodes, nat_share=args.nat, seed=args.seed
        )
        setup = time.perf_counter() - t0
        print(f"# {args.nodes} hosts up in {setup:.1f}s, {len(natted)} behind NAT", file=sys.stderr)
        rng = random.Random(args.seed + 1)
        hops: list[int] = []
        ms: list[float] = []
        found = 0
        for _ in range(args.lookups):
            a, b = rng.sample(range(args.nodes), 2)
            src, dst = hosts[a], hosts[b]
            src.reach.addrbook.remove(dst.peer_id)
            start = time.perf_counter()
            rec, h = await src.find_peer(dst.peer_id)
            ms.append((time.perf_counter() - start) * 1000)
            hops.append(h)
            found += rec is not None and rec.peer == dst.peer_id
        ok = 0
        failures: list[str] = []
        for k in range(args.requests):
            a, b = rng.sample(range(args.nodes), 2)
            payload = b"r%d" % k
            try:
                if await hosts[a].request(hosts[b].peer_id, ECHO, payload) == b"echo:" + payload:
                    ok += 1
            except GossipError as e:
                failures.append(f"{a}->{b}{' (nat)' if b in natted else ''}: {e!r}"[:200])
        for f in failures[:10]:
            print("# failed:", f, file=sys.stderr)
        nursery.cancel_scope.cancel()
    return {
        "nodes": args.nodes,
        "nat_share": args.nat,
        "natted": len(natted),
        "request_success": ok / max(1, args.requests),
        "requests": args.requests,
        "lookups": args.lookups,
        "lookup_found": found / max(1, args.lookups),
        "lookup_hops_p50": pct(hops, 0.5),
        "lookup_hops_p99": pct(hops, 0.99),
        "log2_nodes": round(math.log2(args.nodes), 2),
        "lookup_ms_p50": round(pct(ms, 0.5), 2),
        "lookup_ms_p99": round(pct(ms, 0.99), 2),
        "setup_s": round(setup, 1),
    }


async def relay_part(args) -> dict:
    """Direct vs relayed round trips to the same target, websockets on loopback."""
    async with trio.open_nursery() as nursery:
        hosts = []
        for i in (901, 902, 903):  # client, relay, target
            cfg = reach_config(i, listen=[LOOPBACK], reachability="public")
            # the round trips come back to back (about 1 ms each on loopback): the
            # target's per-peer request budget (50/s, D86) must not be what is measured
            cfg.request_rate = cfg.request_burst = 1e6
            h = GossipHost(identity(i), cfg, transport=WebsocketTransport())
            h.set_request_handler(ECHO, echo)
            await nursery.start(h.run)
            hosts.append(h)
        client, relay, target = hosts
        await target.connect(relay.listen_addrs[0])
        # the target reserves a slot on the relay, as a NATed node would
        resv = decode(
            await target.request(relay.peer_id, RELAY_PROTOCOL, encode(RelayReserve(ttl=600))),
            RelayReservation,
        )
        assert resv.ok, resv
        target.reach.hub.reserved_on[relay.peer_id] = trio.current_time() + 600
        relayed_addr = Multiaddr.parse(f"{relay.listen_addrs[0]}/p2p-circuit/p2p/{target.peer_id}")
        direct_c = GossipHost(
            identity(904),
            reach_config(904, listen=[LOOPBACK], reachability="public"),
            transport=WebsocketTransport(),
        )
        await nursery.start(direct_c.run)
        await direct_c.connect(target.listen_addrs[0])
        await client.connect(relayed_addr)
        assert client._conns[target.peer_id].relayed
        direct, relayed = [], []
        for k in range(args.rtt):
            for host, out in ((direct_c, direct), (client, relayed)):
                start = time.perf_counter()
                await host.request(target.peer_id, ECHO, b"p%d" % k)
                out.append((time.perf_counter() - start) * 1000)
        nursery.cancel_scope.cancel()
    d, r = statistics.median(direct), statistics.median(relayed)
    return {
        "direct_ms_p50": round(d, 3),
        "relayed_ms_p50": round(r, 3),
        "relay_added_ms_p50": round(r - d, 3),
    }


def main(args) -> dict:
    # The in-memory part runs on trio's autojump clock: timers (heartbeats, backoffs,
    # refreshes) fire as soon as every host is idle, so 1,000 hosts come up in minutes
    # on a loaded machine. Lookup times are measured on the wall clock (perf_counter):
    # they are the real cost of a lookup's work, with no timer inside it.
    result = trio.run(memory_part, args, clock=trio.testing.MockClock(autojump_threshold=0))
    result.update(trio.run(relay_part, args))  # websockets on loopback: the real clock
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return result


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--nodes", type=int, default=1000)
    p.add_argument("--nat", type=float, default=0.3)
    p.add_argument("--requests", type=int, default=300)
    p.add_argument("--lookups", type=int, default=300)
    p.add_argument("--rtt", type=int, default=200)
    p.add_argument("--seed", type=int, default=1)
    return p.parse_args(argv)


if __name__ == "__main__":
    print(json.dumps(main(parse_args())))
