"""Verdict commitments on chain: what makes "committed in time" checkable by anyone.

Blocks carry :class:`~aipg.pouw.VerdictCommit` records (``verdict_commits``). The first
one carried for a receipt opens its commit phase (``commit_windows``: receipt id ->
that block's height); the phase closes ``verdict_commit_blocks`` blocks later, and a
block carrying a commitment after that is invalid. Each member commits once per
receipt (``verdict_commits``: receipt id + member key -> the commitment and its height).

A certificate or fraud evidence counts a member's vote only when the revealed verdict
matches the commitment stored for it (:func:`commitments`), so the ledger checks the
timing from its own state: no signature can prove *when* it was made, but a block can
prove that it was made before.

What the ledger keeps is bounded (D77). A commitment names its receipt's job; it is
taken only for a job committed on chain whose committee's seed block is final, from a
key in the validator set that committee is drawn from, on at most ``COMMITS_PER_JOB``
receipts per job and member (``commit_jobs``), and while the member holds fewer than ``max_open_commits`` rows
(``commit_counts``): a key flooding blocks with commitments on made-up receipts fills
its own quota and nobody else's. It counts only for a certificate or fraud evidence of
that very job, from a seated member (pouw's checks). The rows an outcome counted go with
the block that carries it, and the rest are forgotten, with the other tables
certificates refer to, once no certificate using them could be included (the commit
phase of a receipt opens after its assignment, and an assignment older than
``escrow_period`` blocks is never certified); each row that goes frees its member's
quota.
"""

from __future__ import annotations

from collections.abc import Iterable

from aipg.pouw import (
    COMMITTEE_DELAY,
    CommitLookup,
    PouwError,
    VerdictCommit,
    needs_commitment,
    validate_commit,
)
from aipg.pouw.reveal import verdict_commitment

from .state import CommitRow, State
from .types import LedgerError


def enabled(s: State) -> bool:
    """Whether this chain requires commit-then-reveal (``verdict_commit_blocks`` > 0)."""
    return s.params.verdict_commit_blocks > 0


def commit_key(receipt_id: bytes, member: bytes) -> bytes:
    return receipt_id + member


def commit_closes(s: State, receipt_id: bytes) -> int | None:
    """The last height whose block may carry a commitment for ``receipt_id`` (None: no
    commitment carried yet, the phase has not opened)."""
    opened = s.commit_windows.get(receipt_id)
    return None if opened is None else opened + s.params.verdict_commit_blocks


def process_verdict_commits(s: State, commits: Iterable[VerdictCommit]) -> None:
    """Record each commitment; LedgerError for one the chain does not take."""
    for i, commit in enumerate(commits):
        try:
            if commit.review:
                check_review_commit(s, commit)
            else:
                check_verdict_commit(s, commit)
        except (LedgerError, PouwError) as e:
            raise LedgerError(f"verdict commitment {i}: {e}") from None
        rid = commit.receipt_id
        if commit.review:
            _record_review_commit(s, commit)
            continue
        if rid not in s.commit_windows:
            s.put("commit_windows", rid, s.height)
        s.put(
            "verdict_commits",
            commit_key(rid, commit.signer),
            CommitRow(commit.commitment, s.height, commit.job_id),
        )
        held = s.commit_jobs.get(commit.job_id + commit.signer, ())
        s.put("commit_jobs", commit.job_id + commit.signer, (*held, rid))
        s.put("commit_counts", commit.signer, s.commit_counts.get(commit.signer, 0) + 1)


def check_verdict_commit(s: State, commit: VerdictCommit) -> None:
    if not enabled(s):
        raise LedgerError("this chain does not take verdict commitments (verdict_commit_blocks 0)")
    if not s.bond(commit.signer).stake:
        raise LedgerError("only a bonded key may commit to a verdict")
    if commit_key(commit.receipt_id, commit.signer) in s.verdict_commits:
        raise LedgerError("this member already committed to a verdict on this receipt")
    closes = commit_closes(s, commit.receipt_id)
    if closes is not None and s.height > closes:
        raise LedgerError(f"the receipt's commit phase closed at height {closes}")
    check_bounds(s, commit)
    validate_commit(commit)


