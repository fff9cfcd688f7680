"""The pouw wire records (tags 300-399): one job, end to end.

Flow (DESIGN.md, "pouw: one job, end to end")::

    gateway  --Job-->         jobs topic           (signed by the gateway)
    worker   --Claim-->       gateway              (signed by the worker)
    gateway  --Assignment-->  worker               (signed by the gateway)
    worker   --Result-->      gateway              (outputs + commitment data + Receipt)
    worker   --Receipt-->     receipts topic       (signed by the worker)
    committee--Verdict-->     verdicts topic       (signed by each member)
    anyone   --Certificate--> block proposer       (job, assignment, receipt, verdicts)
    anyone   --FraudEvidence--> block proposer

Every signed record ends with ``signer, signature``; :func:`aipg.wire.sign` signs it
under a per-type domain tag, so no signature is valid as another type.

Money is integer base units, ratios are fixed-point "milli" integers; no floats.
"""

from __future__ import annotations

import enum
import hashlib
import struct
from collections.abc import Sequence
from typing import Annotated

from aipg.models import MAX_TOKENS, DiffusionParams, ExecutionProfile, SamplingParams
from aipg.wire import (
    NO_SIGNATURE,
    NO_SIGNER,
    U8,
    U16,
    U32,
    U64,
    AddressBytes,
    Hash32,
    MaxLen,
    PublicKeyBytes,
    Range,
    Record,
    SignatureBytes,
    UnitsField,
    encode,
    record,
    signing_bytes,
)

from .types import JobId, ReceiptId

__all__ = [
    "MAX_COMMITTEE",
    "MAX_OUTPUT_TOKENS",
    "MAX_PROMPT_CHARS",
    "MAX_STEPS",
    "Assignment",
    "Certificate",
    "Claim",
    "FraudEvidence",
    "Job",
    "JobKind",
    "LatentReply",
    "LatentRequest",
    "Receipt",
    "Result",
    "Tier",
    "Verdict",
    "VerdictCommit",
    "VerdictReason",
    "assignment_id",
    "hash_tagged",
    "input_hash_diffusion",
    "input_hash_llm",
    "job_id",
    "output_hash_image",
    "output_hash_tokens",
    "params_hash",
    "receipt_id",
]

# Limits, with the reason beside them.
MAX_PROMPT_CHARS = 16_384  # a long chat prompt; keeps a Job (and a Certificate) small
MAX_OUTPUT_TOKENS = MAX_TOKENS  # longest generation a single job may ask for
MAX_PROMPT_TOKENS = 8_192  # a prompt of 16k characters tokenizes to fewer tokens than this
MAX_STEPS = 500  # as aipg.models allows; schedulers use 10-100 steps
MAX_COMMITTEE = 64  # committees are small; bounds a certificate's size
MAX_IMAGE_BYTES = 8 << 20  # one PNG
MAX_LATENT_BYTES = 512 << 10  # one float32 latent (SD 1.5 at 512x512: 64 KiB; SDXL: 256 KiB)
MAX_CHALLENGE_STEPS = 16  # steps one validator may re-run
# A step needs the latent before and after it; the final latent is asked for too.
MAX_LATENTS_PER_REQUEST = 2 * MAX_CHALLENGE_STEPS + 1
MAX_COMMITMENT_BYTES = 16 * MAX_OUTPUT_TOKENS  # LLM commitment data, far above its 8 B/token


class JobKind(enum.IntEnum):
    LLM = 1
    DIFFUSION = 2


class Tier(enum.IntEnum):
    FREE = 0
    PAID = 1  # only trusted workers (bond and reputation above thresholds) are assigned


class VerdictReason(enum.IntEnum):
    """Why a validator voted as it did; ``OK`` for a valid vote."""

    OK = 0
    MALFORMED = 1  # the result does not parse or does not match its receipt's hashes
    BINDING = 2  # the receipt does not bind the job (model, inputs, params, seed, counts)
    TOKEN_MISMATCH = 3  # an output token is not what the sampling rule picks
    TOPK_MISMATCH = 4  # the committed top-k logits do not match the validator's
    COMMITMENT = 5  # commitment data does not hash to the receipt's commitment
    STEP_MISMATCH = 6  # a re-run diffusion step does not match the stored latent
    CHAIN = 7  # the latent hash chain is broken, or a step was reused
    DECODE = 8  # the image does not decode from the final latent
    UNAVAILABLE = 9  # the worker did not serve the latents asked for


