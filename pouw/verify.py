"""The validator side: re-check a worker's numbers, cheaply relative to the work.

- :func:`verify_llm`: one prefill pass over prompt + output (not a re-decode). Every
  output token must be what the job's sampling rule picks from the validator's logits
  (a near-tie allowed where the logits are within ``TIE_TOLERANCE``), the committed
  top-k logits must match within ``VALUE_TOLERANCE``, and the receipt's hashes and
  counts must match the outputs.
- :func:`verify_diffusion`: check the latent hash chain and the initial latent (from
  the seed), re-run ``CHALLENGE_STEPS`` steps chosen from the validator's own challenge
  (unknown to the worker when it signed), compare within tolerance, and check that
  the image decodes from the final latent.

Both return a :class:`Check`: the verdict reason (OK or what failed, and where), the
largest deviation measured, and the validator's own recomputed data, which the verdict
binds by hash (:func:`aipg.pouw.make_verdict`).

Tolerances (measured on honest runs across thread counts 1/2, ORT optimization levels
0/99 and KV cache vs prefill; see tests/pouw/test_tolerances.py and bench/verify.py):
honest LLM logits differ by at most 2.9e-6 between those paths, against 1.2e-4
allowed (a 40x margin); honest diffusion steps differ by at most 2.0e-6 of the
latent's scale, against 2e-5 allowed (10x); decoded images are bit-identical across
thread counts and differ by at most one 8-bit level across optimization levels.
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Callable

import numpy as np
from PIL import Image

from aipg.models import (
    DiffusionRunner,
    LlmRunner,
    ModelError,
    SamplingParams,
    choose_token,
    sampling_uniform,
)
from aipg.wire import Identity

from .commitment import (
    TIE_TOLERANCE,
    chain_head,
    check_topk_commitment,
    latent_digest,
    llm_commitment_hash,
)
from .errors import PouwError
from .records import (
    MAX_CHALLENGE_STEPS,
    MAX_LATENT_BYTES,
    Assignment,
    Job,
    LatentReply,
    LatentRequest,
    Result,
    Verdict,
    VerdictReason,
    hash_tagged,
    input_hash_diffusion,
    input_hash_llm,
    output_hash_image,
    output_hash_tokens,
    receipt_id,
)
from .validate import validate_receipt
from .votes import make_verdict

__all__ = [
    "CHALLENGE_STEPS",
    "IMAGE_TOLERANCE",
    "STEP_TOLERANCE",
    "Check",
    "challenge_steps",
    "verdict_for",
    "verify_diffusion",
    "verify_llm",
]

CHALLENGE_STEPS = 3  # diffusion steps each validator re-runs (of typically 20)
# A re-run step must match the stored latent: max |difference| <= STEP_TOLERANCE x the
# latent's scale (its RMS, at least 1). Honest re-runs of the demo model differ by at
# most 2.0e-6 of scale (800 steps: threads 1/2, optimization levels 0/1/2/99, 32 to 96
# pixels, guidance on and off; level 99's fused convolutions round differently; 10x
# margin); fp16 weights move 90% of steps by more than 2e-5 (median 7.8e-5; the same
# 90% as at 1e-5); other weights by more than 1e-2.
STEP_TOLERANCE = 2e-5
# 8-bit levels: float differences in the decoder may flip a rounding. Honest decodes
# differ by at most 8e-7 before rounding (1 level after it, at optimization level 99);
# a second level would take ~8e-3.
IMAGE_TOLERANCE = 1
MAX_IMAGE_PIXELS = 4096 * 4096


@dataclasses.dataclass(frozen=True)
class Check:
    """What a validator found: ``reason`` OK or the failed rule, ``detail`` where."""

    reason: VerdictReason
    detail: str = ""
    max_error: float = 0.0
    recomputed: bytes = b""

    @property
    def valid(self) -> bool:
        return self.reason == VerdictReason.OK


def _fail(reason: VerdictReason, detail: str, **kw) -> Check:
    return Check(reason, detail[:200], **kw)


def verdict_for(identity: Identity, result: Result, check: Check) -> Verdict:
    """The validator's signed verdict on ``result.receipt`` from its check."""
    return make_verdict(
        identity,
        result.receipt,
        check.reason,
        recomputed=check.recomputed,
        detail=check.detail,
        max_error=check.max_error,
    )


