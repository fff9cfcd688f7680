"""Scheduling on the gateway: claims, assignment, deadlines, reassignment, reputation.

A pure state machine. Time (``now``, Unix milliseconds) and the chain height are always
passed in; nothing here reads a clock or does I/O. The gateway's async shell feeds it
jobs, claims and results, calls :meth:`Scheduler.tick` on a timer, and sends the
assignments it returns.

Rules:

- a job collects claims for ``claim_window_ms``, then goes to the best eligible claimant:
  fewest jobs in flight first, then highest reputation, then lowest key (deterministic);
- paid-tier jobs go only to trusted workers: bond >= ``trusted_min_bond`` and reputation
  >= ``trusted_min_reputation``;
- an assignment that brings no result by its deadline is a timeout: the worker's
  reputation drops and the job is reassigned to another claimant, until the job's own
  deadline or ``max_attempts``;
- reputation rises on certified work and falls to zero (a ban) on proven fraud.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable

from aipg.wire import UNITS_PER_AIPG, Identity, WireError, require_signature, sign

from .errors import PouwError
from .records import Assignment, Claim, Job, Receipt, Tier, job_id
from .types import JobId, Millis, NodeKey

__all__ = [
    "JobState",
    "Reputation",
    "ReputationConfig",
    "Scheduler",
    "SchedulerConfig",
]


@dataclasses.dataclass(frozen=True)
class ReputationConfig:
    """Reputation is an integer score in [0, MAX]; new workers start in the middle."""

    initial: int = 500
    maximum: int = 1000
    success: int = 10  # per certified receipt: slow to earn
    timeout: int = 50  # per missed deadline: five successes to win back
    # Proven fraud sets the score to 0, which bars the worker from every assignment.


class Reputation:
    """Per-worker reputation scores (a pure table; the node persists it)."""

    def __init__(self, config: ReputationConfig | None = None):
        self.config = config or ReputationConfig()
        self._scores: dict[bytes, int] = {}

    def score(self, worker: bytes) -> int:
        return self._scores.get(worker, self.config.initial)

    def banned(self, worker: bytes) -> bool:
        return self.score(worker) == 0

    def on_success(self, worker: bytes) -> None:
        if not self.banned(worker):
            self._set(worker, self.score(worker) + self.config.success)

    def on_timeout(self, worker: bytes) -> None:
        # A timeout never bans by itself: 0 is reserved for proven fraud.
        self._set(worker, max(1, self.score(worker) - self.config.timeout))

    def on_fraud(self, worker: bytes) -> None:
        self._scores[worker] = 0

    def _set(self, worker: bytes, value: int) -> None:
        self._scores[worker] = max(0, min(self.config.maximum, value))


@dataclasses.dataclass(frozen=True)
class SchedulerConfig:
    claim_window_ms: int = 500  # time to gather claims before choosing a worker
    attempt_timeout_ms: int = 30_000  # one worker's time to return a result
    max_attempts: int = 3
    trusted_min_bond: int = 1_000 * UNITS_PER_AIPG
    trusted_min_reputation: int = 600


class JobState(enum.Enum):
    COLLECTING = "collecting"  # waiting for claims (or for the claim window to close)
    ASSIGNED = "assigned"  # a worker is running it
    DONE = "done"  # a result came back
    FAILED = "failed"  # deadline passed or attempts used up


@dataclasses.dataclass
class _Entry:
    job: Job
    submitted_ms: int
    state: JobState = JobState.COLLECTING
    claims: dict[bytes, Claim] = dataclasses.field(default_factory=dict)
    tried: set[bytes] = dataclasses.field(default_factory=set)
    assignment: Assignment | None = None
    attempts: int = 0


class Scheduler:
    """The gateway's job table.

    ``identity`` signs assignments (it must be the key that signed the jobs);
    ``bond_of`` returns a worker's bonded stake (from the ledger) for the trust rule.
    """

    def __init__(
        self,
        identity: Identity,
        bond_of: Callable[[bytes], int],
        *,
        config: SchedulerConfig | None = None,
        reputation: Reputation | None = None,
    ):
        self.identity = identity
        self.bond_of = bond_of
        self.config = config or SchedulerConfig()
        self.reputation = reputation or Reputation()
        self._jobs: dict[bytes, _Entry] = {}

    # -- inputs --------------------------------------------------------------------------

    def submit(self, job: Job, now: Millis) -> JobId:
        """Track a job this gateway signed. Raises PouwError for a foreign or known job."""
        if job.signer != self.identity.public_bytes:
            raise PouwError("job.signer", "a gateway schedules only the jobs it signed")
        jid = job_id(job)
        if jid in self._jobs:
            raise PouwError("job", "job already submitted")
        self._jobs[jid] = _Entry(job, now)
        return jid

    def on_claim(self, claim: Claim, now: Millis) -> None:
        """Record a worker's claim. Raises PouwError for a claim that must be dropped:
        bad signature, unknown or closed job, wrong model, or a banned worker."""
        try:
            require_signature(claim)
        except WireError as e:
            raise PouwError("claim.signature", e.reason) from None
        entry = self._jobs.get(claim.job_id)
        if entry is None:
            raise PouwError("claim.job_id", "unknown job")
        if entry.state in (JobState.DONE, JobState.FAILED):
            raise PouwError("claim.job_id", f"job is {entry.state.value}")
        if claim.model_id != entry.job.model_id:
            raise PouwError("claim.model_id", "worker claims to host another model")
        if self.reputation.banned(claim.signer):
            raise PouwError("claim.signer", "worker is banned for fraud")
        entry.claims[claim.signer] = claim

    def on_receipt(self, receipt: Receipt, now: Millis) -> None:
        """The assigned worker returned its result (by ``now``). Raises PouwError for a
        receipt from anyone but the current assignee, or after its deadline."""
        try:
            require_signature(receipt)
        except WireError as e:
            raise PouwError("receipt.signature", e.reason) from None
        entry = self._jobs.get(receipt.job_id)
        if entry is None or entry.assignment is None or entry.state is not JobState.ASSIGNED:
            raise PouwError("receipt.job_id", "no open assignment for this job")
        if receipt.signer != entry.assignment.worker:
            raise PouwError("receipt.signer", "not the assigned worker")
        if now > entry.assignment.deadline_ms:
            raise PouwError("receipt", "result came after the assignment's deadline")
        entry.state = JobState.DONE

    def on_certified(self, worker: bytes) -> None:
        self.reputation.on_success(worker)

    def on_fraud(self, worker: bytes) -> None:
        self.reputation.on_fraud(worker)

    # -- time ------------------------------------------------------------------------------

    def tick(self, now: Millis, height: int) -> list[Assignment]:
        """Advance to ``now`` at chain ``height``: time out late assignments, fail jobs past
        their deadline, and assign jobs whose claim window has closed. Returns the new
        assignments (signed), to be sent to their workers."""
        out: list[Assignment] = []
        for jid, entry in self._jobs.items():
            self._expire(entry, now)
            if entry.state is JobState.COLLECTING:
                a = self._assign(jid, entry, now, height)
                if a is not None:
                    out.append(a)
        return out

    def _expire(self, entry: _Entry, now: int) -> None:
        if entry.state is JobState.ASSIGNED:
            assert entry.assignment is not None
            if now > entry.assignment.deadline_ms:
                self.reputation.on_timeout(entry.assignment.worker)
                entry.state = JobState.COLLECTING
                entry.assignment = None
        if entry.state is JobState.COLLECTING and (
            now >= entry.job.deadline_ms or entry.attempts >= self.config.max_attempts
        ):
            entry.state = JobState.FAILED

    def _assign(self, jid: bytes, entry: _Entry, now: int, height: int) -> Assignment | None:
        if now < entry.submitted_ms + self.config.claim_window_ms:
            return None
        worker = self._best_claimant(entry)
        if worker is None:
            return None
        entry.attempts += 1
        entry.tried.add(worker)
        entry.state = JobState.ASSIGNED
        deadline = min(entry.job.deadline_ms, now + self.config.attempt_timeout_ms)
        entry.assignment = sign(
            Assignment(
                job_id=jid,
                worker=worker,
                height=height,
                attempt=entry.attempts - 1,
                assigned_ms=now,
                deadline_ms=deadline,
            ),
            self.identity,
        )
        return entry.assignment

    def _best_claimant(self, entry: _Entry) -> NodeKey | None:
        eligible = [
            c
            for key, c in entry.claims.items()
            if key not in entry.tried and self._eligible(key, entry.job)
        ]
        if not eligible:
            return None
        best = min(eligible, key=lambda c: (c.queue, -self.reputation.score(c.signer), c.signer))
        return NodeKey(best.signer)

    def _eligible(self, worker: bytes, job: Job) -> bool:
        if self.reputation.banned(worker):
            return False
        if job.tier == Tier.PAID:
            return (
                self.bond_of(worker) >= self.config.trusted_min_bond
                and self.reputation.score(worker) >= self.config.trusted_min_reputation
            )
        return True

    # -- queries ---------------------------------------------------------------------------

    def state(self, jid: bytes) -> JobState:
        entry = self._jobs.get(jid)
        if entry is None:
            raise PouwError("job_id", "unknown job")
        return entry.state

    def assignment(self, jid: bytes) -> Assignment | None:
        entry = self._jobs.get(jid)
        return entry.assignment if entry else None

    def forget(self, jid: bytes) -> None:
        """Drop a finished (done or failed) job from the table."""
        entry = self._jobs.get(jid)
        if entry is not None and entry.state in (JobState.DONE, JobState.FAILED):
            del self._jobs[jid]
