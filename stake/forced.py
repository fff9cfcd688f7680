"""Forced errors on chain (D75): the ledger's rule for a worker's :class:`ForcedError`.

A block may carry a ForcedError once the receipt's commit phase has closed. The ledger
checks, without running a model:

- the job, assignment and receipt as for a certificate (signed, bound, committed, not
  too old), and that the job's kind has forced errors;
- the worker's VRF proof over (β = the beacon of the committee's seed block, the
  assignment id), and that its output is under ``forced_error_bps``;
- that the receipt's output hash is the prescribed change of the true tokens carried;
- the verdicts: committee members', seated, once each, each matching the commitment a
  block carried in time (as a certificate's).

Then, the first time for a job: the job is settled as certified (its fee from its
escrow, its work units for the work pool: the worker did what the protocol asked), an
open conviction of the receipt is void and no later fraud evidence is taken (the honest
members' evidence convicts nobody), and the invalid votes share this block's verdict
pool. The *valid* votes open a **forced review** (``forced_reviews``: digest of a
FraudEvidence holding those votes -> height): the ledger cannot tell a receipt that
really carries the change from a correct one its worker later claims was forced (the
"true" tokens are the worker's word), so slashing anyone takes a review committee's
two thirds, drawn as D38 draws one. Upheld (the receipt is wrong): each valid voter
vouched for work it did not check and is slashed ``lazy_slash_bps`` (burned) and jailed
``jail_period``. Overturned (the receipt is right): the worker skipped its forced error
and lied about it, and is slashed ``fraud_slash_bps`` (burned). Undecided within
``review_period``: it expires, nobody slashed.

A verdict the first ForcedError left out (a worker shielding a lazy friend) is not lost:
anyone may put another ForcedError for the same receipt in a later block, carrying
only verdicts not processed before (``punished``: b"forced" + receipt id + member).

**Reveals are owed (D95).** A member that committed on a receipt proven forced and
whose vote no ForcedError carried within ``review_period`` blocks of the first one is
slashed ``lazy_slash_bps`` and jailed, as a lazy valid vote is, unless the liveness
window shows it offline for most of that time (it missed more than half of those
heights, or is jailed for downtime): committing and then hiding the vote once others'
reveals show the receipt wrong must cost what revealing it would have. A member that
never committed is only absent. Pending rows: ``punished`` b"unrev" + receipt id +
member -> the height of the first ForcedError.
"""

from __future__ import annotations

from collections.abc import Iterable

from aipg.pouw import (
    FraudEvidence,
    FraudReview,
    PouwError,
    Tier,
    abstains,
    committee_for,
    receipt_id,
    steps_aside,
    validate_review,
)
from aipg.pouw.forced import (
    ForcedError,
    check_forced_change,
    forceable,
    is_forced,
    validate_forced_votes,
)
from aipg.wire.codec import record_digest

from .liveness import missed_at
from .models import certified_work
from .money import slash
from .pool import WorkItem
from .reveal import (
    commit_closes,
    commit_key,
    commitments,
    enabled,
    forget_review,
    review_commitments,
)
from .state import Bond, ForcedReview, State, escrow_key
from .types import LedgerError
from .useful_work import (
    check_work,
    committee_seed_height,
    drawn_for_pool,
    process_reviewed,
    settle_job,
)
from .verdict_rewards import agree

__all__ = ["expire_forced_reviews", "process_all_reviews", "process_forced_errors"]


def process_forced_errors(s: State, items: Iterable[ForcedError]) -> dict[bytes, WorkItem]:
    """Apply each ForcedError (see the module docstring); returns the work it settles:
    job id -> WorkItem, as :func:`~.useful_work.process_certificates` does."""
    work: dict[bytes, WorkItem] = {}
    for i, ev in enumerate(items):
        try:
            fresh, first, voided = check_forced_error(s, ev)
        except (LedgerError, PouwError) as e:
            raise LedgerError(f"forced error {i}: {e}") from None
        rid = receipt_id(ev.receipt)
        jid = ev.receipt.job_id
        for v in fresh:
            s.put("punished", _member_key(rid, v.signer), s.height)
        # The votes' commitments stay until the horizon (quota-bound): a member of this
        # committee drawn to the forced review counts by its first vote's (D76).
        units = _units(s, ev)
        for v in fresh:  # its reveal is carried: nothing owed (D95)
            if _unrevealed_key(rid, v.signer) in s.punished:
                s.put("punished", _unrevealed_key(rid, v.signer), None)
        if first:  # (a conviction it voids carried its voters' reveals: their rows are gone)
            _owe_reveals(s, ev, rid)
        if first:
            s.put("punished", b"forced" + jid, s.height)
            s.put("punished", b"fraud" + jid, s.height)  # the honest evidence convicts nobody
            if voided:
                s.put("convictions", rid, None)
                s.put("punished", b"forcedv" + rid, s.height)
            escrow = None
            if ev.job.tier == Tier.PAID:
                escrow = s.escrows.get(escrow_key(jid, ev.job.client))
            pool_units = units if drawn_for_pool(s, ev.job, ev.receipt) else 0
            work[jid] = settle_job(s, ev.job, ev.receipt, escrow, pool_units)
        if not voided:  # with a conviction open the votes' commitments are gone: no pay
            agree(s, fresh, False, units)
        valid = tuple(v for v in fresh if v.valid and not abstains(v))
        if valid:
            review = FraudEvidence(ev.job, ev.assignment, ev.receipt, valid)
            s.put("forced_reviews", record_digest(review), ForcedReview(s.height, rid))
    return work


