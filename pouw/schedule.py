"""Scheduling on the gateway: claims, assignment, deadlines, reassignment, reputation.

A pure state machine. Time (``now``, Unix milliseconds) and the chain height are always
passed in; nothing here reads a clock or does I/O. The gateway's async shell feeds it
jobs, claims and results, calls :meth:`Scheduler.tick` on a timer, and sends the
assignments it returns.

Rules:

- a job collects claims for ``claim_window_ms`` (or until :meth:`Scheduler.close_window`:
  the gateway has heard every live worker of the model claim it), then goes to an
  eligible claimant in the order the chain's draw gives (D58: the registered worker drawn
  by the beacon first, then the draw's fallbacks, then the others by a beacon-keyed
  hash); nothing a claim reports (its queue length) and no key order decides. A free job
  waits up to ``draw_wait_ms`` for its draw (its seed block, two blocks after its
  commitment); with no draw it falls back to the hash order, and the job earns what a
  chosen worker may. A paid job takes the latency route by default (D84: assigned at
  once in the hash order, earning its fee only) unless submitted with ``wait_draw``;
- paid-tier jobs go only to trusted workers: bond >= ``trusted_min_bond`` and reputation
  >= ``trusted_min_reputation``;
- an assignment that brings no result by its deadline is a timeout: the worker's
  reputation drops and the job is reassigned to another claimant, until the job's own
  deadline or ``max_attempts``;
- an attempt can also end at once (:meth:`Scheduler.end_attempt`): the worker refused
  the assignment (no reputation lost, and the attempt does not count against
  ``max_attempts``: the refuser is never asked again, so claims bound the refusals) or its
  result broke a rule the gateway checks (penalized like a timeout); the job goes to the
  next claimant at the next tick, or fails at once when no claimant is left;
- reputation rises on certified work and falls to zero (a ban) on proven fraud;
- both tables are bounded: finished jobs beyond ``max_jobs`` are forgotten oldest first,
  and reputation keeps the ``max_scores`` most recently seen workers and the
  ``max_bans`` latest bans (a ban outlives any number of newcomers).
"""

from __future__ import annotations

import dataclasses
import enum
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable

from aipg.wire import UNITS_PER_AIPG, Identity, WireError, require_signature, sign

from .bounds import evict_over
from .errors import PouwError
from .records import Assignment, Claim, Job, Receipt, Tier, hash_tagged, job_id
from .types import JobId, Millis, NodeKey