# --------------------------------------------------------------------------- LLM


def verify_llm(
    runner: LlmRunner,
    job: Job,
    assignment: Assignment,
    result: Result,
    *,
    cost_milli: int | None = None,
) -> Check:
    """Re-check an LLM result with one prefill pass on ``runner`` (the job's model).

    ``cost_milli``, when given, is the model's cost factor the job must carry.
    """
    failed = _llm_bindings(runner, job, assignment, result, cost_milli)
    if failed is not None:
        return failed
    prompt, out = list(result.prompt_token_ids), list(result.output_token_ids)
    try:
        logits = runner.prefill(prompt + out[:-1])[len(prompt) - 1 :]
    except ModelError as e:
        return _fail(VerdictReason.MALFORMED, f"prefill: {e}")
    assert job.llm is not None
    failed = _check_tokens(logits, job.llm, job.seed, out)
    if failed is not None:
        return failed
    try:
        topk = check_topk_commitment(result.commitment_data, logits)
    except PouwError as e:
        return _fail(VerdictReason.COMMITMENT, str(e))
    if not topk.ok:
        return _fail(
            VerdictReason.TOPK_MISMATCH,
            f"committed top-k logits differ at output position {topk.bad_position}",
            max_error=topk.max_error,
            recomputed=topk.recomputed,
        )
    return Check(VerdictReason.OK, max_error=topk.max_error, recomputed=topk.recomputed)


def _llm_bindings(
    runner: LlmRunner, job: Job, assignment: Assignment, result: Result, cost_milli: int | None
) -> Check | None:
    """The receipt binds this job and these outputs; the outputs follow the stop rule."""
    r = result.receipt
    try:
        validate_receipt(r, job, assignment)
    except PouwError as e:
        return _fail(VerdictReason.BINDING, str(e))
    if job.llm is None:
        return _fail(VerdictReason.BINDING, "not an LLM job")
    if cost_milli is not None and job.cost_milli != cost_milli:
        return _fail(VerdictReason.BINDING, f"job cost factor is not the model's {cost_milli}")
    if job.model_id != runner.model.model_id:
        return _fail(VerdictReason.BINDING, "validator runs another model than the job's")
    prompt, out = list(result.prompt_token_ids), list(result.output_token_ids)
    vocab = runner.interface.vocab_size
    if any(t >= vocab for t in out):
        return _fail(VerdictReason.MALFORMED, f"an output token id is outside [0, {vocab})")
    try:
        expected_prompt = runner.tokenizer.encode(job.prompt)
    except ModelError as e:
        return _fail(VerdictReason.BINDING, f"prompt: {e}")
    checks = [
        (prompt == expected_prompt, "prompt tokens are not the job's prompt"),
        (r.input_hash == input_hash_llm(prompt), "input hash does not match the prompt tokens"),
        (r.output_hash == output_hash_tokens(out), "output hash does not match the tokens"),
        (r.prompt_tokens == len(prompt), "prompt token count does not match"),
        (r.output_tokens == len(out), f"claims {r.output_tokens} tokens, result has {len(out)}"),
    ]
    for ok, why in checks:
        if not ok:
            return _fail(VerdictReason.BINDING, why)
    if r.commitment != llm_commitment_hash(result.commitment_data):
        return _fail(VerdictReason.COMMITMENT, "commitment data does not hash to the receipt's")
    return _check_stop_rule(runner, job.llm, prompt, out, result.text)


