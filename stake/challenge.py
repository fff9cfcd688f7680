"""Withholding challenges: a worker that will not serve its latents answers on chain.

A diffusion check needs latents only the worker has (D13). A worker that serves them to
nobody was only unpaid: its members abstain (D26). Now a committee member that could
not fetch what it needs puts a :class:`WithholdingChallenge` in a block: the job, its
assignment and receipt (so the ledger can check that the challenger sits on the job's
committee), and the latent indices it asks for (at most ``MAX_CHALLENGE_LATENTS``). Its
account deposits ``challenge_fee``.

The worker must put a :class:`ChallengeAnswer` in a block within ``challenge_period``
blocks: every latent digest of the receipt (their hash chain must be the receipt's
commitment, so the worker is bound to what it signed) and the asked-for latents
themselves, each of which must hash to its digest. The answer is thereby checkable by
the ledger without running a model, and the data is *available*: it is in a block every
node has, so the challenger re-runs its check from it. (A bare hash in the answer would
prove nothing: the digests are already public in the work report, and the chain cannot
tell whether a later fetch succeeded.) The bound keeps an answer under 3.7 MiB at the
largest latents the wire allows (512 KiB; SD 1.5 at 512 px is 64 KiB, so its 7 latents
of a 3-step check are 448 KiB).

- answered in time: the challenge closes, and its fee goes to the worker (it paid for
  the block space; a challenge of a worker that serves is what costs the challenger);
- no answer by the deadline: the worker is slashed ``withholding_slash_bps`` of its bond
  (burned; a small share, never the whole bond at one miss) and the fee returns to the
  challenger.

One challenge per member and receipt, ever; none for a job already certified (its
worker may have released the latents) or an assignment too old to certify.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable
from typing import Annotated

from aipg.pouw import (
    COMMITTEE_DELAY,
    Assignment,
    Job,
    PouwError,
    Receipt,
    committee_for,
    receipt_id,
    validate_assignment,
    validate_job,
    validate_receipt,
)
from aipg.pouw.commitment import chain_head
from aipg.pouw.records import MAX_LATENT_BYTES, MAX_STEPS, hash_tagged
from aipg.wire import (
    NO_SIGNATURE,
    NO_SIGNER,
    U32,
    Address,
    Hash32,
    MaxLen,
    PublicKeyBytes,
    Record,
    SignatureBytes,
    WireError,
    record,
    require_signature,
)

from .audit import audited_claim, forfeit
from .money import credit, debit, slash
from .state import Challenge, State
from .types import LedgerError

# A check re-runs 3 steps: the latents before and after each, and the final one (7);
# 7 of the largest latents the wire allows keep an answer under gossip's 4 MiB.
MAX_CHALLENGE_LATENTS = 7
MAX_ANSWER_BYTES = MAX_CHALLENGE_LATENTS * (MAX_LATENT_BYTES + 16) + (MAX_STEPS + 1) * 34 + 4096


@record(tag=460, max_size=1 << 20)
class WithholdingChallenge(Record):
    """A committee member asks, on chain, for latents the worker did not serve it."""

    job: Job
    assignment: Assignment
    receipt: Receipt
    steps: Annotated[tuple[U32, ...], MaxLen(MAX_CHALLENGE_LATENTS)]
    signer: PublicKeyBytes = NO_SIGNER
    signature: SignatureBytes = NO_SIGNATURE


@record(tag=461, max_size=MAX_ANSWER_BYTES)
class ChallengeAnswer(Record):
    """The worker's answer: every latent digest of the receipt and the asked-for
    latents (little-endian float32 in ``shape``), in the challenge's order."""

    receipt_id: Hash32
    challenger: PublicKeyBytes
    steps: Annotated[tuple[U32, ...], MaxLen(MAX_CHALLENGE_LATENTS)]
    shape: Annotated[tuple[U32, ...], MaxLen(8)]
    digests: Annotated[tuple[Hash32, ...], MaxLen(MAX_STEPS + 1)]
    latents: Annotated[
        tuple[Annotated[bytes, MaxLen(MAX_LATENT_BYTES)], ...], MaxLen(MAX_CHALLENGE_LATENTS)
    ]
    signer: PublicKeyBytes = NO_SIGNER
    signature: SignatureBytes = NO_SIGNATURE


def steps_digest(steps: Iterable[int]) -> bytes:
    return hashlib.sha256(b"".join(struct.pack("<I", i) for i in steps)).digest()


def raw_latent_digest(shape: Iterable[int], raw: bytes) -> bytes:
    """:func:`aipg.pouw.commitment.latent_digest` of a latent given as bytes."""
    dims = tuple(shape)
    return hash_tagged(b"latent/1", struct.pack(f"<{len(dims)}I", *dims), raw)


def challenge_key(rid: bytes, challenger: bytes) -> bytes:
    return rid + challenger


def _signed(rec, what: str, signer: bytes | None = None) -> None:
    try:
        require_signature(rec, signer)
    except WireError as e:
        raise LedgerError(f"{what}: {e.reason}") from None


# --- challenges -------------------------------------------------------------------------