# --------------------------------------------------------------------- job side


@record(tag=302)
class Job(Record):
    """A unit of work a gateway accepted from a client, signed by the gateway.

    Exactly one of ``llm`` (aipg.models SamplingParams) / ``diffusion`` (DiffusionParams)
    is set, matching the model's kind.
    ``cost_milli`` is the model's cost factor from its manifest (work units per token,
    or per step and latent pixel, times 1000); validators check it against the manifest.
    ``deadline_ms`` is when the gateway gives up on an assignment and reassigns.
    """

    model_id: Hash32
    prompt: Annotated[str, MaxLen(MAX_PROMPT_CHARS)]
    llm: SamplingParams | None
    diffusion: DiffusionParams | None
    seed: U64
    tier: Annotated[int, Range(0, 1)]
    fee: UnitsField  # paid tier: escrowed from the client, paid to the worker on certification
    client: AddressBytes  # the account that pays (paid tier) or asked (free tier)
    cost_milli: Annotated[int, Range(1, 10**12)]
    created_ms: U64
    deadline_ms: U64
    nonce: U64 = 0
    signer: PublicKeyBytes = NO_SIGNER
    signature: SignatureBytes = NO_SIGNATURE

    @property
    def kind(self) -> JobKind:
        return JobKind.LLM if self.llm is not None else JobKind.DIFFUSION

    @property
    def id(self) -> JobId:
        return job_id(self)


@record(tag=303)
class Claim(Record):
    """A worker that hosts the job's model offers to run it, signed by the worker.

    ``queue`` is how many jobs it has in flight (the gateway prefers idle workers).
    """

    job_id: Hash32
    model_id: Hash32
    queue: U16
    sent_ms: U64
    signer: PublicKeyBytes = NO_SIGNER
    signature: SignatureBytes = NO_SIGNATURE


@record(tag=304)
class Assignment(Record):
    """The gateway gives the job to one worker, signed by the gateway (the job's signer).

    ``height`` is the chain height the gateway saw when it assigned: the committee is
    seeded by the finalized block ``COMMITTEE_LOOKAHEAD`` below it, so it is fixed before
    the worker starts and nobody can pick it after seeing the work.
    """

    job_id: Hash32
    worker: PublicKeyBytes
    height: U64
    attempt: U16
    assigned_ms: U64
    deadline_ms: U64
    signer: PublicKeyBytes = NO_SIGNER
    signature: SignatureBytes = NO_SIGNATURE


# ------------------------------------------------------------------ worker side


@record(tag=305)
class Receipt(Record):
    """The worker's signed statement of what it computed, binding everything that
    affects the numbers:

    - ``job_id``, ``model_id``, ``assignment_id`` (which job, model and assignment);
    - ``input_hash`` (LLM: the prompt token ids; diffusion: prompt and negative prompt),
      ``params_hash`` and ``seed`` (how it sampled);
    - ``profile``: the worker's execution profile (ORT version, provider, optimization
      level, threads, model id);
    - ``output_hash`` (LLM: the output token ids, not text; diffusion: the PNG);
    - the counts that ``work_units`` are computed from, and the work units;
    - ``elapsed_ms`` and ``first_output_ms`` (timings, informational);
    - ``commitment``: LLM: sha256 of the top-k commitment data (which travels in the
      Result); diffusion: the head of the hash chain over the per-step latents.
    """

    job_id: Hash32
    model_id: Hash32
    assignment_id: Hash32
    input_hash: Hash32
    params_hash: Hash32
    seed: U64
    profile: ExecutionProfile
    output_hash: Hash32
    prompt_tokens: U32
    output_tokens: U32
    steps: U32
    latent_pixels: U32
    work_units: U64
    elapsed_ms: U32
    first_output_ms: U32
    commitment: Hash32
    signer: PublicKeyBytes = NO_SIGNER
    signature: SignatureBytes = NO_SIGNATURE

    @property
    def id(self) -> ReceiptId:
        return receipt_id(self)


