"""The adversarial economic simulation: every strategy against every adversary size.

    python bench/economics.py [--blocks 200] [--jobs-per-block 3] [--seed 1]
                              [--strategies a,b] [--fractions 0.01,0.1,0.3]

Drives the real ledger, scheduler, committees, votes and reviews through ``--blocks``
blocks per run (aipg.testing.economy: its docstring is the model of the world). Prints
one line per run, then one JSON object as its last line:
``{"strategies": {NAME: {X: {"reward_ratio", "honest_slashes", "halted_heights"}}},
"verification_overhead": validator compute / worker compute, "blocks": ..., "seconds"}``.
Targets: every ratio <= 1.05, no honest slash, no halted height, overhead <= 0.05.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from aipg.testing.economy import FRACTIONS, STRATEGIES, Config, Economy


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--blocks", type=int, default=200)
    ap.add_argument("--jobs-per-block", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--strategies", default=",".join(STRATEGIES))
    ap.add_argument("--fractions", default=",".join(str(x) for x in FRACTIONS))
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
    result = {
        "strategies": table,
        "verification_overhead": round(checked / worked, 3) if worked else 0.0,
        "blocks": args.blocks,
        "seconds": round(time.perf_counter() - start, 1),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
