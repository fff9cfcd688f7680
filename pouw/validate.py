"""Cheap validation: signatures, hashes, bindings, committee membership, quorum.

Nothing here runs a model: a certificate with 5 verdicts costs 13 Ed25519 checks (job,
assignment, receipt, and each verdict's signature and challenge) and one committee
draw, about 2.3 ms on the 2-core CI machine. Re-execution lives in
:mod:`aipg.pouw.verify`. Every check raises :class:`PouwError` naming the rule that
failed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from aipg.wire import (
    NO_SIGNATURE,
    Address,
    Identity,
    WireError,
    require_signature,
    verify_signature,
)
from aipg.wire.codec import record_digest

from .committee import (
    COMMITTEE_LOOKAHEAD,
    COMMITTEE_SIZE,
    Committee,
    CommitteeRules,
    Tally,
    committee_seed,
    draw_committee,
    tally_seated,
)
from .errors import PouwError
from .records import (
    Assignment,
    Certificate,
    ConflictingVerdicts,
    EquivocationEvidence,
    FraudEvidence,
    FraudReview,
    Job,
    Receipt,
    Verdict,
    VerdictReason,
    assignment_id,
    hash_tagged,
    job_id,
    params_hash,
    receipt_id,
)
from .reveal import CommitLookup, check_reveal, steps_aside
from .work import work_units

__all__ = [
    "FinalizedHash",
    "abstains",
    "challenge_message",
    "check_hash",
    "committee_for",
    "computes_differently",
    "interested",
    "make_challenge",
    "review_committee",
    "review_seed",
    "validate_assignment",
    "validate_certificate",
    "validate_conflicting_verdicts",
    "validate_equivocation",
    "validate_fraud_evidence",
    "validate_job",
    "validate_receipt",
    "validate_review",
    "validate_verdict",
    "votes_differ",
]

# height -> hash of the finalized block at that height, or None when there is none (yet).
FinalizedHash = Callable[[int], bytes | None]


def _signed(rec, what: str, signer: bytes | None = None) -> None:
    try:
        require_signature(rec, signer)
    except WireError as e:
        raise PouwError(what, e.reason) from None


def _require(cond: bool, what: str, message: str) -> None:
    if not cond:
        raise PouwError(what, message)


# ------------------------------------------------------------------- one record


def validate_job(job: Job) -> None:
    """A job is signed by its gateway and names exactly one kind of parameters."""
    _signed(job, "job.signature")
    _require(
        (job.llm is None) != (job.diffusion is None),
        "job.params",
        "a job has exactly one of llm / diffusion parameters",
    )
    _require(job.deadline_ms > job.created_ms, "job.deadline_ms", "deadline is not after creation")


def validate_assignment(assignment: Assignment, job: Job) -> None:
    """The assignment is for ``job`` and signed by the gateway that signed the job."""
    _signed(assignment, "assignment.signature", job.signer)
    _require(assignment.job_id == job_id(job), "assignment.job_id", "assignment is for another job")
    _require(
        assignment.height >= COMMITTEE_LOOKAHEAD,
        "assignment.height",
        f"assignment height must be at least {COMMITTEE_LOOKAHEAD}",
    )


def validate_receipt(receipt: Receipt, job: Job, assignment: Assignment) -> None:
    """The receipt is signed by the assigned worker and binds this job: model, params,
    seed, assignment, and counts consistent with the job and with its work units.

    What the receipt's hashes commit to (tokens, image, commitment) is checked by
    :mod:`aipg.pouw.verify`, which has the outputs.
    """
    _signed(receipt, "receipt.signature", assignment.worker)
    _require(receipt.job_id == job_id(job), "receipt.job_id", "receipt is for another job")
    _require(receipt.model_id == job.model_id, "receipt.model_id", "receipt names another model")
    _require(
        receipt.profile.model_id == job.model_id,
        "receipt.profile",
        "execution profile names another model",
    )
    _require(
        receipt.assignment_id == assignment_id(assignment),
        "receipt.assignment_id",
        "receipt is for another assignment",
    )
    _require(receipt.params_hash == params_hash(job), "receipt.params_hash", "params differ")
    _require(receipt.seed == job.seed, "receipt.seed", "receipt used another seed")
    _validate_counts(receipt, job)
    expected = work_units(
        job.kind,
        job.cost_milli,
        prompt_tokens=receipt.prompt_tokens,
        output_tokens=receipt.output_tokens,
        steps=receipt.steps,
        latent_pixels=receipt.latent_pixels,
    )
    _require(
        receipt.work_units == expected,
        "receipt.work_units",
        f"claims {receipt.work_units} work units, its counts give {expected}",
    )


def _validate_counts(receipt: Receipt, job: Job) -> None:
    if job.llm is not None:
        _require(receipt.prompt_tokens >= 1, "receipt.prompt_tokens", "an LLM prompt is not empty")
        _require(
            1 <= receipt.output_tokens <= job.llm.max_tokens,
            "receipt.output_tokens",
            f"{receipt.output_tokens} tokens is outside 1..{job.llm.max_tokens}",
        )
        _require(
            receipt.steps == 0 and receipt.latent_pixels == 0,
            "receipt.steps",
            "an LLM receipt counts no diffusion steps",
        )
    else:
        assert job.diffusion is not None
        _require(
            receipt.steps == job.diffusion.steps,
            "receipt.steps",
            f"claims {receipt.steps} steps, the job asked for {job.diffusion.steps}",
        )
        _require(
            receipt.prompt_tokens == 0 and receipt.output_tokens == 0,
            "receipt.output_tokens",
            "a diffusion receipt counts no tokens",
        )
        # A latent is at most as large as the image, and at least one pixel.
        pixels = job.diffusion.width * job.diffusion.height
        _require(
            1 <= receipt.latent_pixels <= pixels,
            "receipt.latent_pixels",
            f"{receipt.latent_pixels} latent pixels for a {pixels}-pixel image",
        )


def challenge_message(receipt_id_: bytes) -> bytes:
    """What a validator signs to make its challenge for one receipt."""
    return b"aipg/challenge/1\0" + receipt_id_


def make_challenge(identity: Identity, receipt_id_: bytes) -> bytes:
    """The validator's challenge for a receipt: its signature over the receipt id.

    Ed25519 signatures are deterministic, unpredictable without the key, and anyone
    can check them, so the challenge seeds the validator's random choices (which
    diffusion steps it re-runs) where the worker could not have foreseen them.
    """
    return identity.sign(challenge_message(receipt_id_))


def check_hash(validator: bytes, receipt_id_: bytes, recomputed: bytes) -> bytes:
    """The hash a verdict carries over the validator's own recomputed data."""
    return hash_tagged(b"verdict/check/1", validator, receipt_id_, recomputed)


