"""Inference overhead of our runners against bare onnxruntime loops on the same models.

Builds the demo models into a temp dir, then, interleaving the two so that machine noise
hits both alike, times:

- LLM greedy decoding through ``LlmRunner.generate`` and through a bare loop that feeds the
  runner's own onnxruntime session directly (input_ids, attention_mask, position_ids, past
  KV -> argmax): ``llm_overhead = 1 - ours / bare`` in tokens/s;
- diffusion denoising through ``DiffusionRunner.step`` and through a bare loop (unet run,
  classifier-free guidance and the DDIM update in numpy): ``diffusion_overhead`` likewise.

Times are the process's CPU time (``time.process_time``), paired and order-alternated, with
medians: on a shared machine, waiting for a core is noise unrelated to either loop. So the
throughputs are per CPU-second (with 1 intra-op thread, equal to wall time on an idle core).

Then, for issue 14:

- decoding tokens/s of an 8-layer, d_model 256 demo decoder after a 64-token and a
  1,024-token prompt (``tokens_per_s_ctx64``, ``tokens_per_s_ctx1024``), through the
  runner's default cache on the same weights built with ONNX Runtime's GroupQueryAttention
  (one buffer per cache tensor shared by past and present, D91: the headline keys), the
  IO-bound ping-pong cache on the Concat layout whose attention scores transpose no key
  cache (``..._kq``, D87), the plain ``session.run`` path on it (``..._plain``) and the
  default Concat layout (``..._qk``), every round measuring all eight in a rotating order; the
  median of per-round ratios against the ratio of per-token multiply-accumulates
  computed from the model's sizes, attention included (``mac_ratio_ctx1024``; target:
  ``ratio_over_mac`` = ``tokens_per_s_ratio`` / ``mac_ratio_ctx1024`` <= 1.25);
- time to first token through a gateway: two whole nodes (gateway, worker) in this
  process over websockets on 127.0.0.1 (Noise and all), the HTTP API on 127.0.0.1, a streamed
  completion read with httpx, against the runner's own first token on the same prompt
  (``ttft_added_ms``: a paid request on the latency route, D84; ``ttft_added_ms_free``:
  a free one, which waits for its beacon draw), split into the scheduling before the worker starts
  (``ttft_scheduling_ms``: the claim window and the assignment) and the stream from the
  worker's first token to the client's first text (``ttft_stream_ms``). Wall time,
  medians;
- what signing a streamed chunk costs (D85): ``chunk_bytes`` / ``chunk_signed_bytes``,
  ``chunk_sign_us`` (worker), ``chunk_verify_us`` (gateway).

Prints one JSON object as its last line. Usage: ``python bench/inference.py [--rounds N]``
(``--quick`` for the issue 14 figures only, ``--context-only`` for the context figure alone).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import trio

from aipg.models import (
    DiffusionParams,
    DiffusionRunner,
    LlmRunner,
    SamplingParams,
    SessionFactory,
    build_demo,
    build_demo_llm,
)
from aipg.node.http.app import build_app
from aipg.pouw import TokenChunk
from aipg.testing.apikit import running_api
from aipg.testing.nodes import NodeSpec, open_node_world
from aipg.wire import UNITS_PER_AIPG, Identity, encode, require_signature, save_identity, sign

PROMPT = "The validators check the receipt and sign their verdicts."


def bare_llm_loop(
    session: ort.InferenceSession, prompt: list[int], n: int, layers: int, heads: int, head_dim: int
) -> list[int]:
    """Greedy decoding with nothing but onnxruntime and numpy."""
    names = [f"past_key_values.{i}.{k}" for i in range(layers) for k in ("key", "value")]
    outputs = ["logits", *(n.replace("past_key_values", "present") for n in names)]
    past = [np.zeros((1, heads, 0, head_dim), np.float32)] * len(names)
    ids = np.asarray([prompt], np.int64)
    length, tokens = 0, []
    for _ in range(n):
        total = length + ids.shape[1]
        feeds = {
            "input_ids": ids,
            "attention_mask": np.ones((1, total), np.int64),
            "position_ids": np.arange(length, total, dtype=np.int64)[None, :],
        }
        feeds.update(zip(names, past, strict=True))
        out = session.run(outputs, feeds)
        token = int(np.argmax(out[0][0, -1]))
        tokens.append(token)
        past, length, ids = out[1:], total, np.asarray([[token]], np.int64)
    return tokens


def bench_llm(model_dir: Path, factory: SessionFactory, rounds: int, n: int) -> dict:
    runner = LlmRunner(model_dir, factory)
    # The same session object: sessions built alike still differ by a few percent in speed
    # (memory placement), which would swamp the runner's own overhead.
    bare = runner.session
    llm = runner.interface
    prompt = runner.tokenizer.encode(PROMPT)
    params = SamplingParams(max_tokens=n)

    def ours() -> list[int]:
        return runner.generate(prompt, params, seed=0).token_ids

    def theirs() -> list[int]:
        return bare_llm_loop(bare, prompt, n, llm.num_layers, llm.num_heads, llm.head_dim)

    if ours() != theirs():
        raise SystemExit("bench: runner and bare loop disagree on greedy tokens")
    ours_s, bare_s = paired_times(ours, theirs, rounds)
    return {
        "llm_tokens_per_s": round(n / statistics.median(ours_s), 1),
        "llm_bare_tokens_per_s": round(n / statistics.median(bare_s), 1),
        "llm_overhead": overhead(ours_s, bare_s),
    }


def paired_times(ours, theirs, rounds: int) -> tuple[list[float], list[float]]:
    """CPU seconds of this process per call of each, in pairs whose order alternates (so
    drift hits both). CPU time, not wall time: on a shared machine, time spent waiting
    for a core is noise that has nothing to do with either loop."""
    ours_s, bare_s = [], []
    for i in range(rounds):
        for fn, out in ((ours, ours_s), (theirs, bare_s))[:: 1 if i % 2 else -1]:
            start = time.process_time()
            fn()
            out.append(time.process_time() - start)
    return ours_s, bare_s


def overhead(ours_s: list[float], bare_s: list[float]) -> float:
    """1 - ours/bare in throughput, from the median of the paired time ratios."""
    return round(1 - 1 / statistics.median(o / b for o, b in zip(ours_s, bare_s, strict=True)), 4)


def bare_denoise(
    runner: DiffusionRunner,
    unet: ort.InferenceSession,
    latent: np.ndarray,
    embeddings: np.ndarray,
    params: DiffusionParams,
) -> np.ndarray:
    """The denoising loop with only onnxruntime and numpy (same schedule coefficients)."""
    schedule = runner.schedule(params)
    guidance = np.float32(params.guidance_milli / 1000)
    for index, t in enumerate(schedule.timesteps):
        (noise,) = unet.run(
            ["out_sample"],
            {
                "sample": np.concatenate([latent, latent]),
                "timestep": np.full((2,), t, np.int64),
                "encoder_hidden_states": embeddings,
            },
        )
        noise = noise[0:1] + guidance * (noise[1:2] - noise[0:1])
        c1, c2 = schedule._coefficients[index]
        latent = c1 * latent + c2 * noise
    return latent


def bench_diffusion(model_dir: Path, factory: SessionFactory, rounds: int, steps: int) -> dict:
    runner = DiffusionRunner(model_dir, factory)
    unet = runner.unet
    params = DiffusionParams(steps=steps, width=128, height=128)
    conditioning = runner.encode_prompt(PROMPT, params)
    start = runner.initial_latent(0, params)

    def ours() -> np.ndarray:
        latent = start
        for index in range(steps):
            latent = runner.step(latent, index, conditioning, params)
        return latent

    def theirs() -> np.ndarray:
        return bare_denoise(runner, unet, start, conditioning.embeddings, params)

    if not np.array_equal(ours(), theirs()):
        raise SystemExit("bench: runner and bare loop disagree on the final latent")
    ours_s, bare_s = paired_times(ours, theirs, rounds)
    return {
        "diffusion_steps_per_s": round(steps / statistics.median(ours_s), 1),
        "diffusion_bare_steps_per_s": round(steps / statistics.median(bare_s), 1),
        "diffusion_overhead": overhead(ours_s, bare_s),
    }


# -- decoding at context 64 and 1,024 (issue 14) ------------------------------------------

CTX_SHAPE = {"layers": 8, "d_model": 256, "heads": 4, "d_ff": 1024, "context": 1152}
CTX_PROMPTS = (64, 1024)
CTX_DECODE = 32  # tokens decoded after each prompt


def per_token_macs(shape: dict, vocab: int, context: int) -> int:
    """Multiply-accumulates of one decode step attending to ``context`` tokens: per layer
    the q, k, v and o projections (4 d^2), the MLP (2 d d_ff) and attention (q.k over the
    context and the weighted sum of values: 2 context d), then the LM head (d vocab)."""
    d, ff = shape["d_model"], shape["d_ff"]
    return shape["layers"] * (4 * d * d + 2 * d * ff + 2 * context * d) + d * vocab


def decode_seconds(runner: LlmRunner, prompt: list[int], n: int) -> float:
    """CPU seconds per decoded token after ``prompt`` (the prefill excluded)."""
    marks: list[float] = []
    params = SamplingParams(max_tokens=n, temperature_milli=700, top_k=50)
    runner.generate(prompt, params, seed=3, on_token=lambda e: marks.append(time.process_time()))
    if len(marks) < 2:
        raise SystemExit("bench: the context model stopped after one token")
    return (marks[-1] - marks[0]) / (len(marks) - 1)


def bench_context(root: Path, factory: SessionFactory, rounds: int) -> dict:
    """Decoding tokens/s after a 64- and a 1,024-token prompt. Every round measures every
    (variant, context) once, in an order that rotates from round to round, so load on a
    shared machine hits all of them alike; ratios are medians of per-round ratios (the
    pair measured moments apart), rates medians over rounds. Variants: the headline
    ``gqa`` (GroupQueryAttention, one shared buffer per cache tensor, D91), ``kq``
    (IO-bound ping-pong cache on the Concat layout with scores as (K·qᵀ)ᵀ, which copies
    no key cache for a transpose, D87), ``plain`` (that model through ``session.run``)
    and ``qk`` (bound, on the default q·Kᵀ layout, whose Transpose copies the key cache).
    All four have the same weights."""
    gqa_model = build_demo_llm(root / "gqa", attention="gqa", **CTX_SHAPE)
    kq_model = build_demo_llm(root / "kq", kq_scores=True, **CTX_SHAPE)
    qk_model = build_demo_llm(root / "qk", **CTX_SHAPE)
    runners = {
        "gqa": LlmRunner(gqa_model, factory),
        "kq": LlmRunner(kq_model, factory),
        "plain": LlmRunner(kq_model, factory, io_binding=False),
        "qk": LlmRunner(qk_model, factory),
    }
    if runners["gqa"].kv_layout != "shared":
        raise SystemExit("bench: the GQA model did not get the shared-buffer cache")
    first = runners["gqa"]
    vocab = first.interface.vocab_size
    base = first.tokenizer.encode(PROMPT * 200)
    out: dict = {"ctx_model": CTX_SHAPE | {"vocab": vocab}, "ctx_decode_tokens": CTX_DECODE}
    cells = [(name, length) for name in runners for length in CTX_PROMPTS]
    rates: dict[tuple[str, int], list[float]] = {c: [] for c in cells}
    for i in range(rounds):
        shift = i % len(cells)
        for name, length in cells[shift:] + cells[:shift]:
            seconds = decode_seconds(runners[name], base[:length], CTX_DECODE)
            rates[(name, length)].append(1 / seconds)
    short, long = CTX_PROMPTS
    middle = CTX_DECODE // 2  # the average context of the decoded tokens
    mac_ratio = per_token_macs(CTX_SHAPE, vocab, long + middle) / per_token_macs(
        CTX_SHAPE, vocab, short + middle
    )
    out["mac_ratio_ctx1024"] = round(mac_ratio, 3)
    for name, suffix in (("gqa", ""), ("kq", "_kq"), ("plain", "_plain"), ("qk", "_qk")):
        for length in CTX_PROMPTS:
            out[f"tokens_per_s_ctx{length}{suffix}"] = round(
                statistics.median(rates[(name, length)]), 1
            )
        per_round = [a / b for a, b in zip(rates[(name, short)], rates[(name, long)], strict=True)]
        ratio = statistics.median(per_round)
        out[f"tokens_per_s_ratio{suffix}"] = round(ratio, 3)
        out[f"ratio_over_mac{suffix}"] = round(ratio / mac_ratio, 3)  # target <= 1.25
    out["ctx_rounds"] = rounds
    for length in CTX_PROMPTS:
        out[f"io_binding_speedup_ctx{length}"] = round(
            out[f"tokens_per_s_ctx{length}_kq"] / out[f"tokens_per_s_ctx{length}_plain"], 3
        )
        out[f"shared_kv_speedup_ctx{length}"] = round(
            out[f"tokens_per_s_ctx{length}"] / out[f"tokens_per_s_ctx{length}_kq"], 3
        )
    out["ctx_layout"] = "gqa shared buffer (D91); _kq: concat ping-pong (D87)"
    return out


# -- time to first token through a gateway (issue 14) ---------------------------------------

TTFT_BODY = {"model": "aipg-demo-llm", "prompt": PROMPT, "max_tokens": 8, "temperature": 0}


def runner_first_token_ms(llm_dir: Path, rounds: int) -> float:
    """The runner's own time to first token on the bench prompt (wall ms, median)."""
    runner = LlmRunner(llm_dir, SessionFactory(threads=1, provider="cpu"))
    prompt = runner.tokenizer.encode(PROMPT)
    times = []
    marks: list[float] = []
    for _ in range(rounds):
        marks.clear()
        start = time.perf_counter()
        runner.generate(
            prompt, SamplingParams(max_tokens=1), 0, lambda e: marks.append(time.perf_counter())
        )
        times.append((marks[0] - start) * 1e3)
    return statistics.median(times)