@record(tag=306, max_size=MAX_IMAGE_BYTES + (1 << 20))
class Result(Record):
    """What a worker hands back to the gateway (and to validators on request): the
    outputs and the commitment data its receipt binds by hash.

    LLM: ``prompt_token_ids``, ``output_token_ids``, ``text`` and ``commitment_data``.
    Diffusion: ``image`` (PNG) and ``latent_digests`` (sha256 of each step's latent,
    index 0 = the initial latent), from which the commitment chain is recomputed.
    """

    receipt: Receipt
    prompt_token_ids: Annotated[tuple[U32, ...], MaxLen(MAX_PROMPT_TOKENS)]
    output_token_ids: Annotated[tuple[U32, ...], MaxLen(MAX_OUTPUT_TOKENS)]
    text: Annotated[str, MaxLen(16 * MAX_OUTPUT_TOKENS)]
    commitment_data: Annotated[bytes, MaxLen(MAX_COMMITMENT_BYTES)]
    image: Annotated[bytes, MaxLen(MAX_IMAGE_BYTES)]
    latent_digests: Annotated[tuple[Hash32, ...], MaxLen(MAX_STEPS + 1)]


@record(tag=307)
class LatentRequest(Record):
    """A validator asks the worker for stored latents (by step index, 0 = initial)."""

    receipt_id: Hash32
    steps: Annotated[tuple[U32, ...], MaxLen(MAX_LATENTS_PER_REQUEST)]


@record(tag=308, max_size=MAX_LATENTS_PER_REQUEST * (MAX_LATENT_BYTES + 16) + (1 << 16))
class LatentReply(Record):
    """The latents asked for, little-endian float32 in the model's latent shape."""

    receipt_id: Hash32
    steps: Annotated[tuple[U32, ...], MaxLen(MAX_LATENTS_PER_REQUEST)]
    latents: Annotated[
        tuple[Annotated[bytes, MaxLen(MAX_LATENT_BYTES)], ...], MaxLen(MAX_LATENTS_PER_REQUEST)
    ]


# --------------------------------------------------------------- validator side


@record(tag=309)
class Verdict(Record):
    """One committee member's vote on one receipt, signed by the member.

    A vote must carry the member's own check data, so that copying another member's
    verdict without re-running is not possible:

    - ``challenge`` is the member's Ed25519 signature over the receipt id (under its
      own domain): unpredictable to the worker, checkable by anyone, and it seeds which
      diffusion steps the member re-runs;
    - ``check_hash`` = sha256 over the member's key, the receipt id and the data it
      recomputed (quantized top-k logits, or the re-run latents);
    - ``max_error_micro``: the largest deviation it measured (logit units x 10^6, or
      latent units x 10^6), kept for calibrating tolerances across the network;
    - ``salt``: what hides the vote in the member's earlier :class:`VerdictCommit`
      (commit, then reveal: :mod:`aipg.pouw.reveal`); derived from the member's key, so
      nobody else can compute it and a restarted member can still reveal.
    """

    receipt_id: Hash32
    job_id: Hash32
    valid: bool
    reason: U8
    detail: Annotated[str, MaxLen(200)]
    challenge: SignatureBytes
    check_hash: Hash32
    max_error_micro: U32
    salt: Hash32 = bytes(32)
    signer: PublicKeyBytes = NO_SIGNER
    signature: SignatureBytes = NO_SIGNATURE


@record(tag=315)
class VerdictCommit(Record):
    """A committee member's commitment to its verdict on one receipt, signed by the
    member: ``commitment`` = :func:`aipg.pouw.reveal.verdict_commitment` of the verdict
    it will reveal. Blocks carry commitments; a revealed verdict counts only when its
    commitment was in a block before the receipt's commit phase closed. ``job_id``
    names the receipt's job: the ledger takes one commitment per job and member, only
    for a committed job whose committee is drawn (D77)."""

    receipt_id: Hash32
    commitment: Hash32
    job_id: Hash32 = bytes(32)  # the receipt's job: what bounds a member's rows (D77)
    review: bool = False  # a reviewer's commitment on a conviction's receipt (D76)
    signer: PublicKeyBytes = NO_SIGNER
    signature: SignatureBytes = NO_SIGNATURE