def validate_verdict(verdict: Verdict, receipt: Receipt, *, check_challenge: bool = True) -> None:
    """The verdict is signed, about this receipt, carries a valid challenge of its
    signer (unless ``check_challenge`` is false), and its reason agrees with its vote."""
    _signed(verdict, "verdict.signature")
    rid = receipt_id(receipt)
    _require(verdict.receipt_id == rid, "verdict.receipt_id", "verdict is about another receipt")
    _require(verdict.job_id == receipt.job_id, "verdict.job_id", "verdict is about another job")
    _require(
        not check_challenge
        or verify_signature(verdict.signer, verdict.challenge, challenge_message(rid)),
        "verdict.challenge",
        "challenge is not the signer's signature over the receipt id",
    )
    try:
        reason = VerdictReason(verdict.reason)
    except ValueError:
        raise PouwError("verdict.reason", f"unknown reason code {verdict.reason}") from None
    _require(
        (reason == VerdictReason.OK) == verdict.valid,
        "verdict.reason",
        f"a {'valid' if verdict.valid else 'invalid'} vote with reason {reason.name}",
    )


# ------------------------------------------------------------- committee, quorum


def committee_for(
    job: Job,
    assignment: Assignment,
    validators: Mapping[bytes, int],
    beacon: bytes,
    *,
    size: int = COMMITTEE_SIZE,
    rules: CommitteeRules | None = None,
) -> Committee:
    """The committee of a job: drawn by ``beacon`` (the beacon ``COMMITTEE_DELAY``
    blocks after the block that committed the job, D56) from ``validators`` (the
    snapshot at that block), without the job's worker, gateway and client (nobody
    checks work they have a stake in)."""
    _require(
        isinstance(beacon, bytes) and len(beacon) == 32, "committee.beacon", "a beacon is 32 bytes"
    )
    return (rules or CommitteeRules(size)).draw(
        validators,
        committee_seed(beacon, job_id(job)),
        interested(job, assignment, validators),
    )


