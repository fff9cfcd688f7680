"""The adversarial economic simulation: every strategy against every adversary size.

    python bench/economics.py [--blocks 200] [--jobs-per-block 3] [--seed 1]
                              [--strategies a,b] [--fractions 0.01,0.1,0.3]
                              [--overhead-blocks 1000] [--warmup-blocks 300]

Drives the real ledger, scheduler, committees, votes and reviews through ``--blocks``
blocks per run (aipg.testing.economy: its docstring is the model of the world). Prints
one line per run, then one JSON object as its last line:
``{"strategies": {NAME: {X: {"reward_ratio", "honest_slashes", "halted_heights"}}},
"verification_overhead": validator compute / worker compute, "blocks": ..., "seconds"}``.
Targets: every ratio <= 1.05, no honest slash, no halted height, overhead <= 0.05.

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
import json
import sys
import time

from aipg.stake.genesis import MAINNET_PARAMS
from aipg.testing.economy import FRACTIONS, STRATEGIES, Config, Economy

REVIEW_SEATS = 2 * MAINNET_PARAMS.committee_size  # a review draws twice the seats


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--blocks", type=int, default=200)
    ap.add_argument("--jobs-per-block", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--strategies", default=",".join(STRATEGIES))
    ap.add_argument("--fractions", default=",".join(str(x) for x in FRACTIONS))
    ap.add_argument("--overhead-blocks", type=int, default=1000)
    ap.add_argument("--warmup-blocks", type=int, default=300)
    args = ap.parse_args(argv)
    start = time.perf_counter()
    table: dict[str, dict[str, dict]] = {}
    checked = worked = 0
    for name in args.strategies.split(","):
        for x in (float(f) for f in args.fractions.split(",")):
            cfg = Config(name, x, args.blocks, args.jobs_per_block, seed=args.seed)
            out = Economy(cfg).run()
            table.setdefault(name, {})[str(x)] = {
                "reward_ratio": round(out.reward_ratio, 3),
                "honest_slashes": out.honest_slashes,
                "halted_heights": out.halted_heights,
            }
            checked += out.validator_macs
            worked += out.worker_macs
            print(f"{name:20s} x={x:<5} {table[name][str(x)]}", file=sys.stderr, flush=True)
    long = Economy(Config("honest", 0.1, args.overhead_blocks, args.jobs_per_block, seed=args.seed))
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
        "seconds": round(time.perf_counter() - start, 1),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