def _check_stop_rule(
    runner: LlmRunner, params: SamplingParams, prompt: list[int], out: list[int], text: str
) -> Check | None:
    """Generation stops exactly at EOS, a stop string, max_tokens or the context's end."""
    is_eos = runner.tokenizer.is_eos  # several ids may end a generation
    if any(is_eos(t) for t in out[:-1]):
        return _fail(VerdictReason.TOKEN_MISMATCH, "tokens continue after end-of-sequence")
    full = runner.tokenizer.decode(out)
    cut = _stop_position(full, params.stop)
    if (
        params.stop
        and len(out) > 1
        and _stop_position(runner.tokenizer.decode(out[:-1]), params.stop) is not None
    ):
        return _fail(VerdictReason.TOKEN_MISMATCH, "tokens continue after a stop string")
    expected_text = full[:cut] if cut is not None else full
    if text != expected_text:
        return _fail(VerdictReason.BINDING, "text is not the decoded output tokens")
    budget = min(params.max_tokens, runner.context_length - len(prompt))
    stopped = (bool(out) and is_eos(out[-1])) or cut is not None
    if len(out) > budget or (len(out) < budget and not stopped):
        return _fail(VerdictReason.TOKEN_MISMATCH, f"{len(out)} tokens break the stop rule")
    return None


def _stop_position(text: str, stops: tuple[str, ...]) -> int | None:
    hits = [text.find(s) for s in stops if s and s in text]
    return min(hits) if hits else None


def _check_tokens(
    logits: np.ndarray, params: SamplingParams, seed: int, out: list[int]
) -> Check | None:
    """Every token is the sampling rule's pick from the validator's logits, or a near-tie."""
    if params.temperature_milli == 0:
        picks = np.argmax(logits, axis=1)
        suspects = [int(t) for t in np.nonzero(picks != np.asarray(out))[0]]
    else:
        suspects = [
            t
            for t in _sampled_suspects(logits, params, seed, out)
            if choose_token(logits[t], params, seed, t) != out[t]
        ]
    for t in suspects:
        if not _near_tie(logits[t], params, seed, t, out[t]):
            return _fail(
                VerdictReason.TOKEN_MISMATCH,
                f"output token {t} ({out[t]}) is not the sampling rule's pick",
            )
    return None


# Relative slack around a CDF boundary below which the vectorized check defers to
# choose_token itself (the two sum the same weights in different orders).
_CDF_SLACK = 1e-9


def _sampled_suspects(
    logits: np.ndarray, params: SamplingParams, seed: int, out: list[int]
) -> list[int]:
    """Positions whose claimed token the sampling rule may not pick; the rest surely pick it.

    One vectorized pass instead of a sort per position: the claimed token c is the draw
    exactly when the weight of the tokens ordered before it (logit descending, id
    ascending) is <= u * total < that weight + c's own. Positions near a boundary, with
    a top-p cut, or outside the top-k are left to :func:`choose_token` (the one rule).
    """
    n, vocab = logits.shape
    if params.top_p_milli < 1000:
        return list(range(n))
    s = logits.astype(np.float64) * (1000.0 / params.temperature_milli)
    rows, claimed = np.arange(n), np.asarray(out)
    s_c = s[rows, claimed][:, None]
    before = (s > s_c) | ((s == s_c) & (np.arange(vocab)[None, :] < claimed[:, None]))
    top = s.max(axis=1, keepdims=True)
    w = np.exp(s - top)
    cum_before = (w * before).sum(axis=1)
    w_c = w[rows, claimed]
    k = params.top_k if 0 < params.top_k < vocab else vocab
    if k < vocab:
        kth = -np.partition(-s, k - 1, axis=1)[:, k - 1 : k]
        above = s > kth
        # Tokens tied at the k-th value have equal weights, so which of them are kept
        # does not change the total.
        total = (w * above).sum(axis=1) + (k - above.sum(axis=1)) * np.exp(kth - top)[:, 0]
    else:
        total = w.sum(axis=1)
    u = np.array([sampling_uniform(seed, t) for t in range(n)])
    target, slack = u * total, _CDF_SLACK * total
    sure = (
        (before.sum(axis=1) < k)
        & (target >= cum_before + slack)
        & (target < cum_before + w_c - slack)
    )
    return [int(t) for t in np.nonzero(~sure)[0]]