def interested(job: Job, assignment: Assignment, keys: Iterable[bytes]) -> set[bytes]:
    """The keys among ``keys`` with a stake in the job: its worker, its gateway, and
    any whose account is the job's client."""
    out = {bytes(assignment.worker), bytes(job.signer)}
    out.update(k for k in keys if Address.from_public_key(k).raw == job.client)
    return out


def abstains(verdict: Verdict) -> bool:
    """An UNAVAILABLE verdict is no vote: the member could not check the work."""
    return verdict.reason == VerdictReason.UNAVAILABLE


def _tally_verdicts(
    verdicts: tuple[Verdict, ...],
    receipt: Receipt,
    committee: Committee,
    validators: Mapping[bytes, int],
    check_challenges: bool = True,
    committed: CommitLookup | None = None,
) -> Tally:
    votes: dict[bytes, bool | None] = {}
    seen: set[bytes] = set()
    rid = receipt_id(receipt)
    for i, verdict in enumerate(verdicts):
        try:
            validate_verdict(verdict, receipt, check_challenge=check_challenges)
            if committed is not None:
                check_reveal(verdict, committed)
        except PouwError as e:
            raise PouwError(f"verdicts[{i}].{e.what.removeprefix('verdict.')}", e.reason) from None
        _require(verdict.signer in committee, f"verdicts[{i}].signer", "not a committee member")
        _require(verdict.signer not in seen, f"verdicts[{i}].signer", "member voted twice")
        seen.add(verdict.signer)
        if not abstains(verdict):
            votes[verdict.signer] = verdict.valid
        elif steps_aside(rid, verdict.signer, committed):
            votes[verdict.signer] = None
        # else (D108): a member with a commitment keeps its seat, without a vote
    seated = committee.seated(k for k, v in votes.items() if v is None)
    for i, verdict in enumerate(verdicts):
        _require(
            abstains(verdict) or verdict.signer in seated,
            f"verdicts[{i}].signer",
            "a reserve whose seat no abstention opened",
        )
    return tally_seated(committee, validators, votes)


def _validate_work(
    job: Job,
    assignment: Assignment,
    receipt: Receipt,
    verdicts: tuple[Verdict, ...],
    validators: Mapping[bytes, int],
    beacon: bytes,
    size: int,
    check_challenges: bool = True,
    committed: CommitLookup | None = None,
    rules: CommitteeRules | None = None,
) -> Tally:
    validate_job(job)
    validate_assignment(assignment, job)
    validate_receipt(receipt, job, assignment)
    committee = committee_for(job, assignment, validators, beacon, size=size, rules=rules)
    _require(bool(committee.candidates), "committee", "no eligible validator has stake")
    return _tally_verdicts(verdicts, receipt, committee, validators, check_challenges, committed)


