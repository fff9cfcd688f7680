"""`make demo`: a local devnet doing real jobs, verified and paid in blocks.

    python -m aipg.cli.demo [--dir demo-out] [--nodes 4]

Starts 4 node processes on 127.0.0.1 with a fresh genesis, builds the demo models,
sends 3 LLM jobs (one streamed, one on the paid tier) and 1 image job through the
OpenAI-compatible API with the official ``openai`` client, waits until every receipt is
certified by its committee in a finalized block, prints what each job paid and the
balances, writes the image, and stops every node. Exit status 0 means all of it worked.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from aipg.devnet.plan import DevnetError
from aipg.devnet.run import run_devnet_cli

NEXT_STEPS = """
what to try next:
  .venv/bin/aipg-node devnet --nodes 4                        a devnet that keeps running
      (then, in another terminal, on the URL it prints:)
  .venv/bin/aipg-node status --node http://127.0.0.1:PORT     height, peers, bootstrap address
  .venv/bin/aipg-node submit --help                           send your own job, wait for its block
  .venv/bin/aipg-node join --help                             run a node of your own
  docs/design.md                                              how the pieces fit together"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="aipg-node-demo", description=__doc__.splitlines()[0])
    ap.add_argument(
        "--dir", default="demo-out", help="where the devnet lives (default: demo-out, replaced)"
    )
    ap.add_argument("--nodes", type=int, default=4, help="node processes (default 4)")
    ap.add_argument("--block-time", type=float, default=1.0, help="seconds per block (default 1)")
    ap.add_argument("--timeout", type=float, default=170.0, help="give up after this many seconds")
    args = ap.parse_args(argv)
    t0 = time.monotonic()
    try:
        status = run_devnet_cli(
            root=Path(args.dir) / "devnet",
            nodes=args.nodes,
            block_time_ms=int(args.block_time * 1000),
            jobs=4,
            exit_when_done=True,
            timeout=args.timeout,
            out=sys.stdout,
        )
    except DevnetError as e:
        print(f"demo failed: {e}", file=sys.stderr)
        return 1
    if status == 0:
        print(f"\ndemo finished in {time.monotonic() - t0:.0f} s")
        print(NEXT_STEPS.format(dir=args.dir))
    return status


if __name__ == "__main__":
    sys.exit(main())