def _near_tie(row: np.ndarray, params: SamplingParams, seed: int, t: int, claimed: int) -> bool:
    """Would a logit perturbation within TIE_TOLERANCE make the rule pick ``claimed``?

    Greedy: the claimed token's logit is within the tolerance of the maximum. Sampled:
    raising the claimed token's logit, or lowering the validator's pick, by the
    tolerance makes the seeded draw land on the claimed token.
    """
    if params.temperature_milli == 0:
        return bool(row[claimed] >= row.max() - TIE_TOLERANCE)
    pick = choose_token(row, params, seed, t)
    up = row.astype(np.float64).copy()
    up[claimed] += TIE_TOLERANCE
    down = row.astype(np.float64).copy()
    down[pick] -= TIE_TOLERANCE
    return any(choose_token(x, params, seed, t) == claimed for x in (up, down))


# ---------------------------------------------------------------------- diffusion


def challenge_steps(challenge: bytes, steps: int, k: int = CHALLENGE_STEPS) -> list[int]:
    """The ``k`` distinct step numbers (1..steps; step i turns latent i-1 into latent i)
    a validator re-runs, drawn from its challenge (see :func:`make_challenge`)."""
    pool = list(range(1, steps + 1))
    chosen: list[int] = []
    for draw in range(min(k, steps)):
        h = hash_tagged(b"challenge/steps/1", challenge, draw.to_bytes(4, "big"))
        chosen.append(pool.pop(int.from_bytes(h) % len(pool)))
    return sorted(chosen)


FetchLatents = Callable[[LatentRequest], LatentReply]


def verify_diffusion(
    runner: DiffusionRunner,
    job: Job,
    assignment: Assignment,
    result: Result,
    fetch: FetchLatents,
    challenge: bytes,
    *,
    k: int = CHALLENGE_STEPS,
    cost_milli: int | None = None,
) -> Check:
    """Re-check a diffusion result: chain, initial latent, ``k`` re-run steps, decode.

    ``fetch`` asks the worker for stored latents (raising PouwError when it cannot);
    ``challenge`` is the validator's :func:`make_challenge` for this receipt.
    """
    if not 1 <= k <= MAX_CHALLENGE_STEPS:
        raise ValueError(f"k must be from 1 to {MAX_CHALLENGE_STEPS}, got {k}")
    failed = _diffusion_bindings(runner, job, assignment, result, cost_milli)
    if failed is not None:
        return failed
    assert job.diffusion is not None
    params = job.diffusion
    n = result.receipt.steps
    chosen = challenge_steps(challenge, n, k)
    wanted = sorted({*(i - 1 for i in chosen), *chosen, n})
    latents = _fetch_latents(runner, job, result, fetch, wanted)
    if isinstance(latents, Check):
        return latents
    conditioning = runner.encode_prompt(job.prompt, params)
    worst = 0.0
    recomputed = []
    for i in chosen:
        x = runner.step(latents[i - 1], i - 1, conditioning, params)
        recomputed.append(x.astype("<f4").tobytes())
        scale = max(1.0, float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))))
        err = float(np.max(np.abs(x - latents[i]))) / scale
        # NaN compares false: a chain of NaN latents must not pass as "within tolerance".
        if not np.isfinite(err) or err > STEP_TOLERANCE:
            return _fail(
                VerdictReason.STEP_MISMATCH,
                f"step {i} re-runs to a different latent (deviation {err:.3g} of scale)",
                max_error=err,
                recomputed=b"".join(recomputed),
            )
        worst = max(worst, err)
    failed = _check_decode(runner, latents[n], result.image)
    if failed is not None:
        return dataclasses.replace(failed, max_error=worst)
    return Check(VerdictReason.OK, max_error=worst, recomputed=b"".join(recomputed))