# Receipts of one job a member may commit on: one per attempt the gateway makes (3), and
# an equivocating worker's twin; a reassigned job's late first receipt and the next one
# both stay certifiable (the ledger pays the job once).
COMMITS_PER_JOB = 4


def check_bounds(s: State, commit: VerdictCommit) -> None:
    """D77: a committed job whose committee is drawn, a member of the set it is drawn
    from, one commitment per job and member, at most ``max_open_commits`` rows a member."""
    committed = s.commitments.get(commit.job_id)
    if committed is None:
        raise LedgerError("the commitment names a job never committed (COMMIT or ESCROW)")
    seed = committed + COMMITTEE_DELAY
    if seed >= s.height:
        raise LedgerError(f"the job's committee is drawn by block {seed}: not final yet")
    snapshot = s.validator_snapshot_at(seed)
    if snapshot is None or not snapshot.get(commit.signer):
        raise LedgerError(
            "the member is not in the validator set the job's committee is drawn from"
        )
    if len(s.commit_jobs.get(commit.job_id + commit.signer, ())) >= COMMITS_PER_JOB:
        raise LedgerError(
            f"this member already committed to verdicts on {COMMITS_PER_JOB} receipts of this job"
        )
    if s.commit_counts.get(commit.signer, 0) >= s.params.max_open_commits:
        raise LedgerError(
            f"this member holds {s.params.max_open_commits} open commitments, the most it may"
        )


def _drop_row(s: State, key: bytes, table: str = "verdict_commits") -> None:
    """Forget one commitment row, its job-and-member entry and its quota share."""
    row = getattr(s, table).get(key)
    if row is None:
        return
    member = key[32:]
    s.put(table, key, None)
    held = s.commit_jobs.get(row.job_id + member, ())
    if key[:32] in held:
        left = tuple(r for r in held if r != key[:32])
        s.put("commit_jobs", row.job_id + member, left or None)
    left = s.commit_counts.get(member, 0) - 1
    s.put("commit_counts", member, left if left > 0 else None)


def commitments(s: State, job_id: bytes | None = None) -> CommitLookup | None:
    """The lookup certificates and fraud evidence are checked with: a member's
    commitment on a receipt (every stored one was carried in time), only one that names
    ``job_id`` when given (the job being paid or convicted). None when this chain does
    not use commit-reveal."""
    if not enabled(s):
        return None

    def committed(receipt_id: bytes, member: bytes) -> bytes | None:
        row = s.verdict_commits.get(commit_key(receipt_id, member))
        if row is None or (job_id is not None and row.job_id != job_id):
            return None
        return row.commitment

    return committed


def forget_counted(s: State, receipt_id: bytes, verdicts) -> None:
    """A block carried an outcome counting ``verdicts``: their commitments have done
    their work (one receipt is certified or convicted once), so their rows go now
    rather than at the horizon."""
    for v in verdicts:
        _drop_row(s, commit_key(receipt_id, v.signer))


def prune_commitments(s: State) -> None:
    """Forget commitments of receipts whose commit phase opened too long ago for any
    certificate that uses them to be included."""
    horizon = s.height - s.params.escrow_period - s.params.verdict_commit_blocks
    old = [rid for rid, opened in s.commit_windows.items() if opened < horizon]
    if not old:
        return
    gone = set(old)
    for rid in old:
        s.put("commit_windows", rid, None)
    for key in [k for k in s.verdict_commits if k[:32] in gone]:
        _drop_row(s, key)


