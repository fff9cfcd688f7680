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

Prints one JSON object as its last line. Usage: ``python bench/inference.py [--rounds N]``.
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

from aipg.models import (
    DiffusionParams,
    DiffusionRunner,
    LlmRunner,
    SamplingParams,
    SessionFactory,
    build_demo,
)

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=201)
    parser.add_argument("--tokens", type=int, default=100)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    factory = SessionFactory(threads=args.threads, provider="cpu")
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
        result |= bench_llm(llm_dir, factory, args.rounds, args.tokens)
        result |= bench_diffusion(diffusion_dir, factory, args.rounds, args.steps)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result["peak_rss_mb"] = round(rss / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)
    result["ort_version"] = ort.__version__
    print(json.dumps(result))


if __name__ == "__main__":
    main()