def validate_certificate(
    cert: Certificate,
    validators: Mapping[bytes, int],
    beacon: bytes,
    *,
    committee_size: int = COMMITTEE_SIZE,
    check_challenges: bool = True,
    committed: CommitLookup | None = None,
    rules: CommitteeRules | None = None,
) -> None:
    """Check a certificate without running any model.

    ``validators`` is the validator-set snapshot {public key: bonded stake} in effect at
    the committee's seed block, and ``beacon`` that block's beacon (D56: the block
    ``COMMITTEE_DELAY`` after the one that committed the job). Checks, in order: the job, the
    assignment and the receipt (signatures and bindings), each verdict (signature,
    receipt, challenge, committee membership, one vote per member), and that valid
    votes hold >= 2/3 of the committee's stake. Raises PouwError naming the failed rule.

    ``check_challenges=False`` skips re-verifying each verdict's challenge signature.
    A block does that: challenges are checked when verdicts are collected from gossip
    (:class:`VoteCollector`), and at block time a challenge authorizes nothing that the
    verdict's own (checked) signature does not, while it is a third of the signatures.

    ``committed`` (commit, then reveal): every vote must match a commitment a block
    carried in time (:func:`aipg.pouw.reveal.check_reveal`).
    """
    t = _validate_work(
        cert.job,
        cert.assignment,
        cert.receipt,
        cert.verdicts,
        validators,
        beacon,
        committee_size,
        check_challenges,
        committed,
        rules,
    )
    _require(not t.short, "quorum", "too many abstentions: the committee has empty seats")
    _require(
        t.certifies,
        "quorum",
        f"valid votes hold {t.valid_stake} of {t.committee_stake} seats "
        f"(< {t.quorum[0]}/{t.quorum[1]})",
    )


def computes_differently(a: Receipt, b: Receipt) -> bool:
    """Whether two receipts for one assignment claim different results (anything but
    the timings differs)."""
    untimed = {"elapsed_ms": 0, "first_output_ms": 0, "signature": NO_SIGNATURE}
    return a.replace(**untimed) != b.replace(**untimed)


def validate_equivocation(evidence: EquivocationEvidence) -> None:
    """Check that one worker signed two receipts computing different results for one
    assignment. Needs no chain state beyond the worker's key. Raises PouwError."""
    a, b = evidence.receipt_a, evidence.receipt_b
    _signed(a, "receipt_a.signature")
    _signed(b, "receipt_b.signature")
    _require(a.signer == b.signer, "receipt_b.signer", "the receipts have different signers")
    _require(
        a.assignment_id == b.assignment_id and a.job_id == b.job_id,
        "receipt_b.assignment_id",
        "the receipts are for different assignments",
    )
    _require(receipt_id(a) < receipt_id(b), "receipt_a", "receipts not in receipt id order")
    _require(computes_differently(a, b), "receipt_b", "the receipts report one computation")


def votes_differ(a: Verdict, b: Verdict) -> bool:
    """Whether two verdicts vote differently (valid, invalid for a reason, abstain);
    another ``detail`` text alone is the same vote."""
    return (a.valid, a.reason) != (b.valid, b.reason)


def validate_conflicting_verdicts(evidence: ConflictingVerdicts) -> None:
    """Check that one validator signed two different votes on one receipt. Needs no
    chain state beyond the validator's key. Raises PouwError."""
    a, b = evidence.verdict_a, evidence.verdict_b
    _signed(a, "verdict_a.signature")
    _signed(b, "verdict_b.signature")
    _require(a.signer == b.signer, "verdict_b.signer", "the verdicts have different signers")
    _require(
        a.receipt_id == b.receipt_id,
        "verdict_b.receipt_id",
        "the verdicts are on different receipts",
    )
    _require(record_digest(a) < record_digest(b), "verdict_a", "verdicts not in digest order")
    _require(votes_differ(a, b), "verdict_b", "the verdicts cast the same vote")


def review_seed(block_hash: bytes, receipt_id_: bytes) -> bytes:
    """The seed of a conviction's review: the beacon of the block that carried the
    evidence (unknown when the job, its assignment and the first verdicts were signed,
    and unlike that block's hash not chosen by its proposer, D56) and the receipt."""
    return hash_tagged(b"review/seed/1", block_hash, receipt_id_)


