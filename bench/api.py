"""What the HTTP API costs on top of the job it carries.

Serves the API with Hypercorn on 127.0.0.1 in front of the tests' runner gateway (the demo
models run in process), and interleaves, round by round so that machine noise hits all
alike:

- the same 16-token greedy completion through ``gateway.complete`` directly and through
  ``POST /v1/completions`` on a kept-alive connection: ``api_overhead_ms`` is the
  difference of the medians, ``api_over_direct`` their ratio;
- the same completion streamed: time to the first event and to ``[DONE]``;
- ``GET /v1/models`` and a rejected (400) malformed body against ``GET /`` of a bare
  Starlette app on its own Hypercorn server (the HTTP stack's own cost): ``*_over_bare``.

Prints one JSON object as its last line. Usage: ``python bench/api.py [--rounds N]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import trio
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from aipg.models import build_demo_diffusion, build_demo_llm
from aipg.node.http.app import build_app, serve_api
from aipg.testing.apikit import RunnerGateway
from aipg.testing.nodes import completion

MAX_TOKENS = 16
PROMPT = "The validators check the receipt and sign their verdicts."


async def timed(fn) -> float:
    start = time.perf_counter()
    await fn()
    return (time.perf_counter() - start) * 1000


async def bench(rounds: int, root: Path) -> dict:
    gateway = RunnerGateway(build_demo_llm(root / "llm"), build_demo_diffusion(root / "diff"))
    model = gateway.resolve_model("aipg-demo-llm")
    app = build_app(gateway, gateway, free_tier_per_minute=1_000_000)
    body = {"model": model.id, "prompt": PROMPT, "max_tokens": MAX_TOKENS, "temperature": 0}
    direct_req = completion(model.id, PROMPT, max_tokens=MAX_TOKENS, seed=None)
    times: dict[str, list[float]] = {
        k: [] for k in ("direct", "api", "stream_first", "stream_done", "models", "reject", "bare")
    }
    bare_app = Starlette(routes=[Route("/", lambda request: PlainTextResponse("ok"))])
    async with trio.open_nursery() as nursery:
        address = await nursery.start(serve_api, app, "127.0.0.1", 0)
        bare_address = await nursery.start(serve_api, bare_app, "127.0.0.1", 0)
        async with (
            httpx.AsyncClient(base_url=address.url, timeout=60) as h,
            httpx.AsyncClient(base_url=bare_address.url, timeout=60) as bare_h,
        ):

            async def api() -> None:
                response = await h.post("/v1/completions", json=body)
                assert response.status_code == 200, response.text

            async def stream() -> None:
                start = time.perf_counter()
                first = None
                async with h.stream("POST", "/v1/completions", json={**body, "stream": True}) as r:
                    async for line in r.aiter_lines():
                        if first is None and line.startswith("data:"):
                            first = (time.perf_counter() - start) * 1000
                        if line == "data: [DONE]":
                            break
                times["stream_first"].append(first or 0.0)
                times["stream_done"].append((time.perf_counter() - start) * 1000)

            async def models() -> None:
                assert (await h.get("/v1/models")).status_code == 200

            async def reject() -> None:
                assert (await h.post("/v1/completions", content=b"{oops")).status_code == 400

            async def bare() -> None:
                assert (await bare_h.get("/")).status_code == 200

            for _ in range(3):  # warm up sessions, connections, caches
                await gateway.complete(direct_req)
                await api()
                await bare()
            for _ in range(rounds):
                times["direct"].append(await timed(lambda: gateway.complete(direct_req)))
                times["api"].append(await timed(api))
                await stream()
                times["models"].append(await timed(models))
                times["reject"].append(await timed(reject))
                times["bare"].append(await timed(bare))
        nursery.cancel_scope.cancel()
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "bench": "api",
        "rounds": rounds,
        "max_tokens": MAX_TOKENS,
        "direct_completion_ms": round(med["direct"], 3),
        "api_completion_ms": round(med["api"], 3),
        "api_overhead_ms": round(med["api"] - med["direct"], 3),
        "api_over_direct": round(med["api"] / med["direct"], 3),
        "stream_first_event_ms": round(med["stream_first"], 3),
        "stream_done_ms": round(med["stream_done"], 3),
        "models_ms": round(med["models"], 3),
        "reject_400_ms": round(med["reject"], 3),
        "bare_starlette_ms": round(med["bare"], 3),
        "models_over_bare": round(med["models"] / med["bare"], 3),
        "reject_over_bare": round(med["reject"] / med["bare"], 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=40)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = trio.run(bench, args.rounds, Path(tmp))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
