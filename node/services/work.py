"""What the node knows about work in flight: reports, committees, verdicts, outcomes.

Every node that sees a :class:`WorkReport` on ``receipts`` computes its committee (from
the finalized chain) and collects the committee's verdicts from ``verdicts`` until they
decide: a Certificate (>= 2/3 of the committee's stake valid) or FraudEvidence (> 1/3
invalid). Decided outcomes wait in :meth:`WorkTracker.pending_outcomes` for a proposer to
put them in a block; once a block carries one, it is marked with its height.

Commit, then reveal (when the chain's ``verdict_commit_blocks`` is set): members'
:class:`VerdictCommit` records wait in :meth:`WorkTracker.pending_commits` for a block;
a revealed verdict counts once a block has carried its commitment in time (the
collector holds it until then, and :meth:`WorkTracker.on_block` looks again after each
block); :meth:`WorkTracker.reveal_open` says when a member may reveal.

Memory is bounded: at most ``max_tracked`` reports (the oldest finished ones go first,
then the oldest undecided, and only then decided work no block has carried yet) and
``max_early`` verdicts that arrived before their report (the oldest receipt's go first).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import trio

from aipg.node.protocol.gossip import check_report
from aipg.node.protocol.messages import WorkReport
from aipg.pouw import (
    COMMITTEE_DELAY,
    Certificate,
    CommitLookup,
    Committee,
    CommitteeRules,
    ConflictingVerdicts,
    EquivocationEvidence,
    FraudEvidence,
    FraudReview,
    PouwError,
    StreamEvidence,
    Verdict,
    VerdictCommit,
    VoteCollector,
    abstains,
    committee_for,
    computes_differently,
    needs_commitment,
    receipt_id,
    review_committee,
    validate_commit,
    validate_verdict,
    votes_differ,
)
from aipg.pouw.bounds import evict_over
from aipg.pouw.forced import ForcedError
from aipg.pouw.reveal import verdict_commitment
from aipg.stake.challenge import ChallengeAnswer, WithholdingChallenge
from aipg.wire import encode, is_signed_by_signer
from aipg.wire.codec import record_digest

from .reviews import MAX_UNPLACED_VERDICTS, Review

log = logging.getLogger("aipg.node.work")


@dataclass
class TrackedWork:
    report: WorkReport
    receipt_id: bytes
    committee: Committee
    collector: VoteCollector
    verdicts: dict[bytes, Verdict] = field(default_factory=dict)
    outcome: Certificate | FraudEvidence | None = None
    # the kind of outcome the on_outcome listeners were told (once per kind: a job
    # undecided again by a redecision, D108, and then decided the same way is not news)
    announced: type | None = None
    block_height: int | None = None
    set_aside: str = ""  # why no block will ever carry this outcome (empty: it may)
    review: Review | None = None  # a block carried this fraud evidence: its review
    unplaced: dict[bytes, Verdict] = field(default_factory=dict)  # reviewers', early
    # votes that contradict their member's commitment: never counted, kept (one per
    # member) so that the member's other vote, in whatever order, is evidence (D37)
    contradicting: dict[bytes, Verdict] = field(default_factory=dict)
    # Audit sampling (D79): the block that carried this receipt's claim, or why none
    # will; whether its committee must check it (drawn, or certain); and whether the
    # chain paid it unaudited (then no committee ever speaks).
    claim_height: int | None = None
    claim_set_aside: str = ""
    audit_due: bool = False
    paid_unaudited: bool = False

    @property
    def job_id(self) -> bytes:
        return self.report.result.receipt.job_id

    @property
    def certified(self) -> bool:
        return isinstance(self.outcome, Certificate)

    @property
    def fraud(self) -> bool:
        return isinstance(self.outcome, FraudEvidence)

    @property
    def appealed(self) -> bool:
        """Its outcome is an appeal (D96): evidence without verdicts, which accuses
        nobody; a review decides the undecided audit."""
        return self.fraud and not self.outcome.verdicts

    @property
    def finished(self) -> bool:
        """Nothing more will happen to it: a block carried it, or none ever will."""
        return self.block_height is not None or bool(self.set_aside) or self.paid_unaudited

    @property
    def claim(self) -> Certificate:
        """Its claim (D79): the receipt bound on chain for the audit draw."""
        r = self.report
        return Certificate(r.job, r.assignment, r.result.receipt, ())

    def seated(self) -> tuple[bytes, ...]:
        """The members who vote now (abstentions have seated reserves)."""
        return self.collector.seated()

    def voters(self) -> set[bytes]:
        """Who may vote on this receipt: its committee's candidates and its reviewers'."""
        out = set(self.committee.candidates)
        if self.review is not None:
            out.update(self.review.committee.candidates)
        return out


def _commit_key(commit: VerdictCommit) -> tuple[bytes, bytes]:
    """Where a pending commitment is kept: a reviewer's apart from a member's (D76)."""
    return ((b"review" if commit.review else b"") + commit.receipt_id, bytes(commit.signer))


def kind_of(outcome: Certificate | FraudEvidence) -> str:
    return "certificate" if isinstance(outcome, Certificate) else "fraud evidence"


# Equivocation and conflicting-verdict evidence waiting for a block, of each kind: a block
# carries up to 100 of each, so this many is minutes of a flood; the oldest goes first.
MAX_PENDING_EVIDENCE = 1024
# Verdict commitments waiting for a block: a few per tracked report.
MAX_PENDING_COMMITS = 4 * 4096
# Challenge answers waiting for a block: each may carry megabytes of latents.
MAX_PENDING_ANSWERS = 16
# Forced errors (D75) waiting for a block: one or a few per forced receipt.
MAX_PENDING_FORCED = 256


class ChainView(Protocol):
    """What the tracker reads from the chain (implemented by the chain service)."""

    @property
    def committee_size(self) -> int: ...

    @property
    def committee_rules(self) -> CommitteeRules: ...

    @property
    def job_committee_rules(self) -> CommitteeRules: ...

    def validator_snapshot_at(self, height: int) -> Mapping[bytes, int] | None: ...

    def finalized_hash(self, height: int) -> bytes | None: ...

    @property
    def height(self) -> int: ...

    @property
    def commit_reveal(self) -> bool: ...

    def review_committed(self, evidence: FraudEvidence, member: bytes) -> bytes | None: ...

    def review_closes(self, receipt_id: bytes) -> int | None: ...

    @property
    def forced_error_bps(self) -> int: ...

    def committed(
        self, receipt_id: bytes, member: bytes, job_id: bytes | None = None
    ) -> bytes | None: ...

    def commit_closes(self, receipt_id: bytes) -> int | None: ...

    @property
    def challenge_period(self) -> int: ...

    def beacon_at(self, height: int) -> bytes | None: ...

    def committed_at(self, job_id: bytes) -> int | None: ...

    def audit_due(self, job, receipt) -> bool | None: ...

    def paid_unaudited(self, job_id: bytes) -> bool: ...

    def appeal_opens(self, job_id: bytes, receipt_id: bytes) -> int | None: ...


# Reports tracked: a few minutes of a busy network's work, finished ones evicted first.
MAX_TRACKED = 4096
# Verdicts held for reports not seen yet (gossip may deliver a verdict before its report).
MAX_EARLY_VERDICTS = 4096


class WorkTracker:
    def __init__(
        self,
        chain: ChainView,
        *,
        max_tracked: int = MAX_TRACKED,
        max_early: int = MAX_EARLY_VERDICTS,
    ):
        self.chain = chain
        self.max_tracked = max_tracked
        self.max_early = max_early
        self._by_receipt: OrderedDict[bytes, TrackedWork] = OrderedDict()
        self._by_job: dict[bytes, list[bytes]] = {}  # job id -> its receipts, in arrival order
        # receipt id -> {validator: its verdict}, oldest receipt first
        self._early: OrderedDict[bytes, dict[bytes, Verdict]] = OrderedDict()
        self._early_count = 0
        self.on_outcome: list[Callable[[TrackedWork], None]] = []
        self.on_review: list[Callable[[TrackedWork], None]] = []  # a block decided a review
        # (assignment id, worker) -> its first receipt's id: a second receipt computing
        # something else is equivocation, kept as evidence until a block carries it.
        self._by_assignment: OrderedDict[tuple[bytes, bytes], bytes] = OrderedDict()
        self._equivocations: OrderedDict[bytes, EquivocationEvidence] = OrderedDict()
        # D85: a gateway's evidence that a stream contradicted its worker's receipt
        self._junk_streams: OrderedDict[bytes, StreamEvidence] = OrderedDict()
        self._conflicts: OrderedDict[bytes, ConflictingVerdicts] = OrderedDict()
        # (receipt id, member) -> its commitment, until a block carries it
        self._commits: OrderedDict[tuple[bytes, bytes], VerdictCommit] = OrderedDict()
        # withholding challenges and answers, (receipt id, challenger) -> record, until
        # a block carries them
        self._challenges: OrderedDict[tuple[bytes, bytes], WithholdingChallenge] = OrderedDict()
        self._answers: OrderedDict[tuple[bytes, bytes], ChallengeAnswer] = OrderedDict()
        self._forced: OrderedDict[bytes, ForcedError] = OrderedDict()  # digest -> record
        # answers finalized blocks carried, for their challengers to re-check from
        self._answers_carried: OrderedDict[tuple[bytes, bytes], ChallengeAnswer] = OrderedDict()

    @property
    def commit_reveal(self) -> bool:
        return self.chain.commit_reveal

    # -- inputs ---------------------------------------------------------------------------

    def check_report(self, report: WorkReport) -> None:
        """Cheap checks of a report (signatures and bindings); raises PouwError."""
        check_report(report)

    def committee(self, report: WorkReport) -> tuple[Committee, Mapping[bytes, int]]:
        """The report's committee and the stakes it is drawn from (D56: the beacon and
        validator set ``COMMITTEE_DELAY`` blocks after the block that committed the
        job); raises PouwError while the job is not committed or that block not final
        here yet (the report waits, and members learn they are drawn when it is)."""
        jid = report.result.receipt.job_id
        committed = self.chain.committed_at(jid)
        if committed is None:
            raise PouwError("job", f"job {jid.hex()[:12]} is not committed on chain yet")
        seed_height = committed + COMMITTEE_DELAY
        validators = self.chain.validator_snapshot_at(seed_height)
        beacon = self.chain.beacon_at(seed_height)
        if validators is None or beacon is None:
            raise PouwError("job", f"the committee's block {seed_height} is not final here yet")
        members = committee_for(
            report.job,
            report.assignment,
            validators,
            beacon,
            size=self.chain.job_committee_rules.size,
            rules=self.chain.job_committee_rules,
        )
        return members, validators

    def add_report(self, report: WorkReport) -> tuple[TrackedWork, bool]:
        """Track a checked report; returns its entry and whether it is new (a report
        arrives twice at its gateway: by the job protocol and by gossip)."""
        rid = receipt_id(report.result.receipt)
        tracked = self._by_receipt.get(rid)
        if tracked is not None:
            return tracked, False
        members, validators = self.committee(report)
        collector = VoteCollector(
            report.job,
            report.assignment,
            report.result.receipt,
            members,
            validators,
            self._lookup(report.result.receipt.job_id) if self.chain.commit_reveal else None,
        )
        tracked = TrackedWork(report, rid, members, collector)
        self._by_receipt[rid] = tracked
        self._by_job.setdefault(tracked.job_id, []).append(rid)
        self._check_equivocation(tracked)
        self._trim()
        early = self._early.pop(rid, {})
        self._early_count -= len(early)
        for verdict in early.values():
            try:
                self.add_verdict(verdict)
            except PouwError as e:
                log.info("dropped an early verdict: %s", e)
        return tracked, True

    def add_verdict(self, verdict: Verdict) -> Certificate | FraudEvidence | None:
        """Count a verdict; returns the outcome once decided. Raises PouwError for a
        verdict that must be dropped (bad signature, not a member, a changed vote)."""
        tracked = self._by_receipt.get(verdict.receipt_id)
        if tracked is None:
            self._hold_early(verdict)
            return None
        if verdict.signer not in tracked.committee and (tracked.fraud or tracked.review):
            # A reviewer's vote: counted by the review, or held until this node sees
            # the block that opens it.
            validate_verdict(verdict, tracked.report.result.receipt)
            if tracked.review is not None:
                self._place_review_vote(tracked, verdict)
            elif len(tracked.unplaced) < MAX_UNPLACED_VERDICTS:
                tracked.unplaced.setdefault(verdict.signer, verdict)
            return tracked.outcome
        first = tracked.verdicts.get(verdict.signer) or tracked.contradicting.get(verdict.signer)
        if first is not None and votes_differ(first, verdict):
            self._record_conflict(first, verdict)
        decided_before = tracked.outcome is not None
        try:
            outcome = tracked.collector.add(verdict)
        except PouwError as e:
            if e.what == "verdict.commitment" and verdict.signer in tracked.committee:
                tracked.contradicting.setdefault(verdict.signer, verdict)
            raise
        tracked.verdicts.setdefault(verdict.signer, verdict)
        if outcome is not None and not decided_before:
            self._decided(tracked, outcome)
        return outcome

    def _decided(self, tracked: TrackedWork, outcome: Certificate | FraudEvidence) -> None:
        tracked.outcome = outcome
        if type(outcome) is tracked.announced:
            return  # decided again the same way after a redecision (D108): heard already
        tracked.announced = type(outcome)
        log.info(
            "job %s: %s",
            tracked.job_id.hex()[:12],
            "certified by its committee"
            if tracked.certified
            else "undecided by its committee, appealed to a review"
            if tracked.appealed
            else "FRAUD by its committee",
        )
        for callback in self.on_outcome:
            callback(tracked)

    # -- commit, then reveal ----------------------------------------------------------------

    def add_commit(self, commit: VerdictCommit) -> None:
        """Keep a member's commitment (or a reviewer's, D76) for a block. Raises
        PouwError for a bad one."""
        validate_commit(commit)
        tracked = self._by_receipt.get(commit.receipt_id)
        if commit.review:
            review = tracked.review if tracked is not None else None
            if review is not None and commit.signer not in review.committee:
                raise PouwError("commit.signer", "not a candidate of the receipt's review")
            if review is not None and self.chain.review_committed(review.evidence, commit.signer):
                return  # a block already carried it
        else:
            if tracked is not None and commit.signer not in tracked.committee:
                raise PouwError("commit.signer", "not a candidate of the receipt's committee")
            if self.chain.committed(commit.receipt_id, commit.signer) is not None:
                return  # a block already carried it
        self._commits.setdefault(_commit_key(commit), commit)
        evict_over(self._commits, MAX_PENDING_COMMITS)

    def add_challenge(self, c: WithholdingChallenge) -> None:
        """Keep a withholding challenge for a block (the ledger checks it in full)."""
        if not is_signed_by_signer(c):
            raise PouwError("challenge.signature", "bad signature")
        self._challenges.setdefault((receipt_id(c.receipt), bytes(c.signer)), c)
        evict_over(self._challenges, MAX_PENDING_EVIDENCE)

    def add_answer(self, a: ChallengeAnswer) -> None:
        """Keep a worker's answer to a challenge for a block."""
        if not is_signed_by_signer(a):
            raise PouwError("answer.signature", "bad signature")
        self._answers.setdefault((a.receipt_id, bytes(a.challenger)), a)
        evict_over(self._answers, MAX_PENDING_ANSWERS)

    def answers_carried(self, answers) -> None:
        """A finalized block carried these answers: keep them (a few) for their
        challengers, who re-check the work from the latents in them."""
        for a in answers:
            self._answers_carried[(a.receipt_id, bytes(a.challenger))] = a
        evict_over(self._answers_carried, MAX_PENDING_ANSWERS)

    def answer_carried(self, receipt_id: bytes, challenger: bytes) -> ChallengeAnswer | None:
        return self._answers_carried.get((receipt_id, challenger))

    def add_forced(self, fe: ForcedError) -> None:
        """Keep a worker's ForcedError for a block (the ledger checks it in full)."""
        if not is_signed_by_signer(fe.receipt):
            raise PouwError("forced.receipt", "bad signature")
        self._forced.setdefault(record_digest(fe), fe)
        evict_over(self._forced, MAX_PENDING_FORCED)

    def pending_forced(self) -> list[ForcedError]:
        return list(self._forced.values())

    def settle_forced(self, items) -> None:
        """A block carried these ForcedErrors, or a proposal found they never can be."""
        for fe in items:
            self._forced.pop(record_digest(fe), None)

    def start_forced_review(
        self, fe: ForcedError, beacon: bytes, validators: Mapping[bytes, int]
    ) -> TrackedWork | None:
        """A block carried ``fe``: its valid votes are under review (D75). The review
        replaces a conviction's that the ForcedError voided."""
        valid = tuple(v for v in fe.verdicts if v.valid and not abstains(v))
        tracked = self._by_receipt.get(receipt_id(fe.receipt))
        if not valid or tracked is None:
            return tracked
        tracked.review = None
        return self.start_review(
            FraudEvidence(fe.job, fe.assignment, fe.receipt, valid), beacon, validators
        )

    def pending_challenges(self) -> list[WithholdingChallenge]:
        return list(self._challenges.values())

    def pending_answers(self) -> list[ChallengeAnswer]:
        return list(self._answers.values())

    def settle_challenges(self, challenges=(), answers=()) -> None:
        """A block carried these, or a proposal found they never can be."""
        for c in challenges:
            self._challenges.pop((receipt_id(c.receipt), bytes(c.signer)), None)
        for a in answers:
            self._answers.pop((a.receipt_id, bytes(a.challenger)), None)

    def pending_commits(self) -> list[VerdictCommit]:
        """Commitments no block has carried yet (oldest first), for receipts this node
        tracks and from their committees' candidates: the ledger cannot tell a
        commitment on a made-up receipt from a real one, so an honest proposer offers
        only those it can place."""
        out = []
        for commit in self._commits.values():
            tracked = self._by_receipt.get(commit.receipt_id)
            if tracked is None:
                continue
            if commit.review:
                if tracked.review is not None and commit.signer in tracked.review.committee:
                    out.append(commit)
            elif commit.signer in tracked.committee:
                out.append(commit)
        return out

    def settle_commits(self, commits) -> None:
        """A block carried these commitments, or a proposal found they never can be."""
        for c in commits:
            self._commits.pop(_commit_key(c), None)

    def on_block(self) -> None:
        """After each block: count the reveals whose commitment it carried (reviewers'
        too)."""
        if not self.chain.commit_reveal:
            return
        for tracked in list(self._by_receipt.values()):
            if tracked.review is not None and tracked.unplaced and tracked.review.outcome is None:
                for verdict in list(tracked.unplaced.values()):
                    self._place_review_vote(tracked, verdict)
            if self._stale(tracked):
                self._redecide(tracked)
            if tracked.outcome is not None or not tracked.collector.held():
                continue
            outcome = tracked.collector.recheck()
            if outcome is not None:
                self._decided(tracked, outcome)

    def _lookup(self, job_id: bytes) -> CommitLookup:
        """The finalized chain's commitments that count for ``job_id``'s outcomes (the
        ledger's ``commitments(state, job_id)``: one naming another job never does)."""

        def committed(receipt_id: bytes, member: bytes) -> bytes | None:
            return self.chain.committed(receipt_id, member, job_id)

        return committed

    def _stale(self, tracked: TrackedWork) -> bool:
        return (
            tracked.outcome is not None
            and tracked.block_height is None
            and not tracked.set_aside
            and tracked.collector.stale()
        )

    def _redecide(self, tracked: TrackedWork) -> None:
        """A member whose abstention the outcome counted has committed since (D108): its
        seat is back, the reserve's vote no longer counts, and the ledger would refuse
        the outcome. Decide again: the same decision without that vote replaces it
        quietly (listeners heard it already); anything else is decided anew."""
        before = tracked.outcome
        outcome = tracked.collector.redecide()
        tracked.outcome = outcome
        if outcome is not None and type(outcome) is not type(before):
            self._decided(tracked, outcome)
        log.info(
            "job %s: an abstainer committed; the outcome counts its seat again",
            tracked.job_id.hex()[:12],
        )

    def _place_review_vote(self, tracked: TrackedWork, verdict: Verdict) -> None:
        """Count a reviewer's vote in the review once a block carried its commitment
        (D76); until then it is held (``unplaced``)."""
        review = tracked.review
        assert review is not None
        if self.chain.commit_reveal and needs_commitment(verdict):
            committed = self.chain.review_committed(review.evidence, verdict.signer)
            if committed != verdict_commitment(verdict):
                if len(tracked.unplaced) < MAX_UNPLACED_VERDICTS:
                    tracked.unplaced[verdict.signer] = verdict
                return
        tracked.unplaced.pop(verdict.signer, None)
        review.add(verdict)

    def review_reveal_open(self, tracked: TrackedWork) -> bool:
        """Whether reviewers may reveal on ``tracked``'s review (D76): its commit phase
        closed on the finalized chain, or every seated reviewer (an abstention of one
        with a commitment steps aside from nothing, D108) has a commitment there or has
        abstained."""
        review = tracked.review
        if review is None:
            return False
        if not self.chain.commit_reveal:
            return True
        closes = self.chain.review_closes(tracked.receipt_id)
        if closes is None:
            return False
        if self.chain.height >= closes:
            return True
        return all(
            self.chain.review_committed(review.evidence, k) is not None
            or (k in review.verdicts and abstains(review.verdicts[k]))
            for k in review.seated()
        )

    def reveal_open(self, tracked: TrackedWork) -> bool:
        """Whether members may reveal their verdicts on ``tracked``: its commit phase has
        closed on the finalized chain, or every member seated (given the abstentions
        that step aside: those of members without a commitment) has a commitment there
        or, with fixed seats, has abstained (D108). No commitment that counts can be
        added then: a reserve votes only once seated, and no seat moves any more, since
        an abstention of a member with a commitment steps aside from nothing; a member
        that abstained and then commits and reveals has voted both ways (D37)."""
        if not self.chain.commit_reveal:
            return True
        closes = self.chain.commit_closes(tracked.receipt_id)
        if closes is None:
            return False
        if self.chain.height >= closes:
            return True
        return all(
            self.chain.committed(tracked.receipt_id, k, tracked.job_id) is not None
            or (k in tracked.verdicts and abstains(tracked.verdicts[k]))
            for k in tracked.seated()
        )

    def mark_included(self, outcome: Certificate | FraudEvidence, height: int) -> None:
        """Block ``height`` carried ``outcome``. Outcomes of the same kind for the job's
        other receipts (a worker's second receipt, a reassigned job's late first worker)
        are set aside: the ledger pays or punishes a job once. A node that had not
        collected the votes itself learns the outcome from the block. A claim (a certificate
        without verdicts, D79) is marked as claimed, and the job's other claims set aside."""
        rid = receipt_id(outcome.receipt)
        if isinstance(outcome, Certificate) and not outcome.verdicts:
            for other in self._by_job.get(outcome.receipt.job_id, []):
                t = self._by_receipt[other]
                if other == rid:
                    t.claim_height = height
                elif t.claim_height is None:
                    t.claim_set_aside = f"block {height} carried another claim of this job"
            return
        kind = type(outcome)
        for other in self._by_job.get(outcome.receipt.job_id, []):
            t = self._by_receipt[other]
            if other == rid:
                t.block_height = height
                if t.outcome is None:  # decided by votes we did not all see: the block says
                    self._decided(t, outcome)
            elif isinstance(t.outcome, kind) and t.block_height is None:
                t.set_aside = f"block {height} carried another receipt of this job"

    def _check_equivocation(self, tracked: TrackedWork) -> None:
        receipt = tracked.report.result.receipt
        key = (receipt.assignment_id, receipt.signer)
        first = self._by_assignment.setdefault(key, tracked.receipt_id)
        self._by_assignment.move_to_end(key)
        evict_over(self._by_assignment, self.max_tracked)
        earlier = self._by_receipt.get(first)
        if earlier is None or first == tracked.receipt_id:
            return
        other = earlier.report.result.receipt
        if not computes_differently(other, receipt) or receipt.assignment_id in self._equivocations:
            return
        a, b = sorted((other, receipt), key=receipt_id)
        self._equivocations[receipt.assignment_id] = EquivocationEvidence(a, b)
        evict_over(self._equivocations, MAX_PENDING_EVIDENCE)
        log.warning(
            "worker %s signed two receipts for one assignment of job %s: equivocation",
            receipt.signer.hex()[:12],
            tracked.job_id.hex()[:12],
        )

    def _record_conflict(self, first: Verdict, second: Verdict) -> None:
        """A member voted both ways on one receipt: evidence for a block (it is slashed
        like a double signer); the second vote itself is dropped by the collector. An
        outcome the member helped decide is set aside: nodes that heard its votes in
        the other order decided the other way, so neither side may act on it."""
        tracked = self._by_receipt[second.receipt_id]
        try:
            validate_verdict(second, tracked.report.result.receipt)
        except PouwError:
            return  # not a real second vote of this member
        decided_by = {v.signer for v in tracked.outcome.verdicts} if tracked.outcome else set()
        if first.signer in decided_by:
            self.set_aside(tracked.outcome, "a member of its deciding side voted both ways")
        a, b = sorted((first, second), key=record_digest)
        key = b"verdicts" + a.signer + a.receipt_id
        if key not in self._conflicts:
            self._conflicts[key] = ConflictingVerdicts(a, b)
            evict_over(self._conflicts, MAX_PENDING_EVIDENCE)
            log.warning(
                "validator %s voted both ways on receipt %s",
                a.signer.hex()[:12],
                a.receipt_id.hex()[:12],
            )

    def start_review(
        self, evidence: FraudEvidence, block_hash: bytes, validators: Mapping[bytes, int]
    ) -> TrackedWork | None:
        """A block carried ``evidence``: draw its review committee (seeded by the
        block's hash) and count the verdicts of members who also sat on the first
        committee (a small network looks again with the same eyes). Returns the tracked
        work, or None for a receipt this node does not track."""
        tracked = self._by_receipt.get(receipt_id(evidence.receipt))
        if tracked is None or tracked.review is not None:
            return tracked
        committee = review_committee(
            evidence, validators, block_hash, self.chain.committee_size, self.chain.committee_rules
        )
        committed = None
        if self.chain.commit_reveal:

            def committed(_rid: bytes, member: bytes) -> bytes | None:
                return self.chain.review_committed(evidence, member)

        tracked.review = Review(evidence, committee, validators, committed=committed)
        unplaced, tracked.unplaced = tracked.unplaced, {}
        for signer, verdict in sorted({**tracked.verdicts, **unplaced}.items()):
            if signer in committee:
                self._place_review_vote(tracked, verdict)
        return tracked

    def pending_reviews(self) -> list[FraudReview]:
        """Decided reviews no block has carried yet."""
        return [
            t.review.outcome
            for t in self._by_receipt.values()
            if t.review is not None and t.review.outcome is not None and not t.review.settled
        ]

    def settle_review(self, review: FraudReview, *, carried: bool) -> None:
        """A block carried ``review`` (``carried``), or a proposal found it can never be
        carried. Tells ``on_review`` about carried ones."""
        tracked = self._by_receipt.get(receipt_id(review.evidence.receipt))
        if tracked is None or tracked.review is None or tracked.review.settled:
            return
        tracked.review.settled = True
        if carried:
            for callback in self.on_review:
                callback(tracked)

    def pending_conflicts(self) -> list[ConflictingVerdicts]:
        """Conflicting-verdict evidence no block has carried yet (oldest first)."""
        return list(self._conflicts.values())

    def settle_conflict(self, evidence: ConflictingVerdicts) -> None:
        """A block carried ``evidence``, or a proposal found it can never be carried."""
        self._conflicts.pop(
            b"verdicts" + evidence.verdict_a.signer + evidence.verdict_a.receipt_id, None
        )

    def pending_equivocations(self) -> list[EquivocationEvidence]:
        """Equivocation evidence no block has carried yet (oldest first)."""
        return list(self._equivocations.values())

    def add_junk_stream(self, evidence: StreamEvidence) -> None:
        """The gateway found a streamed chunk the worker's own receipt contradicts (D85):
        offer the evidence to blocks (the caller validated it)."""
        self._junk_streams[evidence.receipt.assignment_id] = evidence
        evict_over(self._junk_streams, MAX_PENDING_EVIDENCE)

    def pending_junk_streams(self) -> list[StreamEvidence]:
        return list(self._junk_streams.values())

    def settle_junk_stream(self, evidence: StreamEvidence) -> None:
        """A block carried ``evidence``, or a proposal found it can never be carried."""
        self._junk_streams.pop(evidence.receipt.assignment_id, None)

    def settle_equivocation(self, evidence: EquivocationEvidence) -> None:
        """A block carried ``evidence``, or a proposal found it can never be carried."""
        self._equivocations.pop(evidence.receipt_a.assignment_id, None)

    def set_aside(self, outcome: Certificate | FraudEvidence, reason: str) -> None:
        """A proposal found ``outcome`` can never be included (the ledger's ``reason``):
        stop offering it."""
        t = self._by_receipt.get(receipt_id(outcome.receipt))
        if t is not None and isinstance(outcome, Certificate) and not outcome.verdicts:
            if t.claim_height is None:
                t.claim_set_aside = reason
                log.info("job %s: claim set aside: %s", t.job_id.hex()[:12], reason)
            return
        if t is not None and t.block_height is None:
            t.set_aside = reason
            log.info("job %s: %s set aside: %s", t.job_id.hex()[:12], kind_of(outcome), reason)

    # -- queries --------------------------------------------------------------------------

    def pending_outcomes(self) -> tuple[list[Certificate], list[FraudEvidence]]:
        """Decided outcomes no block has carried yet (oldest first), and the claims
        (D79) of reports no block has claimed yet, the first receipt of each job."""
        certs, frauds, claims = [], [], []
        for t in self._by_receipt.values():
            if self._appealable(t):
                frauds.append(FraudEvidence(t.report.job, t.report.assignment, t.claim.receipt, ()))
            elif t.block_height is None and t.outcome is not None and not t.set_aside:
                if t.certified and t.outcome.receipt.assignment_id in self._junk_streams:
                    continue  # its worker's stream contradicts it: the evidence goes first
                (certs if t.certified else frauds).append(t.outcome)
            elif (
                t.claim_height is None
                and not t.claim_set_aside
                and not t.finished
                and self._by_job.get(t.job_id, [None])[0] == t.receipt_id
            ):
                claims.append(t.claim)
        return certs + claims, frauds

    def _appealable(self, t: TrackedWork) -> bool:
        """An audited claim its committee has not decided in time: any node may send it
        to a review (D96). The ledger says when; a block carrying one sets it aside."""
        if t.outcome is not None or t.claim_height is None or t.finished:
            return False
        opens = self.chain.appeal_opens(t.job_id, t.receipt_id)
        return opens is not None and self.chain.height + 1 >= opens

    def after_block(self) -> list[TrackedWork]:
        """After each block: the undecided reports whose audit the chain now calls due
        (their committees check them: D79), once each; reports the chain paid
        unaudited are finished."""
        due = []
        for t in self._by_receipt.values():
            if (
                t.claim_height is not None
                and t.block_height is None
                and not t.paid_unaudited
                and self.chain.paid_unaudited(t.job_id)
            ):  # (also when its committee had decided already: the draw came first)
                t.paid_unaudited = True
                continue
            if t.outcome is not None or t.finished:
                continue
            if not t.audit_due and self.audit_due(t):
                due.append(t)
        return due

    def audit_due(self, tracked: TrackedWork) -> bool:
        """Whether ``tracked``'s committee must check it now (and remember it)."""
        if not tracked.audit_due:
            r = tracked.report
            tracked.audit_due = bool(self.chain.audit_due(r.job, r.result.receipt))
        return tracked.audit_due

    def for_job(self, job_id: bytes) -> TrackedWork | None:
        """The job's receipt a block carried, else the first one that arrived."""
        tracked = [self._by_receipt[rid] for rid in self._by_job.get(job_id, [])]
        included = [t for t in tracked if t.block_height is not None]
        return (included or tracked or [None])[0]

    def for_receipt(self, rid: bytes) -> TrackedWork | None:
        return self._by_receipt.get(rid)

    def counts(self) -> dict[str, int]:
        out = {"verifying": 0, "certified": 0, "fraud": 0, "in_block": 0}
        for t in self._by_receipt.values():
            if t.block_height is not None:
                out["in_block"] += 1
            if t.outcome is None:
                out["verifying"] += 1
            elif t.certified:
                out["certified"] += 1
            else:
                out["fraud"] += 1
        return out

    def early_verdicts(self) -> int:
        """How many verdicts wait for their report."""
        return self._early_count

    def __len__(self) -> int:
        return len(self._by_receipt)

    def _hold_early(self, verdict: Verdict) -> None:
        """Keep a verdict until its report arrives: one per validator and receipt, at
        most ``max_early`` in all, the oldest receipt's dropped first."""
        held = self._early.setdefault(verdict.receipt_id, {})
        self._early_count += verdict.signer not in held
        held[verdict.signer] = verdict
        while self._early_count > self.max_early:
            _, dropped = self._early.popitem(last=False)
            self._early_count -= len(dropped)

    def _trim(self) -> None:
        """Evict beyond ``max_tracked``: finished work first, then undecided reports, and
        only then decided outcomes no block has carried (they are owed a payment)."""
        evicted = evict_over(
            self._by_receipt,
            self.max_tracked,
            lambda t: t.finished,
            lambda t: t.outcome is None,
            lambda t: True,
        )
        for rid, t in evicted:
            receipts = self._by_job.get(t.job_id, [])
            if rid in receipts:
                receipts.remove(rid)
            if not receipts:
                self._by_job.pop(t.job_id, None)