@record(tag=310, max_size=2 << 20)
class Certificate(Record):
    """Proof that a committee holding >= 2/3 of its stake found a receipt valid.

    Carries the job (fee, client, cost factor), the assignment (committee seed height,
    worker) and the receipt, so a block can pay the work from the certificate alone.
    Not signed itself: every part inside is.
    """

    job: Job
    assignment: Assignment
    receipt: Receipt
    verdicts: Annotated[tuple[Verdict, ...], MaxLen(MAX_COMMITTEE)]


@record(tag=311, max_size=2 << 20)
class FraudEvidence(Record):
    """Proof that committee members holding > 1/3 of its stake found a receipt invalid:
    the worker (``receipt.signer``) signed work that does not check out, and its bond is
    slashed. Anyone may submit it."""

    job: Job
    assignment: Assignment
    receipt: Receipt
    verdicts: Annotated[tuple[Verdict, ...], MaxLen(MAX_COMMITTEE)]


@record(tag=312)
class EquivocationEvidence(Record):
    """Two receipts one worker signed for one assignment, computing different outputs:
    at most one can be what the job computes, so the worker signed work it did not do.
    (Receipts that differ only in their timings are one computation reported twice, not
    equivocation.) Anyone may submit it; ``receipt_a`` has the smaller receipt id."""

    receipt_a: Receipt
    receipt_b: Receipt


@record(tag=313)
class ConflictingVerdicts(Record):
    """Two verdicts one validator signed on one receipt with different votes: a
    committee member that voted both ways (double-sign-like; its bond is slashed).
    ``verdict_a`` sorts first by its encoding's digest."""

    verdict_a: Verdict
    verdict_b: Verdict


@record(tag=314, max_size=4 << 20)
class FraudReview(Record):
    """A review committee's verdicts on a conviction a block carried: the fraud evidence
    and the reviewers' verdicts on the same receipt. Two thirds of the review's seated
    stake invalid uphold the conviction (the worker is slashed); two thirds valid
    overturn it (the accusers are slashed instead)."""

    evidence: FraudEvidence
    verdicts: Annotated[tuple[Verdict, ...], MaxLen(2 * MAX_COMMITTEE)]


# ----------------------------------------------------------------- ids and hashes


def hash_tagged(tag: bytes, *parts: bytes) -> bytes:
    """sha256 over a domain tag and length-prefixed parts (so parts cannot run together)."""
    h = hashlib.sha256(b"aipg/" + tag + b"\0")
    for p in parts:
        h.update(struct.pack("<Q", len(p)))
        h.update(p)
    return h.digest()


def job_id(job: Job) -> JobId:
    """sha256 of the job's signing bytes: independent of the signature's encoding."""
    return JobId(hashlib.sha256(signing_bytes(job)).digest())


def receipt_id(receipt: Receipt) -> ReceiptId:
    """sha256 of the receipt's signing bytes."""
    return ReceiptId(hashlib.sha256(signing_bytes(receipt)).digest())


def assignment_id(assignment: Assignment) -> bytes:
    """sha256 of the assignment's canonical encoding (what a receipt binds)."""
    return hashlib.sha256(encode(assignment)).digest()


def params_hash(job: Job) -> bytes:
    """The hash a receipt binds for the job's sampling / diffusion parameters."""
    params = job.llm if job.llm is not None else job.diffusion
    assert params is not None
    return hash_tagged(b"params/1", params.encode())


def _u32_bytes(ids: Sequence[int]) -> bytes:
    return struct.pack(f"<{len(ids)}I", *ids)


def input_hash_llm(prompt_token_ids: Sequence[int]) -> bytes:
    return hash_tagged(b"input/llm/1", _u32_bytes(prompt_token_ids))


def input_hash_diffusion(prompt: str, negative_prompt: str) -> bytes:
    return hash_tagged(b"input/diffusion/1", prompt.encode(), negative_prompt.encode())


def output_hash_tokens(output_token_ids: Sequence[int]) -> bytes:
    return hash_tagged(b"output/tokens/1", _u32_bytes(output_token_ids))


def output_hash_image(png: bytes) -> bytes:
    return hash_tagged(b"output/image/1", png)
