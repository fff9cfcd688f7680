"""Casting verdicts and collecting them into a Certificate or FraudEvidence.

:class:`VoteCollector` is the pure state machine a node runs per receipt: it takes
verdicts as they arrive from the verdicts topic and returns the Certificate or the
FraudEvidence as soon as the committee's stake decides.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from aipg.wire import Identity, sign

from .committee import Committee, tally_seated
from .errors import PouwError
from .records import (
    Assignment,
    Certificate,
    FraudEvidence,
    Job,
    Receipt,
    Verdict,
    VerdictReason,
    receipt_id,
)
from .reveal import CommitLookup, check_reveal, steps_aside, verdict_salt
from .validate import abstains, check_hash, make_challenge, validate_verdict

__all__ = ["VoteCollector", "make_verdict", "seat_votes"]

MAX_ERROR_MICRO = 2**32 - 1


def seat_votes(
    verdicts: Mapping[bytes, Verdict], rid: bytes, committed: CommitLookup | None
) -> tuple[set[bytes], dict[bytes, bool | None]]:
    """The members whose abstentions step aside (D108: not those with a commitment a
    block carried on ``rid``), and the votes to tally: each of them None, every other
    member's vote its own; an abstention that does not step aside holds its seat
    without a vote, so it is left out."""
    aside = {k for k, v in verdicts.items() if abstains(v) and steps_aside(rid, k, committed)}
    votes = {
        k: None if k in aside else v.valid
        for k, v in verdicts.items()
        if k in aside or not abstains(v)
    }
    return aside, votes


def make_verdict(
    identity: Identity,
    receipt: Receipt,
    reason: VerdictReason,
    *,
    recomputed: bytes,
    detail: str = "",
    max_error: float = 0.0,
) -> Verdict:
    """The signed verdict of ``identity`` on ``receipt``: valid exactly when ``reason``
    is OK. ``recomputed`` is the validator's own check data (bound by hash)."""
    rid = receipt_id(receipt)
    micro = (
        min(MAX_ERROR_MICRO, max(0, round(max_error * 1e6)))
        if math.isfinite(max_error)
        else MAX_ERROR_MICRO
    )
    verdict = Verdict(
        receipt_id=rid,
        job_id=receipt.job_id,
        valid=reason == VerdictReason.OK,
        reason=int(reason),
        detail=detail[:200],
        challenge=make_challenge(identity, rid),
        check_hash=check_hash(identity.public_bytes, rid, recomputed),
        max_error_micro=micro,
        salt=verdict_salt(identity, rid),
    )
    return sign(verdict, identity)


class VoteCollector:
    """Collects a committee's verdicts on one receipt.

    Built with the job, assignment and receipt (already validated) and the committee
    with its stakes. :meth:`add` returns the Certificate or FraudEvidence once one is
    decided (and keeps returning it), else None; it raises PouwError for a verdict that
    must be dropped (bad signature, not a candidate, about another receipt, a changed
    vote). An abstention seats the next reserve (unless a block carried a commitment
    of the abstainer's, D108); a reserve's vote counts once seated.

    With ``committed`` (commit, then reveal: :mod:`.reveal`), a revealed vote counts
    only once a block carried its commitment in time: until then it is held
    (:meth:`recheck` looks again after each block), and one that contradicts its
    commitment is dropped.
    """

    def __init__(
        self,
        job: Job,
        assignment: Assignment,
        receipt: Receipt,
        committee: Committee,
        validators: Mapping[bytes, int],
        committed: CommitLookup | None = None,
    ):
        self.job = job
        self.assignment = assignment
        self.receipt = receipt
        self.committee = committee
        self._stakes = {k: validators[k] for k in committee.candidates}
        self._verdicts: dict[bytes, Verdict] = {}
        self._committed = committed
        self._held: dict[bytes, Verdict] = {}  # reveals whose commitment no block has shown
        self.outcome: Certificate | FraudEvidence | None = None

    def add(self, verdict: Verdict) -> Certificate | FraudEvidence | None:
        validate_verdict(verdict, self.receipt)
        if verdict.signer not in self._stakes:
            raise PouwError("verdict.signer", "not a candidate of this receipt's committee")
        first = self._verdicts.get(verdict.signer) or self._held.get(verdict.signer)
        if first is not None:
            if first != verdict:
                raise PouwError("verdict.signer", "member already voted differently")
            return self.outcome
        if self._committed is not None:
            try:
                check_reveal(verdict, self._committed)
            except PouwError as e:
                if "does not match" in e.reason:
                    raise
                self._held[verdict.signer] = verdict  # its commitment may be in a later block
                return self.outcome
        self._verdicts[verdict.signer] = verdict
        if self.outcome is None:
            self.outcome = self._decide()
        return self.outcome

    def recheck(self) -> Certificate | FraudEvidence | None:
        """Count the held reveals whose commitment a block has now carried in time."""
        if self._committed is None:
            return self.outcome
        for signer, verdict in list(self._held.items()):
            try:
                check_reveal(verdict, self._committed)
            except PouwError as e:
                if "does not match" in e.reason:
                    del self._held[signer]
                continue
            del self._held[signer]
            self._verdicts[signer] = verdict
        if self.outcome is None:
            self.outcome = self._decide()
        return self.outcome

    def stale(self) -> bool:
        """Whether the outcome counted an abstention that no longer steps aside: a block
        has since carried its member's commitment (it abstained, then committed, D108),
        so the seat is that member's again and the reserve it seated no longer votes."""
        if self.outcome is None or self._committed is None:
            return False
        aside = self._stepped_aside()
        return any(abstains(v) and v.signer not in aside for v in self.outcome.verdicts)

    def redecide(self) -> Certificate | FraudEvidence | None:
        """Decide again over the seats as they are now (after :meth:`stale`)."""
        self.outcome = self._decide()
        return self.outcome

    def counted(self) -> dict[bytes, Verdict]:
        """The verdicts that count (revealed with their commitment, or abstentions)."""
        return dict(self._verdicts)

    def held(self) -> dict[bytes, Verdict]:
        """Reveals waiting for a block to show their commitment."""
        return dict(self._held)

    def seated(self) -> tuple[bytes, ...]:
        """Who votes now: the first seats of the draw, less those who abstained (an
        abstention of a member a block shows committed steps aside from nothing, D108)."""
        return self.committee.seated(self._stepped_aside())

    def _stepped_aside(self) -> set[bytes]:
        return seat_votes(self._verdicts, receipt_id(self.receipt), self._committed)[0]

    def _decide(self) -> Certificate | FraudEvidence | None:
        _, votes = seat_votes(self._verdicts, receipt_id(self.receipt), self._committed)
        t = tally_seated(self.committee, self._stakes, votes)
        if t.certifies:
            return Certificate(self.job, self.assignment, self.receipt, self._evidence(True))
        if t.convicts:
            return FraudEvidence(self.job, self.assignment, self.receipt, self._evidence(False))
        return None

    def _evidence(self, valid: bool) -> tuple[Verdict, ...]:
        # The seated members' votes on the deciding side, and the abstentions that
        # seated them, in key order: the smallest record a third party can re-tally.
        aside = self._stepped_aside()
        seated = set(self.committee.seated(aside))
        return tuple(
            v
            for k, v in sorted(self._verdicts.items())
            if k in aside or (k in seated and not abstains(v) and v.valid == valid)
        )
