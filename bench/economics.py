"""The adversarial economic simulation: every strategy against every adversary size.

    python bench/economics.py [--blocks 200] [--jobs-per-block 3] [--seeds 1]
                              [--strategies a,b] [--fractions 0.01,0.1,0.3]
                              [--overhead-blocks 1000] [--warmup-blocks 300]
                              [--workers 1]

Drives the real ledger, scheduler, committees, votes and reviews through ``--blocks``
blocks per run (aipg.testing.economy: its docstring is the model of the world). Prints
one line per run, then one JSON object as its last line:
``{"strategies": {NAME: {X: {"reward_ratio", "honest_slashes", "halted_heights"}}},
"verification_overhead": validator compute / worker compute, "blocks": ..., "seconds"}``.
Targets: every ratio <= 1.05, no honest slash, no halted height, overhead <= 0.05.

With ``--seeds 1,2,3`` every cell runs once per seed and its ``reward_ratio`` is the
median (``reward_ratios`` lists them; slashes and halted heights are summed): one run
of a few hundred blocks is one draw of the chain's randomness, and a 1 % or 10 % actor's
share of it moves by a tenth between draws (its worker runs some 90 jobs in 400 blocks
at x = 0.1). Every strategy of a seed meets the same honest jobs (D107's note in the
design doc). ``--workers N`` runs the cells in N processes.

The overhead is measured on its own honest run of ``--overhead-blocks`` blocks (x = 0.1),
from block ``--warmup-blocks`` on: audit sampling (D79-D81) checks every job of a worker
until its record builds, so the figure is the steady state once reputations have built;
``verification_overhead_whole_run`` is the same run from block 0 (warm-up included),
``verification_overhead_strategy_runs`` the strategies' runs together.
``verification_overhead_mainnet`` is the same run's steady state had each audited claim
been checked by mainnet's job committee (``audit_committee_size``, 22 seats, D101) and
each review by mainnet's 2 x 68 (D98); ``verification_overhead_mainnet_68_seats`` with
68-seat audits, as before D98. (The simulation's thirteen validators cannot seat 68.)
"""

from __future__ import annotations

import argparse
import concurrent.futures
import functools
import json
import statistics
import sys
import time

from aipg.stake.genesis import MAINNET_PARAMS
from aipg.testing.economy import FRACTIONS, STRATEGIES, Config, Economy

REVIEW_SEATS = 2 * MAINNET_PARAMS.committee_size  # a review draws twice the seats


def _run(cell: tuple[str, float, int], *, blocks: int, jobs: int) -> tuple:
    """One strategy, one adversary size, one seed: (ratio, honest slashes, halted
    heights, validator MACs, worker MACs)."""
    name, x, seed = cell
    out = Economy(Config(name, x, blocks, jobs, seed=seed)).run()
    return (round(out.reward_ratio, 3), out.honest_slashes, out.halted_heights,
            out.validator_macs, out.worker_macs)  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--blocks", type=int, default=200)
    ap.add_argument("--jobs-per-block", type=int, default=3)
    ap.add_argument("--seeds", default="1", help="comma-separated; a cell is their median")
    ap.add_argument("--seed", type=int, help="one seed (the same as --seeds N)")
    ap.add_argument("--workers", type=int, default=1, help="processes running the cells")
    ap.add_argument("--strategies", default=",".join(STRATEGIES))
    ap.add_argument("--fractions", default=",".join(str(x) for x in FRACTIONS))
    ap.add_argument("--overhead-blocks", type=int, default=1000)
    ap.add_argument("--warmup-blocks", type=int, default=300)
    args = ap.parse_args(argv)
    start = time.perf_counter()
    seeds = [args.seed] if args.seed is not None else [int(x) for x in args.seeds.split(",")]
    cells = [
        (name, float(x), seed)
        for name in args.strategies.split(",")
        for x in args.fractions.split(",")
        for seed in seeds
    ]
    runs = {}
    work = functools.partial(_run, blocks=args.blocks, jobs=args.jobs_per_block)
    if args.workers > 1:
        with concurrent.futures.ProcessPoolExecutor(args.workers) as pool:
            for cell, out in zip(cells, pool.map(work, cells), strict=True):
                runs[cell] = out
                print(f"{cell[0]:20s} x={cell[1]:<5} seed={cell[2]} {out}", file=sys.stderr)
    else:
        for cell in cells:
            runs[cell] = work(cell)
            print(f"{cell[0]:20s} x={cell[1]:<5} seed={cell[2]} {runs[cell]}", file=sys.stderr)
    table: dict[str, dict[str, dict]] = {}
    checked = worked = 0
    for (name, x, _), out in runs.items():
        cell = table.setdefault(name, {}).setdefault(
            str(x), {"reward_ratios": [], "honest_slashes": 0, "halted_heights": 0}
        )
        cell["reward_ratios"].append(out[0])
        cell["honest_slashes"] += out[1]
        cell["halted_heights"] += out[2]
        checked += out[3]
        worked += out[4]
    for by_x in table.values():
        for cell in by_x.values():
            cell["reward_ratio"] = round(statistics.median(cell["reward_ratios"]), 3)
    seed = seeds[0]
    long = Economy(Config("honest", 0.1, args.overhead_blocks, args.jobs_per_block, seed=seed))
    long.run()
    warm = min(args.warmup_blocks, args.overhead_blocks - 1)
    result = {
        "strategies": table,
        "verification_overhead": round(long.overhead(warm), 4),
        "verification_overhead_whole_run": round(long.overhead(), 4),
        # every audited claim checked by mainnet's job committee (22 seats) and every
        # review by its 2 x 68 seats (D98, D101); the same run, the same blocks
        "verification_overhead_mainnet": round(
            long.overhead_at(MAINNET_PARAMS.job_committee_size(), REVIEW_SEATS, warm), 4
        ),
        # what mainnet's audits cost with 68-seat job committees (before D98)
        "verification_overhead_mainnet_68_seats": round(
            long.overhead_at(MAINNET_PARAMS.committee_size, REVIEW_SEATS, warm), 4
        ),
        "verification_overhead_strategy_runs": round(checked / worked, 3) if worked else 0.0,
        "overhead_blocks": args.overhead_blocks,
        "warmup_blocks": warm,
        "audits": long.audits,
        "certified": len(long.certified),
        "blocks": args.blocks,
        "seeds": seeds,
        "seconds": round(time.perf_counter() - start, 1),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
