"""GossipSub mesh benchmark: N hosts in one process, websockets on 127.0.0.1 or in memory.

    python bench/gossip.py --transport ws --nodes 25 --messages 500 --rate 0
    python bench/gossip.py --transport ws --nodes 25 --messages 100 --rate 5
    python bench/gossip.py --transport memory --nodes 1000 --messages 50

Builds a connected sparse topology (a random spanning tree plus ~3 extra dials per
node), waits for every mesh to form, publishes from random nodes (``--rate 0``: as fast
as the publisher's queues allow; else R messages/s) and prints one JSON object as its
last line:

* ``delivery_ratio``: remote deliveries / (messages × (nodes - 1))
* ``p50_ms``, ``p99_ms``: publish call → each remote delivery
* ``delivered_per_s``: remote deliveries / (first publish → last delivery)
* ``duplicates_per_message``: duplicate receptions (all nodes) per message
* ``cpu_s_per_1k_delivered``: process CPU seconds per 1000 remote deliveries
* ``peak_rss_mb``
* ``reference_verify_per_s``: Ed25519 verifications/s on this machine in the same run,
  and ``delivered_per_verify``: delivered_per_s divided by it (a machine-independent
  ratio: every delivery costs at least one signature check somewhere).

It ends on its own (a deadline after the last publish) and uses only 127.0.0.1.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import resource
import statistics
import sys
import time

import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from aipg.gossip import GossipError, GossipHost, MemoryNetwork, topic
from aipg.gossip.config import GossipSubParams
from aipg.testing.gossipkit import config, sparse_edges, start_hosts
from aipg.wire import Identity

T = topic("bench")


def reference_verify_rate(seconds: float = 0.3) -> float:
    """Cold Ed25519 verifications per second (straight to ``cryptography``, no caches)."""
    key = Ed25519PrivateKey.from_private_bytes(bytes(32))
    public = key.public_key()
    data = b"x" * 256
    sig = key.sign(data)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(100):
            public.verify(sig, data)
        n += 100
    return n / (time.perf_counter() - start)


def unshare_verify_cache() -> None:
    """Make every node pay for its own signature checks, as separate processes would.

    ``aipg.wire`` may remember verified signatures process-wide; with all nodes in one
    process the first node's check would then serve the other N-1, which no real
    deployment (one node per process) and no other single-process stack enjoys.
    """
    from aipg.wire import keys

    if hasattr(keys, "_remember"):
        keys._remember = lambda _key: None
    if hasattr(keys, "forget_verified"):
        keys.forget_verified()


def mesh_ready(hosts: list[GossipHost]) -> bool:
    """Every node meshed, and nearly all at D_lo or more.

    A few low-degree nodes may wait out a PRUNE backoff (60 s) below D_lo: a peer whose
    mesh was full refused their GRAFT. That is the protocol working, not a broken mesh.
    """
    short = 0
    for h in hosts:
        subscribed = len(h.router.topic_peers.get(T, ()))
        mesh = len(h.router.mesh_peers(T))
        if subscribed == 0 or mesh == 0:
            return False
        if mesh < min(4, subscribed):
            short += 1
    return short <= len(hosts) // 100


async def main(args) -> dict:
    if not args.share_verify_cache:
        unshare_verify_cache()
    rng = random.Random(args.seed)
    network = MemoryNetwork() if args.transport == "memory" else None  # None: websockets
    params = GossipSubParams(heartbeat_interval=args.heartbeat)
    received: list[list[tuple[int, float]]] = [[] for _ in range(args.nodes)]
    publish_at: dict[int, float] = {}
    total_wanted = args.messages * (args.nodes - 1)
    done = trio.Event()
    count = 0

    async with trio.open_nursery() as nursery:
        hosts = await start_hosts(
            nursery,
            args.nodes,
            network=network,
            make_config=lambda i: config(
                args.seed * 100003 + i,
                gossipsub=params,
                max_peers=max(64, args.nodes),
                high_water=max(48, args.nodes),
                low_water=max(32, args.nodes),
                outbound_queue=args.queue,
            ),
            make_identity=lambda _: Identity.from_seed(rng.randbytes(32)),
            first=0,
        )
        subs = [h.subscribe(T) for h in hosts]

        per_message = [0] * args.messages
        completed = 0
        completion = trio.Event()

        async def collect(i: int, sub) -> None:
            nonlocal count, completed, completion
            log = received[i]
            async for item in sub:
                k = int.from_bytes(item.data[:8], "big")
                log.append((k, time.perf_counter()))
                count += 1
                per_message[k] += 1
                if per_message[k] == args.nodes - 1:
                    completed += 1
                    completion.set()
                    completion = trio.Event()
                if count >= total_wanted:
                    done.set()

        async def wait_for_window(published: int) -> None:
            """Flat out means: keep --window messages in flight, no more (more only drops)."""
            while published - completed >= args.window:
                with trio.move_on_after(args.stall):
                    await completion.wait()
                    continue
                return  # nothing completed for a while: a message was lost; go on

        for i, sub in enumerate(subs):
            nursery.start_soon(collect, i, sub)

        t0 = time.perf_counter()
        edges = sparse_edges(args.nodes, args.extra, rng)
        limiter = trio.CapacityLimiter(32)  # one process does every handshake: pace them
        failed: list[str] = []

        async def dial(a: int, b: int) -> None:
            async with limiter:
                for attempt in range(3):
                    try:
                        await hosts[a].connect(hosts[b].listen_addrs[0])
                        return
                    except GossipError as e:
                        if attempt == 2:
                            failed.append(str(e))

        async with trio.open_nursery() as dials:
            for a, b in edges:
                dials.start_soon(dial, a, b)
        if failed:
            print(f"{len(failed)} dials failed, e.g. {failed[0]}", file=sys.stderr)
        connect_s = time.perf_counter() - t0
        with trio.move_on_after(args.mesh_timeout):
            while not mesh_ready(hosts):
                await hosts[0].router.heartbeat_done.wait()
        for _ in range(args.settle):  # let the first GRAFT/PRUNE rounds settle
            await hosts[0].router.heartbeat_done.wait()
        mesh_s = time.perf_counter() - t0 - connect_s
        print(
            f"{args.nodes} nodes, {len(edges)} connections in {connect_s:.1f}s; "
            f"mesh ready={mesh_ready(hosts)} after {mesh_s:.1f}s",
            file=sys.stderr,
        )

        if args.gc_freeze:
            # Production servers freeze their long-lived startup objects so full collections
            # stop re-scanning them (a node would do the same after start-up).
            gc.collect()
            gc.freeze()
        authors = [rng.randrange(args.nodes) for _ in range(args.messages)]
        pad = b"\x00" * max(0, args.size - 8)
        cpu0 = time.process_time()
        first_publish = time.perf_counter()
        for k, a in enumerate(authors):
            if args.rate > 0:
                await trio.sleep_until(_trio_deadline(first_publish, k / args.rate))
            else:
                await wait_for_window(k)
                await _wait_for_room(hosts[a])
            publish_at[k] = time.perf_counter()
            await hosts[a].publish(T, k.to_bytes(8, "big") + pad)
        # Wait for every delivery; give up after --stall seconds without progress (a lost
        # message never arrives) or --drain-timeout in all.
        with trio.move_on_after(args.drain_timeout):
            while not done.is_set():
                before = count
                with trio.move_on_after(args.stall):
                    await done.wait()
                if count == before:
                    break
        cpu = time.process_time() - cpu0
        dropped = sum(c.dropped for h in hosts for c in h._conns.values())
        nursery.cancel_scope.cancel()

    latencies = []
    last = first_publish
    for i, log in enumerate(received):
        for k, at in log:
            if authors[k] != i:
                latencies.append((at - publish_at[k]) * 1000)
                last = max(last, at)
    delivered = len(latencies)
    if args.verbose:
        worst: dict[int, float] = {}
        for i, log in enumerate(received):
            for k, at in log:
                if authors[k] != i:
                    worst[k] = max(worst.get(k, 0.0), (at - publish_at[k]) * 1000)
        for k in sorted(worst, key=worst.get, reverse=True)[:10]:
            offset = publish_at[k] - first_publish
            print(
                f"message {k} published at +{offset:.2f}s: slowest delivery {worst[k]:.1f} ms",
                file=sys.stderr,
            )
    duplicates = sum(h.router.stats.duplicates for h in hosts)
    lat = sorted(latencies) or [float("nan")]
    verify_rate = reference_verify_rate()
    per_s = delivered / (last - first_publish) if last > first_publish else 0.0
    return {
        "transport": args.transport,
        "nodes": args.nodes,
        "messages": args.messages,
        "rate": args.rate,
        "size": args.size,
        "gc_freeze": args.gc_freeze,
        "share_verify_cache": args.share_verify_cache,
        "delivery_ratio": round(delivered / total_wanted, 4),
        "p50_ms": round(statistics.median(lat), 2),
        "p99_ms": round(lat[min(len(lat) - 1, int(0.99 * len(lat)))], 2),
        "delivered_per_s": round(per_s, 1),
        "duplicates_per_message": round(duplicates / args.messages, 2),
        "dropped_frames": dropped,
        "cpu_s_per_1k_delivered": round(cpu / max(1, delivered) * 1000, 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "reference_verify_per_s": round(verify_rate),
        "delivered_per_verify": round(per_s / verify_rate, 4),
    }


def _trio_deadline(start_perf: float, offset: float) -> float:
    return trio.current_time() + (start_perf + offset - time.perf_counter())


async def _wait_for_room(host: GossipHost) -> None:
    """Flat out, but never past the publisher's own queues (that would only drop)."""
    while any(
        c.send_q.statistics().current_buffer_used > host.config.outbound_queue // 2
        for c in host._conns.values()
    ):
        await trio.sleep(0.001)
    await trio.lowlevel.checkpoint()


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--transport", choices=["ws", "memory"], default="memory")
    p.add_argument("--nodes", type=int, default=25)
    p.add_argument("--messages", type=int, default=100)
    p.add_argument("--rate", type=float, default=0.0, help="messages/s; 0 = as fast as possible")
    p.add_argument("--size", type=int, default=256, help="message size in bytes (>= 8)")
    p.add_argument("--extra", type=int, default=3, help="extra dials per node beyond the tree")
    p.add_argument("--heartbeat", type=float, default=1.0)
    p.add_argument("--queue", type=int, default=512, help="per-peer outbound queue")
    p.add_argument("--window", type=int, default=64, help="--rate 0: messages in flight at most")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--settle", type=int, default=2, help="heartbeats to wait after the mesh forms")
    p.add_argument("--verbose", action="store_true", help="list the slowest messages")
    p.add_argument("--mesh-timeout", type=float, default=30.0)
    p.add_argument("--drain-timeout", type=float, default=600.0)
    p.add_argument(
        "--stall", type=float, default=10.0, help="seconds without a delivery to give up"
    )
    p.add_argument(
        "--share-verify-cache",
        action="store_true",
        help="let nodes share wire's verified-signature cache (off: each node verifies)",
    )
    p.add_argument(
        "--gc-freeze",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="gc.freeze() the set-up objects before publishing (default: on)",
    )
    args = p.parse_args(argv)
    if args.size < 8 or args.nodes < 2 or args.messages < 1:
        p.error("need --size >= 8, --nodes >= 2, --messages >= 1")
    return args


if __name__ == "__main__":
    result = trio.run(main, parse_args())
    print(json.dumps(result))
