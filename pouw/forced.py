"""Forced errors (Truebit's idea, D75): known-bad receipts that catch lazy validators.

Each assignment has a beacon value fixed before the work: β, the beacon of the block that
draws the job's committee (D56). The worker evaluates its ECVRF (:mod:`.vrf`, its own
Ed25519 key) on ``forced_alpha(β, assignment id)``; when the output falls under
``forced_error_bps`` (:func:`is_forced`) the job is **forced**: the worker signs a
receipt carrying a prescribed, deterministic change of its true output
(:func:`forced_output`: the last output token ``t`` becomes ``(t + 1) mod vocab``), and
hands its gateway the true output with the VRF proof (:func:`check_forced_result`), so
the client still gets the right answer. Nobody else can tell a forced receipt from
another: the VRF output is known only to the worker until it publishes the proof.

The committee checks as usual; a diligent member finds the last token wrong and votes
invalid, a member that votes valid without checking vouches for work that is wrong.
After the receipt's commit phase closes the worker puts a :class:`ForcedError` in a
block (:mod:`aipg.stake.forced` is the ledger's rule): the receipt, the proof, the true
output tokens (their change hashes to the receipt's output hash) and the committee's
revealed verdicts.

Only LLM jobs are forced: a diffusion check re-runs a few sampled steps, so no single
prescribed change is found by every diligent member (the initial latent would be, but
its check is cheap enough for a lazy member to do alone); :func:`forceable` says which.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated

from aipg.wire import U32, Len, MaxLen, Record, record

from .committee import CommitteeRules, Tally
from .errors import PouwError
from .records import (
    MAX_COMMITTEE,
    MAX_OUTPUT_TOKENS,
    Assignment,
    Job,
    Receipt,
    Verdict,
    assignment_id,
    hash_tagged,
    output_hash_tokens,
)
from .reveal import CommitLookup
from .validate import _validate_work
from .vrf import PROOF_LEN, VrfError, prove, verify

__all__ = [
    "BPS",
    "ForcedError",
    "check_forced_change",
    "check_forced_result",
    "forceable",
    "forced_alpha",
    "forced_output",
    "forced_proof",
    "is_forced",
    "validate_forced_votes",
]

BPS = 10_000
MAX_VOCAB = 2**32 - 1


@record(tag=316, max_size=2 << 20)
class ForcedError(Record):
    """A worker springs the trap: ``receipt`` (the one its committee voted on) was a
    forced error. ``vrf_proof`` proves the job was forced (its output under
    ``forced_error_bps``, over ``forced_alpha(β, assignment id)``); ``output_token_ids``
    are the true output tokens (``output_hash_tokens`` of them is what the gateway
    delivered) and ``vocab_size`` the model's vocabulary, so that
    :func:`forced_output` of them hashes to the receipt's output hash; ``verdicts`` are
    the committee's revealed votes (each matched to a commitment a block carried).
    Not signed itself: the receipt and the proof are the worker's, the verdicts their
    members'."""

    job: Job
    assignment: Assignment
    receipt: Receipt
    vrf_proof: Annotated[bytes, Len(PROOF_LEN)]
    output_token_ids: Annotated[tuple[U32, ...], MaxLen(MAX_OUTPUT_TOKENS)]
    vocab_size: U32
    verdicts: Annotated[tuple[Verdict, ...], MaxLen(MAX_COMMITTEE)]


def forced_alpha(beacon: bytes, assignment_id_: bytes) -> bytes:
    """The VRF input of one assignment: the committee's seed beacon and the assignment."""
    return hash_tagged(b"forced/alpha/1", beacon, assignment_id_)


def forced_proof(seed: bytes, beacon: bytes, assignment: Assignment) -> bytes:
    """The worker's VRF proof for ``assignment`` (its Ed25519 ``seed`` proves)."""
    return prove(seed, forced_alpha(beacon, assignment_id(assignment)))


def forceable(job: Job) -> bool:
    """Whether ``job``'s kind has forced errors (LLM jobs; see the module docstring)."""
    return job.llm is not None


def is_forced(
    worker: bytes, proof: bytes, beacon: bytes, assignment: Assignment, forced_bps: int
) -> bool:
    """Whether ``proof`` (the worker's, for ``assignment`` under ``beacon``) makes the
    job a forced error at a rate of ``forced_bps``. Raises PouwError for a proof that
    does not verify."""
    try:
        out = verify(worker, proof, forced_alpha(beacon, assignment_id(assignment)))
    except VrfError as e:
        raise PouwError("forced.vrf_proof", str(e)) from None
    return int.from_bytes(out[:8], "big") % BPS < forced_bps


def forced_output(tokens: Sequence[int], vocab_size: int) -> tuple[int, ...]:
    """The prescribed change: the last output token ``t`` becomes ``(t + 1) mod vocab``."""
    if not tokens:
        raise PouwError("forced.output_token_ids", "a forced job has at least one output token")
    if not 2 <= vocab_size <= MAX_VOCAB or tokens[-1] >= vocab_size:
        raise PouwError("forced.vocab_size", "the last token is outside the vocabulary")
    return (*tokens[:-1], (tokens[-1] + 1) % vocab_size)


def check_forced_change(receipt: Receipt, true_tokens: Sequence[int], vocab_size: int) -> None:
    """The receipt shows the prescribed change of ``true_tokens``; raises PouwError."""
    if output_hash_tokens(forced_output(true_tokens, vocab_size)) != receipt.output_hash:
        raise PouwError(
            "forced.receipt", "the receipt's output is not the prescribed change of the tokens"
        )


def check_forced_result(
    receipt: Receipt,
    assignment: Assignment,
    beacon: bytes,
    proof: bytes,
    true_tokens: Sequence[int],
    vocab_size: int,
    forced_bps: int,
) -> None:
    """What a gateway checks before delivering a forced job's true output instead of
    the receipt's: the proof is the worker's and says "forced", and the receipt is the
    prescribed change of ``true_tokens``. Raises PouwError (the gateway then treats
    the result as it would any other whose output does not match its receipt)."""
    if not is_forced(receipt.signer, proof, beacon, assignment, forced_bps):
        raise PouwError("forced.vrf_proof", "the assignment is not a forced error")
    check_forced_change(receipt, true_tokens, vocab_size)


def validate_forced_votes(
    ev: ForcedError,
    validators: Mapping[bytes, int],
    beacon: bytes,
    *,
    committee_size: int,
    committed: CommitLookup | None,
    rules: CommitteeRules | None,
) -> Tally:
    """The job, assignment and receipt are signed and bound, and each verdict is a
    committee member's (seated, once each, matching its commitment); returns the
    tally. Raises PouwError."""
    return _validate_work(
        ev.job,
        ev.assignment,
        ev.receipt,
        ev.verdicts,
        validators,
        beacon,
        committee_size,
        False,
        committed,
        rules,
    )
