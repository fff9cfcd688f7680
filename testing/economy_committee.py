"""The committees of the economic simulation (:mod:`.economy`): audited claims checked
by their real committee draw and vote collector (commit, then reveal), the adversary's
votes, withholding challenges, and the reviews of convictions."""

from __future__ import annotations

from aipg.models.cost import diffusion_job_macs, llm_job_macs
from aipg.pouw import (
    COMMITTEE_DELAY,
    VerdictReason,
    VoteCollector,
    committee_for,
    make_verdict,
    receipt_id,
    review_committee,
)
from aipg.pouw.records import Certificate, FraudEvidence, FraudReview, Job
from aipg.pouw.reveal import make_commit as make_verdict_commit
from aipg.stake.challenge import WithholdingChallenge
from aipg.stake.reveal import commit_closes, commitments, review_closes
from aipg.wire import sign

from .economy_world import CHALLENGE_STEPS, PARAMS, TINY_MODEL, TRUE_COSTS, Operator


class Committees:
    """Mixed into :class:`~.economy.Economy` (its state, pending items and keys)."""

    def _committee(self, job: Job, a):
        """(the committee of ``job`` drawn from its commitment's beacon, the validator
        snapshot it is drawn from), or None when that is not kept (D56)."""
        s = self.state
        committed = s.commitments.get(job.id)
        if committed is None:
            return None
        seed = committed + COMMITTEE_DELAY
        snap, beacon = s.validator_snapshot_at(seed), s.beacon_at(seed)
        if snap is None or beacon is None or seed > s.height:
            return None
        return committee_for(job, a, snap, beacon, rules=PARAMS.job_committee_rules()), snap

    def _audit(self, w: Operator, job: Job, a, r, forged: bool, withheld: bool) -> None:
        """The committee of an audited claim checks it: the real draw and collector."""
        strategy = self.cfg.strategy
        drawn = self._committee(job, a)
        if drawn is None:
            return
        committee, snap = drawn
        self.audit_check_macs += self._check_macs(job)  # one member's (D98)
        reveal = PARAMS.verdict_commit_blocks > 0  # commit, then reveal (D70, D71)
        collector = VoteCollector(job, a, r, committee, snap, self._committed if reveal else None)
        held: list = []  # committed votes, revealed once the commit phase closes
        wrong_cost = job.model_id == TINY_MODEL  # registered at 10,000x what it costs
        checks = strategy not in ("lazy_validators", "copying_validators")
        outcome = None
        challenged = False
        first_honest: bool | None = None
        for key in committee.candidates:
            if key not in committee.seated(k for k, v in collector._verdicts.items()
                                           if v.reason == VerdictReason.UNAVAILABLE):  # fmt: skip
                continue
            member = self.by_key[key]
            if member.adversary:
                if checks:
                    self.validator_macs += self._check_macs(job)
                seen = None if reveal else first_honest
                reason = self._adversary_vote(forged or wrong_cost, seen)
            else:
                self.validator_macs += self._check_macs(job)
                if withheld:
                    reason = VerdictReason.UNAVAILABLE
                    if not challenged:  # asks on chain, then abstains (D74, D82)
                        challenged = True
                        ch = sign(WithholdingChallenge(job, a, r, (1,)), member.identity)
                        self.pending["challenge"].append(ch)
                        self.challenged += 1
                elif forged:
                    reason = VerdictReason.TOKEN_MISMATCH
                elif wrong_cost:
                    reason = VerdictReason.BINDING
                else:
                    reason = VerdictReason.OK
                if first_honest is None and reason != VerdictReason.UNAVAILABLE:
                    first_honest = reason == VerdictReason.OK
            v = make_verdict(member.identity, r, reason, recomputed=b"check")
            if reveal and reason != VerdictReason.UNAVAILABLE:
                self.pending["commit"].append(make_verdict_commit(member.identity, v))
                held.append(v)  # every seated member commits blind: nobody stops early
                continue
            outcome = collector.add(v)
            if outcome is not None:
                break
        if held:
            self.revealing.append((collector, held))
            return
        self._decided(outcome)

    def _committed(self, rid: bytes, member: bytes):
        lookup = commitments(self.state)
        return None if lookup is None else lookup(rid, member)

    def _reveal(self) -> None:
        """Reveal the votes whose receipt's commit phase has closed on chain (D71)."""
        keep = []
        for collector, held in self.revealing:
            rid = receipt_id(collector.receipt)
            closes = commit_closes(self.state, rid)
            if closes is None or self.state.height < closes:
                keep.append((collector, held))
                continue
            outcome = None
            for v in held:
                outcome = collector.add(v)
                if outcome is not None:
                    break
            self._decided(outcome)
        self.revealing = keep

    def _decided(self, outcome) -> None:
        if isinstance(outcome, Certificate):
            self.pending["cert"].append(outcome)
        elif isinstance(outcome, FraudEvidence):
            self.pending["fraud"].append(outcome)

    def _adversary_vote(self, bad: bool, first_honest: bool | None) -> VerdictReason:
        strategy = self.cfg.strategy
        if strategy == "false_accusation":
            return VerdictReason.TOKEN_MISMATCH
        if strategy == "copying_validators" and first_honest is not None:  # (blind if
            # commit-reveal is on: a vote is committed before any is revealed)
            return VerdictReason.OK if first_honest else VerdictReason.TOKEN_MISMATCH
        if strategy in ("lazy_validators", "copying_validators") or bad:
            return VerdictReason.OK  # unchecked, or covering for its own
        return VerdictReason.OK

    def _check_macs(self, job: Job) -> int:
        """What one member's check costs: an LLM re-reads every token (one prefill); a
        diffusion check re-runs CHALLENGE_STEPS steps."""
        cost = TRUE_COSTS[job.model_id]
        if job.llm is not None:
            return llm_job_macs(cost, len(job.prompt), job.llm.max_tokens)
        d = job.diffusion
        px = (d.width // 8) * (d.height // 8)
        return diffusion_job_macs(cost, CHALLENGE_STEPS, px, True)

    def _reviews(self, block) -> None:
        """Review every conviction the block opened: honest reviewers re-check, the
        adversary's vote to uphold."""
        s = self.state
        self.convictions += len(block.body.frauds)
        for ev in block.body.frauds:
            self.review_check_macs += self._check_macs(ev.job)  # one reviewer's (D98)
            snap = s.validator_snapshot_at(s.height)
            c = review_committee(ev, snap, s.beacon_at(s.height), PARAMS.committee_size,
                                 PARAMS.committee_rules())  # fmt: skip
            honest_work = (
                ev.receipt.signer in self.by_key
                and ev.job.model_id != TINY_MODEL
                and ev.receipt.job_id not in self.forged
            )
            verdicts = []
            for key in c.members:
                member = self.by_key[key]
                valid = honest_work and not member.adversary
                if not member.adversary:
                    self.validator_macs += self._check_macs(ev.job)
                reason = VerdictReason.OK if valid else VerdictReason.TOKEN_MISMATCH
                verdicts.append(make_verdict(member.identity, ev.receipt, reason,
                                             recomputed=b"check"))  # fmt: skip
            if PARAMS.verdict_commit_blocks > 0:  # reviewers commit, then reveal (D76)
                self.pending["commit"] += [make_verdict_commit(self.by_key[v.signer].identity,
                                                               v, review=True)
                                           for v in verdicts]  # fmt: skip
                self.reviewing.append((ev, verdicts))
            else:
                self._review(ev, verdicts)

    def _review(self, ev: FraudEvidence, verdicts: list) -> None:
        self.pending["review"].append(FraudReview(ev, tuple(sorted(verdicts,
                                                  key=lambda v: v.signer))))  # fmt: skip

    def _reveal_reviews(self) -> None:
        """Reveal the review votes whose review's commit phase has closed on chain."""
        keep = []
        for ev, verdicts in self.reviewing:
            closes = review_closes(self.state, receipt_id(ev.receipt))
            if closes is None or self.state.height < closes:
                keep.append((ev, verdicts))
            else:
                self._review(ev, verdicts)
        self.reviewing = keep