def _diffusion_bindings(
    runner: DiffusionRunner,
    job: Job,
    assignment: Assignment,
    result: Result,
    cost_milli: int | None,
) -> Check | None:
    r = result.receipt
    try:
        validate_receipt(r, job, assignment)
    except PouwError as e:
        return _fail(VerdictReason.BINDING, str(e))
    params = job.diffusion
    if params is None:
        return _fail(VerdictReason.BINDING, "not a diffusion job")
    if cost_milli is not None and job.cost_milli != cost_milli:
        return _fail(VerdictReason.BINDING, f"job cost factor is not the model's {cost_milli}")
    if job.model_id != runner.model.model_id:
        return _fail(VerdictReason.BINDING, "validator runs another model than the job's")
    try:
        runner.check_params(params)
    except ModelError as e:
        return _fail(VerdictReason.BINDING, str(e))
    _, _, h, w = runner.latent_shape(params)
    checks = [
        (r.input_hash == input_hash_diffusion(job.prompt, params.negative_prompt), "input hash"),
        (r.output_hash == output_hash_image(result.image), "output hash does not match image"),
        (r.latent_pixels == h * w, f"claims {r.latent_pixels} latent pixels, model has {h * w}"),
    ]
    for ok, why in checks:
        if not ok:
            return _fail(VerdictReason.BINDING, why)
    digests = result.latent_digests
    if len(digests) != r.steps + 1:
        return _fail(VerdictReason.CHAIN, f"{len(digests)} latent digests for {r.steps} steps")
    if chain_head(digests) != r.commitment:
        return _fail(VerdictReason.CHAIN, "latent digests do not chain to the commitment")
    for i in range(1, len(digests)):
        if digests[i] == digests[i - 1]:
            return _fail(VerdictReason.CHAIN, f"step {i} reuses the latent before it")
    if digests[0] != latent_digest(runner.initial_latent(job.seed, params)):
        return _fail(VerdictReason.CHAIN, "initial latent is not the seed's")
    return None


def _fetch_latents(
    runner: DiffusionRunner, job: Job, result: Result, fetch: FetchLatents, wanted: list[int]
) -> dict[int, np.ndarray] | Check:
    """Ask the worker for latents and check each against its digest in the chain."""
    assert job.diffusion is not None
    shape = runner.latent_shape(job.diffusion)
    size = int(np.prod(shape)) * 4
    if size > MAX_LATENT_BYTES:
        return _fail(VerdictReason.BINDING, f"latents of {size} bytes are over the wire limit")
    try:
        reply = fetch(LatentRequest(receipt_id=receipt_id(result.receipt), steps=tuple(wanted)))
    except PouwError as e:
        return _fail(VerdictReason.UNAVAILABLE, f"worker did not serve latents: {e}")
    if list(reply.steps) != wanted or len(reply.latents) != len(wanted):
        return _fail(VerdictReason.UNAVAILABLE, "worker served other latents than asked")
    latents: dict[int, np.ndarray] = {}
    for step, raw in zip(reply.steps, reply.latents, strict=True):
        if len(raw) != size:
            return _fail(VerdictReason.CHAIN, f"latent {step} has {len(raw)} bytes, want {size}")
        x = np.frombuffer(raw, dtype="<f4").reshape(shape).astype(np.float32)
        if latent_digest(x) != result.latent_digests[step]:
            return _fail(VerdictReason.CHAIN, f"latent {step} does not match its digest")
        latents[step] = x
    return latents


def _check_decode(runner: DiffusionRunner, final: np.ndarray, image: bytes) -> Check | None:
    """The worker's PNG is (within rounding) the image decoded from the final latent.

    Pixels are compared, not PNG bytes: reading the worker's PNG costs a fraction of
    encoding our own (which the check would then have to read back when bytes differ).
    """
    ours = runner.decode_pixels(final)
    try:
        theirs = _pixels(image)
    except Exception as e:  # Pillow raises many types on hostile bytes; all mean "bad PNG"
        return _fail(VerdictReason.DECODE, f"image is not a readable PNG: {e}")
    if ours.shape != theirs.shape:
        return _fail(VerdictReason.DECODE, f"image is {theirs.shape}, decodes to {ours.shape}")
    worst = int(np.max(np.abs(ours.astype(np.int16) - theirs.astype(np.int16))))
    if worst > IMAGE_TOLERANCE:
        return _fail(VerdictReason.DECODE, f"image differs from the decoded latent by {worst}")
    return None


def _pixels(png: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(png)) as img:
        if img.format != "PNG":
            raise ValueError(f"a {img.format} image, not PNG")
        if img.width * img.height > MAX_IMAGE_PIXELS:
            raise ValueError(f"{img.width}x{img.height} is too large")
        return np.asarray(img.convert("RGB"))