__all__ = [
    "ClaimOrder",
    "JobState",
    "Reputation",
    "ReputationChange",
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
    # Workers with a score of their own, least recently seen forgotten first: a forgotten
    # worker is a newcomer again, which costs an honest one little and a stranger nothing.
    max_scores: int = 65_536
    # Bans, oldest forgotten first; each one took a committee's conviction, so this many
    # is far more than any gateway meets, and newcomers never push a ban out.
    max_bans: int = 65_536


# What a Reputation reports for each change: the worker and its new score (0: banned),
# or None when the worker is forgotten (the node's store writes it through).
ReputationChange = Callable[[bytes, int | None], None]


class Reputation:
    """Per-worker reputation scores: a pure, bounded table. ``known`` seeds it (worker,
    score), least recently seen first; ``on_change`` hears every change, so that the node
    can persist bans and scores across restarts."""

    def __init__(
        self,
        config: ReputationConfig | None = None,
        *,
        known: Iterable[tuple[bytes, int]] = (),
        on_change: ReputationChange | None = None,
    ):
        self.config = config or ReputationConfig()
        self.on_change = on_change
        self._scores: OrderedDict[bytes, int] = OrderedDict()  # least recently seen first
        self._bans: OrderedDict[bytes, None] = OrderedDict()  # oldest ban first
        for worker, score in known:
            if score == 0:
                self._bans[worker] = None
            else:
                self._scores[worker] = max(1, min(self.config.maximum, score))
        self._trim()

    def __len__(self) -> int:
        return len(self._scores) + len(self._bans)

    def score(self, worker: bytes) -> int:
        if worker in self._bans:
            return 0
        return self._scores.get(worker, self.config.initial)

    def banned(self, worker: bytes) -> bool:
        return worker in self._bans

    def on_success(self, worker: bytes) -> None:
        if not self.banned(worker):
            self._set(worker, self.score(worker) + self.config.success)

    def on_timeout(self, worker: bytes) -> None:
        # A timeout never bans by itself (0 is reserved for proven fraud), nor lifts a ban.
        if not self.banned(worker):
            self._set(worker, max(1, self.score(worker) - self.config.timeout))

    def on_exonerated(self, worker: bytes) -> None:
        """A review overturned the worker's conviction: its ban is lifted, and it starts
        again as a newcomer."""
        if worker in self._bans:
            del self._bans[worker]
            self._set(worker, self.config.initial)

    def on_fraud(self, worker: bytes) -> None:
        self._scores.pop(worker, None)
        self._bans[worker] = None
        self._bans.move_to_end(worker)
        self._changed(worker, 0)
        self._trim()

    def _set(self, worker: bytes, value: int) -> None:
        self._scores[worker] = max(1, min(self.config.maximum, value))
        self._scores.move_to_end(worker)
        self._changed(worker, self._scores[worker])
        self._trim()

    def _trim(self) -> None:
        for table, bound in (
            (self._scores, self.config.max_scores),
            (self._bans, self.config.max_bans),
        ):
            for worker, _ in evict_over(table, bound):
                self._changed(worker, None)

    def _changed(self, worker: bytes, score: int | None) -> None:
        if self.on_change is not None:
            self.on_change(worker, score)


@dataclasses.dataclass(frozen=True)
class SchedulerConfig:
    claim_window_ms: int = 500  # time to gather claims before choosing a worker
    attempt_timeout_ms: int = 30_000  # one worker's time to return a result
    max_attempts: int = 3
    trusted_min_bond: int = 1_000 * UNITS_PER_AIPG
    trusted_min_reputation: int = 600
    # Jobs in the table; beyond it the oldest done or failed job is forgotten. Open jobs
    # are never dropped: the gateway admits at most its MAX_OPEN_JOBS, well below this.
    max_jobs: int = 1024
    # Claims kept per job; later claims are refused (a job needs only a few claimants).
    max_claims: int = 64
    # How long a free job waits for the chain's draw of its worker (D58) before any
    # claimant may take it.
    draw_wait_ms: int = 15_000
    # Open assignments this gateway gives one worker at once: a worker queues this many
    # (node/services/worker.py MAX_QUEUE) and refuses more as busy. Counted by the
    # gateway from its own assignments, never from anything the worker reports.
    max_open_per_worker: int = 16


# The chain's order for a job's claimants (D58): the keys of ``claimants`` best first,
# or None while the job's draw is not known yet.
ClaimOrder = Callable[[Job, list[bytes]], list[bytes] | None]


def hash_order(job: Job, claimants: list[bytes], salt: bytes = b"") -> list[bytes]:
    """Claimants ordered by H(salt, job id, key): neither the lowest key nor anything the
    worker reports; ``salt`` is a beacon when the caller has one."""
    jid = job_id(job)
    return sorted(claimants, key=lambda k: hash_tagged(b"assign/tie/1", salt, jid, k))


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
    refusals: int = 0  # attempts the worker refused: not counted against max_attempts
    window_closed: bool = False  # every known worker claimed: no need to wait the window out
    wait_draw: bool = True  # wait up to draw_wait_ms for the chain's draw (D58, D84)


class Scheduler:
    """The gateway's job table (bounded: ``config.max_jobs``).

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
        order: ClaimOrder | None = None,
    ):
        """``order`` is the chain's draw (D58); without one, claimants are taken in
        :func:`hash_order`."""
        self.identity = identity
        self.order = order
        self.bond_of = bond_of
        self.config = config or SchedulerConfig()
        self.reputation = reputation if reputation is not None else Reputation()
        self._jobs: OrderedDict[bytes, _Entry] = OrderedDict()
        self._open: Counter[bytes] = Counter()  # open assignments per worker (tick)

    # -- inputs --------------------------------------------------------------------------

    def submit(self, job: Job, now: Millis, *, wait_draw: bool | None = None) -> JobId:
        """Track a job this gateway signed, forgetting the oldest finished jobs beyond
        ``config.max_jobs``. ``wait_draw``: wait up to ``draw_wait_ms`` for the chain's
        draw of the worker; None: a free job waits, a paid job takes the latency route
        (D84: the first eligible claimant in the hash order, fee only). Raises PouwError
        for a foreign or known job, or when the table is full of open jobs."""
        if job.signer != self.identity.public_bytes:
            raise PouwError("job.signer", "a gateway schedules only the jobs it signed")
        jid = job_id(job)
        if jid in self._jobs:
            raise PouwError("job", "job already submitted")
        evict_over(self._jobs, self.config.max_jobs - 1, _finished)
        if len(self._jobs) >= self.config.max_jobs:
            raise PouwError("job", f"{len(self._jobs)} jobs are open; try again later")
        wait = job.tier == Tier.FREE if wait_draw is None else wait_draw
        self._jobs[jid] = _Entry(job, now, wait_draw=wait)
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
        if claim.signer not in entry.claims and len(entry.claims) >= self.config.max_claims:
            raise PouwError("claim.job_id", "job has enough claims")
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

    def on_delivered(self, jid: bytes, worker: bytes, now: Millis) -> None:
        """The assigned ``worker`` delivered ``jid``'s output (by ``now``) before its
        receipt (D94: the receipt waits for the job's seed beacon): the job is done here
        and never reassigned; the gateway waits for the receipt itself. Raises
        PouwError as :meth:`on_receipt` does."""
        entry = self._jobs.get(jid)
        if entry is None or entry.assignment is None or entry.state is not JobState.ASSIGNED:
            raise PouwError("job_id", "no open assignment for this job")
        if worker != entry.assignment.worker:
            raise PouwError("worker", "not the assigned worker")
        if now > entry.assignment.deadline_ms:
            raise PouwError("job_id", "output came after the assignment's deadline")
        entry.state = JobState.DONE

    def on_unsigned(self, worker: bytes) -> None:
        """A worker delivered an output and never signed its receipt in time (D94): the
        penalty of a timed-out attempt."""
        self.reputation.on_timeout(worker)

    def end_attempt(self, jid: bytes, worker: bytes, *, penalize: bool) -> JobState:
        """End the current assignment of ``jid`` (to ``worker``) at once: the worker
        refused it (``penalize`` False: no reputation lost, not counted against
        ``max_attempts``) or its result broke a rule (``penalize`` True: a timeout's
        penalty). The job goes back to collecting, or fails at once when no untried
        claimant is eligible. Returns the job's new state; raises PouwError when
        ``worker`` does not hold the job's open assignment."""
        entry = self._jobs.get(jid)
        if entry is None or entry.assignment is None or entry.state is not JobState.ASSIGNED:
            raise PouwError("job_id", "no open assignment for this job")
        if entry.assignment.worker != worker:
            raise PouwError("worker", "not the assigned worker")
        if penalize:
            self.reputation.on_timeout(worker)
        else:
            entry.refusals += 1
        entry.state = JobState.COLLECTING
        entry.assignment = None
        if not self._eligible_claimants(entry):
            entry.state = JobState.FAILED
        return entry.state

    def claimants(self, jid: bytes) -> set[bytes]:
        """The workers that claimed ``jid`` (empty for an unknown job)."""
        entry = self._jobs.get(jid)
        return set(entry.claims) if entry else set()

    def close_window(self, jid: bytes) -> None:
        """Assign ``jid`` at the next tick without waiting out the claim window (the
        gateway knows no other worker that could still claim it)."""
        entry = self._jobs.get(jid)
        if entry is not None:
            entry.window_closed = True

    def fail(self, jid: bytes) -> None:
        """Fail ``jid`` at once (no worker can run it); a done job stays done."""
        entry = self._jobs.get(jid)
        if entry is not None and entry.state is not JobState.DONE:
            entry.state = JobState.FAILED
            entry.assignment = None

    def on_certified(self, worker: bytes) -> None:
        self.reputation.on_success(worker)

    def on_fraud(self, worker: bytes) -> None:
        self.reputation.on_fraud(worker)

    def on_exonerated(self, worker: bytes) -> None:
        self.reputation.on_exonerated(worker)

    # -- time ------------------------------------------------------------------------------

    def tick(self, now: Millis, height: int) -> list[Assignment]:
        """Advance to ``now`` at chain ``height``: time out late assignments, fail jobs past
        their deadline, and assign jobs whose claim window has closed. Returns the new
        assignments (signed), to be sent to their workers."""
        out: list[Assignment] = []
        for entry in self._jobs.values():
            self._expire(entry, now)
        self._open = Counter(
            e.assignment.worker
            for e in self._jobs.values()
            if e.state is JobState.ASSIGNED and e.assignment is not None
        )
        for jid, entry in self._jobs.items():
            if entry.state is JobState.COLLECTING:
                a = self._assign(jid, entry, now, height)
                if a is not None:
                    self._open[a.worker] += 1
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
            now >= entry.job.deadline_ms
            or entry.attempts - entry.refusals >= self.config.max_attempts
        ):
            entry.state = JobState.FAILED

    def _assign(self, jid: bytes, entry: _Entry, now: int, height: int) -> Assignment | None:
        if not entry.window_closed and now < entry.submitted_ms + self.config.claim_window_ms:
            return None
        worker = self._best_claimant(entry, now)
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

    def _eligible_claimants(self, entry: _Entry) -> list[bytes]:
        return [
            key for key in entry.claims if key not in entry.tried and self._eligible(key, entry.job)
        ]

    def _best_claimant(self, entry: _Entry, now: int) -> NodeKey | None:
        # A worker holding max_open_per_worker of our assignments is skipped, not tried:
        # the job waits for a free one (or goes to the next in the draw's order).
        most = self.config.max_open_per_worker
        eligible = [k for k in self._eligible_claimants(entry) if self._open[k] < most]
        if not eligible:
            return None
        ranked = self.order(entry.job, eligible) if self.order is not None else None
        if ranked is None:
            waiting = self.order is not None and entry.wait_draw
            if waiting and now < entry.submitted_ms + self.config.draw_wait_ms:
                return None  # the draw comes with the job's seed block
            ranked = hash_order(entry.job, eligible)
        return NodeKey(ranked[0]) if ranked else None

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

    def __len__(self) -> int:
        return len(self._jobs)

    def idle(self) -> bool:
        """Whether every job is done or failed: nothing for :meth:`tick` to advance."""
        return all(_finished(e) for e in self._jobs.values())

    def forget(self, jid: bytes) -> None:
        """Drop a finished (done or failed) job from the table."""
        entry = self._jobs.get(jid)
        if entry is not None and entry.state in (JobState.DONE, JobState.FAILED):
            del self._jobs[jid]


def _finished(entry: _Entry) -> bool:
    return entry.state in (JobState.DONE, JobState.FAILED)
