"""What forced errors cost a non-streamed answer (D94): in-process nodes on a chain with
forced errors on, paid requests on the latency route (D84), each answered as soon as
the worker's output arrives while its receipt waits for the job's seed beacon.

For each request: ``answer_ms`` (request -> the client's answer), ``receipt_ms``
(request -> the receipt at the gateway: when the answer came before D94, since the
worker sent nothing until it had signed), and the chain heights of the answer and of
the job's seed beacon block. Medians over the rounds; the first request (the chain
warming up) is not counted. The last line is one JSON object.

    python bench/forced_latency.py [--rounds 9] [--block-ms 250] [--forced-bps 10000]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import trio

from aipg.models import build_demo_llm, load_model_dir
from aipg.pouw import COMMITTEE_DELAY
from aipg.stake.assign import worker_weights_at
from aipg.testing.nodes import NodeSpec, add_paid_account, completion, open_node_world
from aipg.wire import UNITS_PER_AIPG, Identity


async def run(root: Path, rounds: int, block_ms: int, forced_bps: int) -> dict:
    llm_dir = build_demo_llm(root / "llm")
    model = load_model_dir(llm_dir)
    client = Identity.from_seed(b"\x61" * 32)
    specs = [NodeSpec(worker=False), NodeSpec(), *(NodeSpec(worker=False) for _ in range(3))]
    answer, receipt, before = [], [], 0
    async with open_node_world(
        root / "world",
        specs,
        [llm_dir],
        forced_error_bps=forced_bps,
        block_time_ms=block_ms,
        accounts=[(client, 100 * UNITS_PER_AIPG)],
    ) as world:
        gateway = world.nodes[0]
        gw = gateway.gateway
        account = add_paid_account(gateway, client)

        def ready() -> bool:
            s = gateway.chain.state
            return bool(gw.live_workers(model.model_id)) and bool(
                worker_weights_at(s, s.height, model.model_id)
            )

        await world.until(gateway, ready, 120)
        for i in range(rounds + 1):
            start = time.perf_counter()
            req = completion("aipg-demo-llm", f"bench {i}", seed=i, account=account)
            result = await gw.complete(req)
            answered = time.perf_counter()
            height = gateway.chain.height
            jid = bytes.fromhex(result.job_id)
            entry = gw.jobs[jid]
            with trio.fail_after(120):
                await entry.done.wait()
            received = time.perf_counter()
            committed = await world.until(
                gateway, lambda jid=jid: gateway.chain.state.commitments.get(jid), 60
            )
            if i == 0:
                continue
            answer.append((answered - start) * 1e3)
            receipt.append((received - start) * 1e3)
            before += height < committed + COMMITTEE_DELAY
    a, r = statistics.median(answer), statistics.median(receipt)
    return {
        "rounds": rounds,
        "block_ms": block_ms,
        "forced_error_bps": forced_bps,
        "answer_ms": round(a, 1),
        "receipt_ms": round(r, 1),
        "answer_over_receipt": round(a / r, 3),
        "answered_before_beacon": f"{before}/{rounds}",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--block-ms", type=int, default=250)
    parser.add_argument("--forced-bps", type=int, default=10_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = trio.run(run, Path(tmp), args.rounds, args.block_ms, args.forced_bps)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