def check_forced_error(s: State, ev: ForcedError):
    """(the verdicts not processed before, whether this is the job's first ForcedError,
    whether it voids an open conviction); LedgerError or PouwError naming the rule."""
    p = s.params
    if p.forced_error_bps <= 0:
        raise LedgerError("this chain has no forced errors (forced_error_bps 0)")
    if not forceable(ev.job):
        raise LedgerError("only LLM jobs have forced errors")
    rid = receipt_id(ev.receipt)
    jid = ev.receipt.job_id
    first = b"forced" + jid not in s.punished
    if first and jid in s.certified:
        raise LedgerError(f"job {jid.hex()[:16]} was already certified")
    voided = (first and rid in s.convictions) or b"forcedv" + rid in s.punished
    if any(_member_key(rid, v.signer) in s.punished for v in ev.verdicts):
        raise LedgerError("a verdict of this forced error was processed before")
    if not first and not ev.verdicts:
        raise LedgerError("a later forced error adds at least one verdict")
    if enabled(s) and not voided and not _phase_over(s, ev, rid):
        raise LedgerError("the receipt's commit phase has not closed: a reveal may not be due")
    lookup = None if voided else commitments(s, jid)
    check_work(
        s,
        ev,
        {},
        lambda e, validators, beacon, **kw: _validate_votes(e, validators, beacon, kw, lookup),
    )
    beacon = s.beacon_at(committee_seed_height(s.commitments[jid]))
    if not is_forced(ev.receipt.signer, ev.vrf_proof, beacon, ev.assignment, p.forced_error_bps):
        raise LedgerError("the worker's VRF output does not make this job a forced error")
    check_forced_change(ev.receipt, ev.output_token_ids, ev.vocab_size)
    return ev.verdicts, first, voided


def _phase_over(s: State, ev: ForcedError, rid: bytes) -> bool:
    """Whether no commitment that counts can still be added on ``rid`` (D108, the rule
    a node's ``reveal_open`` applies): its commit phase closed by height, or a block
    already carried a ForcedError of the job (the phase was over then, and the proof is
    public), or every member seated given the abstentions ``ev`` carries that step
    aside (those of members without a commitment) has a commitment, or, with fixed
    seats, an abstention ``ev`` carries."""
    closes = commit_closes(s, rid)
    if closes is None:
        return False
    if s.height > closes or b"forced" + ev.receipt.job_id in s.punished:
        return True
    committee = _committee(s, ev)
    if committee is None:
        return False
    lookup = commitments(s, ev.receipt.job_id)
    abstained = {v.signer for v in ev.verdicts if abstains(v)}
    aside = {k for k in abstained if steps_aside(rid, k, lookup)}
    return all(
        (lookup is not None and lookup(rid, k) is not None) or k in abstained
        for k in committee.seated(aside)
    )


def _committee(s: State, ev: ForcedError):
    """The job's committee, or None when its seed block is not (or no longer) kept."""
    committed = s.commitments.get(ev.receipt.job_id)
    if committed is None:
        return None
    seed = committee_seed_height(committed)
    snapshot, beacon = s.validator_snapshot_at(seed), s.beacon_at(seed)
    if snapshot is None or beacon is None:
        return None
    return committee_for(
        ev.job, ev.assignment, snapshot, beacon, rules=s.params.job_committee_rules()
    )


def _validate_votes(ev, validators, beacon, kw, lookup) -> None:
    validate_forced_votes(
        ev,
        validators,
        beacon,
        committee_size=kw["committee_size"],
        committed=lookup,
        rules=kw["rules"],
    )


def _member_key(rid: bytes, member: bytes) -> bytes:
    return b"forced" + rid + member


def _units(s: State, ev: ForcedError) -> int:
    try:
        return certified_work(s, ev.job, ev.receipt)
    except LedgerError:
        return 0


