"""What a whole node's join costs as the in-process network grows (issue 13, D103).

    python bench/joins.py --sizes 10,20,40,80 --idle 10

For each size n: one :class:`aipg.gossip.MemoryNetwork` of n whole nodes as
``tests/node/test_reach_300_whole.py`` builds them (``open_node_world(sparse=2)``,
max_peers 16, 30 % of the followers behind NAT, seven validators started last, 2 s
blocks, both demo models hosted by every node), started one after the other. Each
join is timed from the previous node's start to its own (wall and process CPU: the
join's own work plus whatever the nodes already running did meanwhile); then the
running network is left idle for ``--idle`` seconds and its CPU per second measured,
with the heights it made. A join's cost is flat in n when the idle CPU per node is
flat and small: a node that joins a busier process waits for the others.

Per size: ``join_cpu_ms_p50`` (median over the followers' joins in the last quarter,
the biggest network they joined), ``join_wall_ms_p50``, ``idle_cpu_s_per_s``,
``idle_cpu_ms_per_node_s`` and ``heights`` (made while idle). Last line: one JSON
object with ``sizes`` and those figures by size, and ``join_cpu_growth`` (the largest
size's median join CPU over the smallest's).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

import trio

from aipg.models import build_demo_diffusion, build_demo_llm
from aipg.testing.nodes import NodeSpec, open_node_world

VALIDATORS = 7
NAT_SHARE = 0.3
BLOCK_TIME_MS = 2000


def specs(n: int, rng: random.Random) -> list[NodeSpec]:
    validators = set(rng.sample(range(n), min(VALIDATORS, n)))
    return [
        NodeSpec(
            validator=i in validators,
            nat=i not in validators and i >= 4 and rng.random() < NAT_SHARE,
            max_peers=16,
        )
        for i in range(n)
    ]


async def one_size(root: Path, models: list[Path], n: int, idle: float) -> dict:
    world_specs = specs(n, random.Random(29))
    joins: list[tuple[int, float, float]] = []  # (node index, wall s, cpu s)
    last = [time.perf_counter(), time.process_time()]

    def on_start(i: int, _node) -> None:
        t, c = time.perf_counter(), time.process_time()
        joins.append((i, t - last[0], c - last[1]))
        last[0], last[1] = t, c

    async with open_node_world(
        root,
        world_specs,
        models,
        committee_size=4,
        sparse=2,
        block_time_ms=BLOCK_TIME_MS,
        seed=31,
        on_start=on_start,
    ) as world:
        h0 = min(node.chain.height for node in world.nodes)
        c0, w0 = time.process_time(), time.perf_counter()
        await trio.sleep(idle)
        cpu = (time.process_time() - c0) / (time.perf_counter() - w0)
        heights = min(node.chain.height for node in world.nodes) - h0
    followers = [j for j in joins if not world_specs[j[0]].validator]
    tail = followers[len(followers) * 3 // 4 :] or followers
    return {
        "join_cpu_ms_p50": round(1000 * statistics.median(j[2] for j in tail), 1),
        "join_wall_ms_p50": round(1000 * statistics.median(j[1] for j in tail), 1),
        "idle_cpu_s_per_s": round(cpu, 3),
        "idle_cpu_ms_per_node_s": round(1000 * cpu / n, 2),
        "heights": heights,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="10,20,40,80")
    ap.add_argument("--idle", type=float, default=10.0)
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    root = Path(tempfile.mkdtemp(prefix="joins-"))
    models = [build_demo_llm(root / "llm"), build_demo_diffusion(root / "diffusion")]
    out: dict[int, dict] = {}
    for n in sizes:
        out[n] = trio.run(one_size, root / f"w{n}", models, n, args.idle)
        print(f"{n} nodes: {out[n]}", flush=True)
    first, last = out[sizes[0]], out[sizes[-1]]
    summary = {
        "sizes": sizes,
        **{k: {n: out[n][k] for n in sizes} for k in out[sizes[0]]},
        "join_cpu_growth": round(last["join_cpu_ms_p50"] / max(first["join_cpu_ms_p50"], 0.1), 2),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