async def _first_text(http, body: dict, headers: dict) -> float | None:
    """Stream one completion; the perf_counter time its first non-empty text arrived."""
    seen = None
    async with http.stream("POST", "/v1/completions", json=body, headers=headers) as answer:
        if answer.status_code != 200:
            raise SystemExit(f"bench: the gateway answered {answer.status_code}")
        async for line in answer.aiter_lines():
            if seen is None and line.startswith("data: {") and '"text":""' not in line:
                seen = time.perf_counter()
    return seen


async def bench_ttft(root: Path, llm_dir: Path, rounds: int) -> dict:
    """Time to first token through a gateway over loopback websockets, for a paid request
    (the latency route, D84: assigned at once) and a free one (which waits for its
    beacon draw, D56/D58), rounds interleaved so load hits both alike."""
    import httpx

    own = runner_first_token_ms(llm_dir, rounds)
    specs = [NodeSpec(worker=False), NodeSpec()]
    client = Identity.from_seed(b"\x51" * 32)
    funds = 100 * UNITS_PER_AIPG
    figures: dict[str, dict[str, list[float]]] = {
        route: {"total": [], "stream": [], "schedule": []} for route in ("paid", "free")
    }
    async with open_node_world(
        root, specs, [llm_dir], loopback=True, accounts=[(client, funds)]
    ) as world:
        gateway, worker = world.nodes
        await world.wait_for_worker(gateway, worker.catalog.hosted()[0].id)
        key_file = Path(gateway.data_dir.root) / "bench-client.key"
        save_identity(client, key_file)
        api_key = gateway.gateway.api_keys.add("bench", key_file)
        first_at: list[float] = []
        worker.worker.token_hook = lambda jid, index: (
            first_at.append(time.perf_counter()) if index == 0 else None
        )
        app = build_app(gateway.gateway, gateway, free_tier_per_minute=1_000_000)
        headers = {"paid": {"Authorization": f"Bearer {api_key}"}, "free": {}}
        async with (
            running_api(app) as address,
            httpx.AsyncClient(
                base_url=address.url,
                timeout=60.0,  # a free job waits for its draw (D56)
            ) as http,
        ):
            for i in range(rounds + 1):  # the first pair waits for the chain: not counted
                for route in ("paid", "free")[:: 1 if i % 2 else -1]:
                    first_at.clear()
                    body = TTFT_BODY | {"stream": True, "seed": i}
                    start = time.perf_counter()
                    seen = await _first_text(http, body, headers[route])
                    if i == 0 or seen is None or not first_at:
                        continue
                    f = figures[route]
                    total = (seen - start) * 1e3
                    f["total"].append(total)
                    f["stream"].append((seen - first_at[0]) * 1e3)
                    f["schedule"].append(total - f["stream"][-1] - own)
    out: dict = {"ttft_runner_ms": round(own, 2)}
    for route, suffix in (("paid", ""), ("free", "_free")):
        f = figures[route]
        total = statistics.median(f["total"])
        out |= {
            f"ttft_gateway_ms{suffix}": round(total, 2),
            f"ttft_added_ms{suffix}": round(total - own, 2),
            f"ttft_scheduling_ms{suffix}": round(statistics.median(f["schedule"]), 2),
            f"ttft_stream_ms{suffix}": round(statistics.median(f["stream"]), 2),
        }
    out["ttft_rounds"] = len(figures["paid"]["total"])
    out["ttft_route"] = "paid, latency route (D84); *_free: a free job, drawn"
    return out