# --- commit-revealed reviews (D76) --------------------------------------------------------
#
# A conviction's reviewers (and a forced error's, D75) commit before they reveal, as the
# first committee does: a ``VerdictCommit`` with ``review`` set, on the convicted
# receipt. The first one a block carries opens the review's commit phase
# (``review_windows``), which closes ``verdict_commit_blocks`` blocks later (at most half
# the review period: :func:`review_commit_blocks`); a review
# counts a reviewer's vote only when it matches the commitment stored for it
# (``review_commits``). Rows go when the review is decided or expires, and count against
# the member's quota like any commitment.


def review_opened(s: State, receipt_id: bytes) -> int | None:
    """The height of the block that opened the review of ``receipt_id`` (its conviction
    or forced error), or None when no review of it is open."""
    row = s.convictions.get(receipt_id)
    if row is not None:
        return row.height
    for forced in s.forced_reviews.values():
        if forced.receipt_id == receipt_id:
            return forced.height
    return None


def review_closes(s: State, receipt_id: bytes) -> int | None:
    """The last height whose block may carry a review commitment on ``receipt_id``
    (None: no review commitment carried yet)."""
    opened = s.review_windows.get(receipt_id)
    return None if opened is None else opened + review_commit_blocks(s)


def review_commit_blocks(s: State) -> int:
    """A review's commit phase: ``verdict_commit_blocks``, but at most half the review
    period (a review must be decided within it, reveals included)."""
    return max(1, min(s.params.verdict_commit_blocks, s.params.review_period // 2))


def check_review_commit(s: State, commit: VerdictCommit) -> None:
    if not enabled(s):
        raise LedgerError("this chain does not take verdict commitments (verdict_commit_blocks 0)")
    opened = review_opened(s, commit.receipt_id)
    if opened is None:
        raise LedgerError("no review of this receipt is open")
    snapshot = s.validator_snapshot_at(opened)
    if snapshot is None or not snapshot.get(commit.signer):
        raise LedgerError("the reviewer is not in the validator set the review is drawn from")
    if commit_key(commit.receipt_id, commit.signer) in s.review_commits:
        raise LedgerError("this reviewer already committed to a verdict on this receipt")
    closes = review_closes(s, commit.receipt_id)
    if closes is not None and s.height > closes:
        raise LedgerError(f"the review's commit phase closed at height {closes}")
    if s.commit_counts.get(commit.signer, 0) >= s.params.max_open_commits:
        raise LedgerError(
            f"this member holds {s.params.max_open_commits} open commitments, the most it may"
        )
    validate_commit(commit)


def _record_review_commit(s: State, commit: VerdictCommit) -> None:
    rid = commit.receipt_id
    if rid not in s.review_windows:
        s.put("review_windows", rid, s.height)
    row = CommitRow(commit.commitment, s.height, commit.job_id)
    s.put("review_commits", commit_key(rid, commit.signer), row)
    s.put("commit_counts", commit.signer, s.commit_counts.get(commit.signer, 0) + 1)


def review_commitments(s: State, evidence=None) -> CommitLookup | None:
    """The lookup a review of ``evidence`` is checked with: a reviewer's review
    commitment on the receipt, or, for a reviewer that sat on the first committee (a
    small network looks again with the same eyes), the commitment of its first vote
    (still stored, or, for a vote the evidence holds, checked when the evidence was
    carried). None when this chain does not use commit-reveal."""
    if not enabled(s):
        return None
    first = {}
    for v in getattr(evidence, "verdicts", ()):
        if needs_commitment(v):
            first[bytes(v.signer)] = verdict_commitment(v)

    def committed(receipt_id: bytes, member: bytes) -> bytes | None:
        row = s.review_commits.get(commit_key(receipt_id, member))
        if row is None:
            row = s.verdict_commits.get(commit_key(receipt_id, member))
        if row is not None:
            return row.commitment
        return first.get(bytes(member))

    return committed


def forget_review(s: State, receipt_id: bytes) -> None:
    """The review of ``receipt_id`` was decided or expired: its commitments go."""
    if receipt_id in s.review_windows:
        s.put("review_windows", receipt_id, None)
    for key in [k for k in s.review_commits if k[:32] == receipt_id]:
        _drop_row(s, key, "review_commits")