class Verifier(Protocol):
    """What the intake hands new work to (the validator's committee role)."""

    def consider(self, tracked: TrackedWork) -> None: ...


# Reports whose committee seed block is not final here yet, retried on each new block:
# at most this many, and this many bytes (a report carries its outputs: up to a MiB),
# the oldest dropped first.
MAX_WAITING_REPORTS = 1024
MAX_WAITING_BYTES = 64 << 20


class WorkIntake:
    """Where reports and verdicts enter the tracker, from gossip and from the ``job``
    protocol alike.

    A report whose committee cannot be computed yet (its seed block is not final on this
    node) waits, at most ``MAX_WAITING_REPORTS`` of them and ``MAX_WAITING_BYTES`` in
    all (the oldest dropped first), and is retried after each new block; a new report
    goes to the verifier, which checks it if this node is on its committee.
    """

    def __init__(
        self,
        tracker: WorkTracker,
        verifier: Verifier | None,
        wait_for_block: Callable[[], Awaitable[None]],
    ):
        self.tracker = tracker
        self.verifier = verifier
        self.wait_for_block = wait_for_block
        # receipt id -> (report, its encoded size), oldest first
        self.waiting: OrderedDict[bytes, tuple[WorkReport, int]] = OrderedDict()
        self.waiting_bytes = 0

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Retry the waiting reports after each new block, until cancelled."""
        task_status.started()
        while True:
            await self.wait_for_block()
            waiting, self.waiting, self.waiting_bytes = self.waiting, OrderedDict(), 0
            for report, _ in waiting.values():
                await self.on_report(report)
            for tracked in self.tracker.after_block():  # audits drawn (D79)
                if self.verifier is not None:
                    self.verifier.consider(tracked)

    async def on_report(self, report: WorkReport) -> None:
        try:
            tracked, new = self.tracker.add_report(report)
        except PouwError as e:
            self._wait(report)
            log.debug("report waits for the chain: %s", e)
            return
        if new and self.verifier is not None and self.tracker.audit_due(tracked):
            self.verifier.consider(tracked)  # else after the block that draws it (D79)

    def _wait(self, report: WorkReport) -> None:
        rid = receipt_id(report.result.receipt)
        if rid in self.waiting:
            return  # the same report, by gossip and by the job protocol
        size = len(encode(report))
        self.waiting[rid] = (report, size)
        self.waiting_bytes += size
        while len(self.waiting) > MAX_WAITING_REPORTS or self.waiting_bytes > MAX_WAITING_BYTES:
            _, (_, dropped) = self.waiting.popitem(last=False)
            self.waiting_bytes -= dropped

    def on_commit(self, commit: VerdictCommit) -> None:
        try:
            self.tracker.add_commit(commit)
        except PouwError as e:
            log.info("dropped a verdict commitment: %s", e)

    async def on_verdict(self, verdict: Verdict) -> None:
        try:
            self.tracker.add_verdict(verdict)
        except PouwError as e:
            log.info("dropped a verdict: %s", e)
            return
        tracked = self.tracker.for_receipt(verdict.receipt_id)
        if tracked is not None and self.verifier is not None and abstains(verdict):
            self.verifier.consider(tracked)  # the abstention may have seated us