# --- forced reviews ---------------------------------------------------------------------


def process_all_reviews(s: State, reviews: Iterable[FraudReview]) -> dict[bytes, WorkItem]:
    """Reviews of forced reviews (:func:`process_forced_reviews`) and of convictions
    (:func:`~.useful_work.process_reviewed`), in the block's order."""
    work: dict[bytes, WorkItem] = {}
    for i, review in enumerate(reviews):
        if record_digest(review.evidence) in s.forced_reviews:
            try:
                decide_forced_review(s, review)
            except (LedgerError, PouwError) as e:
                raise LedgerError(f"review {i}: {e}") from None
        else:
            work.update(process_reviewed(s, [review]))
    return work


def decide_forced_review(s: State, review: FraudReview) -> None:
    ev = review.evidence
    digest = record_digest(ev)
    height = s.forced_reviews[digest].height
    beacon = s.beacon_at(height)
    validators = s.validator_snapshot_at(height)
    if beacon is None or validators is None:
        raise LedgerError(f"the validators of block {height} are no longer kept")
    upheld = validate_review(
        review,
        validators,
        beacon,
        committee_size=s.params.committee_size,
        check_challenges=False,
        rules=s.params.committee_rules(),
        committed=review_commitments(s, ev),
    )
    s.put("forced_reviews", digest, None)
    forget_review(s, receipt_id(ev.receipt))
    if upheld:  # the receipt is wrong: each valid voter vouched for it unchecked
        for v in ev.verdicts:
            punish_lazy(s, v.signer)
    else:  # the receipt is right: the worker skipped its forced error and claimed it
        s.burned += slash(s, ev.receipt.signer, s.params.fraud_slash_bps)


def punish_lazy(s: State, member: bytes) -> None:
    """Slash ``lazy_slash_bps`` (burned) and jail for ``jail_period``, like a double signer."""
    s.burned += slash(s, member, s.params.lazy_slash_bps)
    b = s.bond(member)
    if b.stake:
        s.put("bonds", member, Bond(b.stake, s.height + s.params.jail_period))


def expire_forced_reviews(s: State) -> None:
    """Forced reviews undecided within ``review_period`` blocks: nobody is slashed.
    Then the reveals owed on forced receipts that are due (:func:`judge_unrevealed`)."""
    for digest, row in list(s.forced_reviews.items()):
        if s.height - row.height > s.params.review_period:
            s.put("forced_reviews", digest, None)
            forget_review(s, row.receipt_id)
    judge_unrevealed(s)


# --- reveals owed (D95) -------------------------------------------------------------------

UNREVEALED = b"unrev"


def _unrevealed_key(rid: bytes, member: bytes) -> bytes:
    return UNREVEALED + rid + member


def _owe_reveals(s: State, ev: ForcedError, rid: bytes) -> None:
    """The first ForcedError of ``rid``: each seated member (the committee's seats once
    the abstentions it carries have stepped aside; a committed member's does not, D108)
    with a commitment on it whose vote it did not carry owes its reveal (by
    ``review_period`` blocks from now). A reserve that committed is not seated, and no
    block could carry its vote: it owes nothing."""
    committee = _committee(s, ev)
    if committee is None:
        return
    carried = {v.signer for v in ev.verdicts}
    lookup = commitments(s, ev.receipt.job_id)
    gone = {v.signer for v in ev.verdicts if abstains(v) and steps_aside(rid, v.signer, lookup)}
    for member in committee.seated(gone):
        if member not in carried and commit_key(rid, member) in s.verdict_commits:
            s.put("punished", _unrevealed_key(rid, member), s.height)


def judge_unrevealed(s: State) -> None:
    """Each reveal owed ``review_period`` blocks ago and still not carried: the member
    is punished as a lazy voter, unless it was offline for most of that time."""
    period = s.params.review_period
    owed = [
        (k, h) for k, h in s.punished.items() if k.startswith(UNREVEALED) and s.height - h > period
    ]
    for key, since in owed:
        s.put("punished", key, None)
        member = key[len(UNREVEALED) + 32 :]
        if was_online(s, member, since, s.height - 1):
            punish_lazy(s, member)


def was_online(s: State, member: bytes, first: int, last: int) -> bool:
    """Whether ``member`` signed at least half of the heights ``first`` .. ``last`` the
    liveness window still holds (a key not jailed for downtime with no row signed them
    all; a key out of the set has no row either, and a committed member was in it)."""
    row = s.liveness.get(member)
    if row is None:
        return True
    if row.jailed_until:
        return False
    heights = range(max(first, last - s.params.signed_blocks_window + 1), last + 1)
    missed = sum(1 for h in heights if missed_at(s, row, h))
    return missed * 2 <= len(heights)