def bench_chunk_signing(n: int = 1_000) -> dict:
    """What signing streamed chunks costs (D85): the bytes of a chunk of 8 tokens and of
    its signer key and signature in it, the worker's signing and the gateway's checking
    per chunk (signing: medians of 5 batches of ``n``; checking: each of ``n`` once)."""
    worker = Identity.from_seed(b"\x52" * 32)
    chunks = [TokenChunk(b"\x01" * 32, b"\x02" * 32, i, tuple(range(8))) for i in range(n)]

    def per_chunk_us(fn, items) -> float:
        times = []
        for _ in range(5):
            start = time.perf_counter()
            out = [fn(x) for x in items]
            times.append((time.perf_counter() - start) / n * 1e6)
        return round(statistics.median(times), 1), out

    sign_us, signed = per_chunk_us(lambda c: sign(c, worker), chunks)
    key = worker.public_bytes
    start = time.perf_counter()  # once each: a repeated check could hit a cache
    for c in signed:
        require_signature(c, key)
    verify_us = round((time.perf_counter() - start) / n * 1e6, 1)
    return {
        "chunk_bytes": len(encode(signed[0])),
        "chunk_signature_bytes": len(signed[0].signer) + len(signed[0].signature),
        "chunk_sign_us": sign_us,
        "chunk_verify_us": verify_us,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=201)
    parser.add_argument("--tokens", type=int, default=100)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--context-rounds", type=int, default=9)
    parser.add_argument("--ttft-rounds", type=int, default=15)
    parser.add_argument("--quick", action="store_true", help="only the issue 14 figures")
    parser.add_argument("--context-only", action="store_true", help="only the context figure")
    args = parser.parse_args()
    factory = SessionFactory(threads=args.threads, provider="cpu")
    if args.context_only:
        with tempfile.TemporaryDirectory() as tmp:
            result = {"timer": "process_cpu", "threads": args.threads}
            result |= bench_context(Path(tmp) / "ctx", factory, args.context_rounds)
        result["ort_version"] = ort.__version__
        print(json.dumps(result))
        return
    with tempfile.TemporaryDirectory() as tmp:
        llm_dir, diffusion_dir = build_demo(Path(tmp))
        result = {
            "timer": "process_cpu",
            "threads": args.threads,
            "rounds": args.rounds,
            "llm_tokens": args.tokens,
            "diffusion_steps": args.steps,
            "image": "128x128",
        }
        if not args.quick:
            result |= bench_llm(llm_dir, factory, args.rounds, args.tokens)
            result |= bench_diffusion(diffusion_dir, factory, args.rounds, args.steps)
        result |= bench_context(Path(tmp) / "ctx", factory, args.context_rounds)
        result |= bench_chunk_signing()
        result |= trio.run(bench_ttft, Path(tmp) / "ttft", llm_dir, args.ttft_rounds)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result["peak_rss_mb"] = round(rss / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)
    result["ort_version"] = ort.__version__
    print(json.dumps(result))


if __name__ == "__main__":
    main()