def review_committee(
    evidence: FraudEvidence,
    validators: Mapping[bytes, int],
    block_hash: bytes,
    size: int,
    rules: CommitteeRules | None = None,
) -> Committee:
    """Who reviews ``evidence``, carried by the block ``block_hash``: ``2 * size`` seats
    drawn from ``validators`` without the job's interested parties and without the
    members whose verdicts the evidence holds (a review is a second, independent look);
    when no one else is left, from those members again."""
    keys = validators.keys()
    excluded = interested(evidence.job, evidence.assignment, keys)
    first_look = excluded | {v.signer for v in evidence.verdicts}
    if not any(k not in first_look and validators[k] > 0 for k in keys):
        first_look = excluded  # a small network: the same members look again
    seed = review_seed(block_hash, receipt_id(evidence.receipt))
    r = rules or CommitteeRules(size)
    return draw_committee(
        validators,
        seed,
        2 * r.size,
        first_look,
        quorum=r.quorum,
        cap_bps=r.cap_bps,
        spares=r.spares,
    )


def validate_review(
    review: FraudReview,
    validators: Mapping[bytes, int],
    block_hash: bytes,
    *,
    committee_size: int = COMMITTEE_SIZE,
    check_challenges: bool = True,
    rules: CommitteeRules | None = None,
    committed: CommitLookup | None = None,
) -> bool:
    """Check a review of the conviction that block ``block_hash`` carried, against the
    validator set at that block; True when it upholds the conviction, False when it
    overturns it. Raises PouwError when it decides neither (two thirds either way of
    the seated stake are needed: slashing anyone takes a supermajority). ``committed``
    (commit-revealed reviews, D76): every vote must match a reviewer's commitment a
    block carried in time."""
    committee = review_committee(review.evidence, validators, block_hash, committee_size, rules)
    _require(bool(committee.candidates), "review.committee", "no eligible reviewer has stake")
    t = _tally_verdicts(
        review.verdicts, review.evidence.receipt, committee, validators, check_challenges, committed
    )
    _require(not t.short, "review.quorum", "too many abstentions: the review has empty seats")
    if t.upholds:
        return True
    _require(
        t.certifies,
        "review.quorum",
        f"neither side holds {t.quorum[0]}/{t.quorum[1]} of {t.committee_stake} review seats "
        f"(valid {t.valid_stake}, invalid {t.invalid_stake})",
    )
    return False


def validate_fraud_evidence(
    evidence: FraudEvidence,
    validators: Mapping[bytes, int],
    beacon: bytes,
    *,
    committee_size: int = COMMITTEE_SIZE,
    check_challenges: bool = True,
    committed: CommitLookup | None = None,
    rules: CommitteeRules | None = None,
) -> None:
    """Check fraud evidence like :func:`validate_certificate`, except that invalid votes
    must hold > 1/3 of the committee's stake. The worker to slash is
    ``evidence.receipt.signer``."""
    t = _validate_work(
        evidence.job,
        evidence.assignment,
        evidence.receipt,
        evidence.verdicts,
        validators,
        beacon,
        committee_size,
        check_challenges,
        committed,
        rules,
    )
    _require(not t.short, "quorum", "too many abstentions: the committee has empty seats")
    _require(
        t.convicts,
        "quorum",
        f"invalid votes hold {t.invalid_stake} of {t.committee_stake} seats "
        f"(<= {t.quorum[1] - t.quorum[0]}/{t.quorum[1]})",
    )


def validate_appeal(
    evidence: FraudEvidence,
    validators: Mapping[bytes, int],
    beacon: bytes,
    *,
    committee_size: int = COMMITTEE_SIZE,
    check_challenges: bool = True,
    committed: CommitLookup | None = None,
    rules: CommitteeRules | None = None,
) -> None:
    """Check an appeal (D96): fraud evidence with no verdicts, which sends an audited
    claim its committee left undecided to a review. Checks the job, the assignment and
    the receipt as :func:`validate_fraud_evidence` does, and that the job has a
    committee; whether the claim may be appealed yet is the ledger's to say."""
    _require(not evidence.verdicts, "appeal.verdicts", "an appeal carries no verdicts")
    _validate_work(
        evidence.job,
        evidence.assignment,
        evidence.receipt,
        (),
        validators,
        beacon,
        committee_size,
        check_challenges,
        committed,
        rules,
    )