def process_challenges(s: State, challenges: Iterable[WithholdingChallenge]) -> None:
    for i, c in enumerate(challenges):
        try:
            rid = check_challenge(s, c)
        except (LedgerError, PouwError) as e:
            raise LedgerError(f"challenge {i}: {e}") from None
        fee = s.params.challenge_fee
        debit(s, Address.from_public_key(c.signer).raw, fee)
        s.put("punished", b"challenge" + challenge_key(rid, c.signer), s.height)
        row = Challenge(
            worker=bytes(c.receipt.signer),
            challenger=bytes(c.signer),
            commitment=bytes(c.receipt.commitment),
            steps_digest=steps_digest(c.steps),
            fee=fee,
            deadline=s.height + s.params.challenge_period,
        )
        s.put("challenges", challenge_key(rid, c.signer), row)


def check_challenge(s: State, c: WithholdingChallenge) -> bytes:
    """The challenged receipt's id; LedgerError or PouwError naming the rule broken."""
    validate_job(c.job)
    validate_assignment(c.assignment, c.job)
    validate_receipt(c.receipt, c.job, c.assignment)
    if c.job.diffusion is None:
        raise LedgerError("only a diffusion receipt has latents to withhold")
    steps = list(c.steps)
    if not steps or steps != sorted(set(steps)) or steps[-1] > c.receipt.steps:
        raise LedgerError(
            f"ask for 1..{MAX_CHALLENGE_LATENTS} distinct latents 0..{c.receipt.steps}, in order"
        )
    rid = receipt_id(c.receipt)
    if b"challenge" + challenge_key(rid, c.signer) in s.punished:
        raise LedgerError("this member already challenged this receipt")
    if c.receipt.job_id in s.certified:
        raise LedgerError("the job is certified: nothing is withheld from its committee")
    if not 0 <= c.assignment.height < s.height or (
        s.height - c.assignment.height > s.params.escrow_period
    ):
        raise LedgerError(f"assignment at height {c.assignment.height} is too old or too new")
    committed = s.commitments.get(c.receipt.job_id)
    if committed is None:
        raise LedgerError("the job was never committed (COMMIT or ESCROW)")
    seed_height = committed + COMMITTEE_DELAY  # D56: the block whose beacon draws it
    validators, beacon = s.validator_snapshot_at(seed_height), s.beacon_at(seed_height)
    if seed_height >= s.height or validators is None or beacon is None:
        raise LedgerError(f"the committee's block {seed_height} is not final or not kept")
    committee = committee_for(
        c.job,
        c.assignment,
        validators,
        beacon,
        size=s.params.job_committee_size(),
        rules=s.params.job_committee_rules(),
    )
    if c.signer not in committee:
        raise LedgerError("the challenger is not a candidate of the job's committee")
    if s.balance(Address.from_public_key(c.signer).raw) < s.params.challenge_fee:
        raise LedgerError(f"the challenger cannot deposit the fee of {s.params.challenge_fee}")
    _signed(c, "challenge.signature")
    return rid


# --- answers ----------------------------------------------------------------------------


def process_answers(s: State, answers: Iterable[ChallengeAnswer]) -> None:
    for i, a in enumerate(answers):
        try:
            row = check_answer(s, a)
        except (LedgerError, PouwError) as e:
            raise LedgerError(f"answer {i}: {e}") from None
        s.put("challenges", challenge_key(a.receipt_id, a.challenger), None)
        credit(s, Address.from_public_key(row.worker).raw, row.fee)


def check_answer(s: State, a: ChallengeAnswer) -> Challenge:
    """The open challenge ``a`` answers; LedgerError or PouwError naming the rule."""
    row = s.challenges.get(challenge_key(a.receipt_id, a.challenger))
    if row is None:
        raise LedgerError("no open challenge of this member on this receipt")
    if steps_digest(a.steps) != row.steps_digest:
        raise LedgerError("the answer is for other latents than were asked")
    if len(a.latents) != len(a.steps):
        raise LedgerError(f"{len(a.latents)} latents for {len(a.steps)} asked")
    if not a.digests or chain_head(a.digests) != row.commitment:
        raise LedgerError("the digests' hash chain is not the receipt's commitment")
    size = 4
    for d in a.shape:
        size *= d
    for step, raw in zip(a.steps, a.latents, strict=True):
        if len(raw) != size or step >= len(a.digests):
            raise LedgerError(f"latent {step} has {len(raw)} bytes for shape {tuple(a.shape)}")
        if raw_latent_digest(a.shape, raw) != a.digests[step]:
            raise LedgerError(f"latent {step} does not match its digest")
    _signed(a, "answer.signature", row.worker)
    return row


def expire_challenges(s: State) -> None:
    """Challenges past their deadline unanswered: the worker is slashed (burned), the
    challenger's fee returns."""
    for key, row in sorted(s.challenges.items()):
        if s.height > row.deadline:
            s.put("challenges", key, None)
            credit(s, Address.from_public_key(row.challenger).raw, row.fee)
            # An audited claim whose latents stay withheld failed its audit (D82): it
            # is slashed as fraud and forfeits its claims, or skipping the work of
            # sampled jobs would cost only the withholding share when audited.
            audited = audited_claim(s, key[:32])
            bps = s.params.fraud_slash_bps if audited else s.params.withholding_slash_bps
            s.burned += slash(s, row.worker, max(bps, s.params.withholding_slash_bps))
            if audited:
                forfeit(s, row.worker)
