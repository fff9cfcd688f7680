"""Load that spreads on a real devnet: how many of its jobs each node's worker ran.

    python bench/spread.py [--nodes 5] [--jobs 24] [--gateways 1] [--block-time 2]
                           [--trials 20000]

Runs the real command, ``aipg-node devnet --nodes N --jobs K --gateways G
--exit-when-done``, in a temporary directory, reads the worker of every job from the table it prints (the
gateway's GET /api/v1/jobs/{id}), and prints one JSON object as its last line:
``{"jobs", "by_worker", "busiest_over_average", "busiest_over_average_drawn",
"uniform_busiest_over_average_drawn", "seconds"}``. Target (issue 12): with equal workers
the busiest does at most 1.5x the average.

With ``--gateways 1`` all jobs go through node 0's gateway, which is never drawn for its
own free jobs (D58), so node 0 runs only the paid jobs it wins on the latency route
(D84): the average over all nodes counts a worker that cannot be drawn, and
``busiest_over_average_drawn`` is over the nodes that can be. With ``--gateways N`` the
free jobs go through every node's API in turn (paid jobs through node 0's), so every
node is a gateway and every worker is drawn alike: the two figures are the same.
``uniform_busiest_over_average_drawn`` is what a perfectly fair draw gives in expectation
for the same numbers (the median of ``--trials`` multinomial draws, seed 1): with a few
dozen jobs chance alone puts the busiest near 1.3x.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROW = re.compile(r"^\s{2}(\S+)\s+(free|paid)\s+(\S+)…\s")


def workers_of(output: str) -> list[tuple[str, str, str]]:
    """(job label, tier, worker prefix) of every row of the devnet's job table."""
    rows, inside = [], False
    for line in output.splitlines():
        if line.strip() == "jobs:":
            inside = True
            continue
        if inside and line.strip() == "balances:":
            break
        m = ROW.match(line) if inside else None
        if m and m.group(1) != "job":
            rows.append((m.group(1), m.group(2), m.group(3)))
    return rows


def uniform_ratio(jobs: int, workers: int, trials: int) -> float:
    rng = random.Random(1)
    got = []
    for _ in range(trials):
        c = Counter(rng.randrange(workers) for _ in range(jobs))
        got.append(max(c.values()) / (jobs / workers))
    return sorted(got)[len(got) // 2]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=5)
    ap.add_argument("--jobs", type=int, default=24)
    ap.add_argument("--gateways", type=int, default=1)
    ap.add_argument("--block-time", type=float, default=2.0)
    ap.add_argument("--trials", type=int, default=20_000)
    args = ap.parse_args(argv)
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            str(Path(sys.executable).with_name("aipg-node")),
            "devnet",
            "--nodes",
            str(args.nodes),
            "--jobs",
            str(args.jobs),
            "--block-time",
            str(args.block_time),
            "--gateways",
            str(args.gateways),
            "--exit-when-done",
            "--dir",
            str(Path(tmp) / "devnet"),
        ]
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=3_600)
    print(run.stdout[-4_000:], file=sys.stderr)
    if run.returncode:
        print(run.stderr[-4_000:], file=sys.stderr)
        raise SystemExit(f"devnet exited {run.returncode}")
    rows = workers_of(run.stdout)
    load = Counter(w for _, _, w in rows)
    free = Counter(w for _, tier, w in rows if tier == "free")
    total = len(rows)
    # node 0's gateway signed every job; the worker never drawn for a free job is node 0
    drawn = {w: n for w, n in load.items() if free[w] or args.gateways > 1}
    n_drawn = args.nodes if args.gateways > 1 else max(1, args.nodes - 1)
    out = {
        "jobs": total,
        "gateways": args.gateways,
        "by_worker": dict(sorted(load.items(), key=lambda kv: -kv[1])),
        "busiest_over_average": round(max(load.values()) / (total / args.nodes), 3),
        "busiest_over_average_drawn": round(
            max(drawn.values()) / (sum(drawn.values()) / n_drawn), 3
        ),
        "uniform_busiest_over_average_drawn": round(
            uniform_ratio(sum(drawn.values()), n_drawn, args.trials), 3
        ),
        "seconds": round(time.monotonic() - t0, 1),
    }
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
