"""The review of a conviction a block carried, as a node follows it: the review
committee (pouw's ``review_committee``), the reviewers' verdicts, and the
:class:`~aipg.pouw.FraudReview` once two thirds of the seated stake agree either way
(stake's ``review`` module applies it)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from aipg.pouw import (
    CommitLookup,
    Committee,
    FraudEvidence,
    FraudReview,
    Verdict,
    abstains,
    receipt_id,
    seat_votes,
    tally_seated,
)

MAX_UNPLACED_VERDICTS = 64  # reviewers' votes held per receipt before its review opens here


@dataclass
class Review:
    """The review of a conviction a block carried (stake's ``review`` module): its own
    committee, whose two-thirds either way decides."""

    evidence: FraudEvidence
    committee: Committee
    stakes: Mapping[bytes, int]
    verdicts: dict[bytes, Verdict] = field(default_factory=dict)
    outcome: FraudReview | None = None
    settled: bool = False
    # commit-revealed reviews (D76): a reviewer's commitment a block carried; an
    # abstention of a reviewer that has one steps aside from nothing (D108)
    committed: CommitLookup | None = None

    def seated(self) -> tuple[bytes, ...]:
        return self.committee.seated(self._stepped_aside())

    def _stepped_aside(self) -> set[bytes]:
        return seat_votes(self.verdicts, receipt_id(self.evidence.receipt), self.committed)[0]

    @property
    def upheld(self) -> bool | None:
        """Whether the decided review upholds the conviction (None: undecided)."""
        if self.outcome is None:
            return None
        return not any(v.valid for v in self.outcome.verdicts)

    def add(self, verdict: Verdict) -> FraudReview | None:
        if verdict.signer not in self.committee or verdict.signer in self.verdicts:
            return self.outcome
        self.verdicts[verdict.signer] = verdict
        if self.outcome is None:
            rid = receipt_id(self.evidence.receipt)
            aside, votes = seat_votes(self.verdicts, rid, self.committed)
            t = tally_seated(self.committee, self.stakes, votes)
            upheld = t.upholds
            if upheld or t.certifies:
                seated = set(self.committee.seated(aside))
                kept = tuple(
                    v
                    for k, v in sorted(self.verdicts.items())
                    if k in aside or (k in seated and not abstains(v) and v.valid != upheld)
                )
                self.outcome = FraudReview(self.evidence, kept)
        return self.outcome
