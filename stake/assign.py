"""Workers registered on chain, their measured capacity, and the drawn worker of a job
(D58).

A worker registers for a model with a REGISTER_WORKER transaction (``job_id`` names the
model, ``amount`` declares its capacity in work units per block; 0 withdraws it) while
its bond holds at least ``min_worker_bond``. A registration weighs what it declares
times the share of the jobs it was drawn for that it did (D97):

    weight = declared * delivered / (delivered + missed)

``delivered`` is the work units certified to the worker for jobs it was drawn for, and
``missed`` those of the free jobs it was drawn for that the draw's runner-up did
instead, both sums decaying by 1/64 a block. A newcomer (nothing delivered yet) is
believed up to the larger of twice the model's best worker's rate (its ``delivered``
over 64: units a block) and the mean weight of the workers that have delivered, and
weighs 1 once it misses. Why: below capacity a worker delivers what it was drawn for,
not what it can do, so any weight that follows its own delivery feeds back (the one
drawn for a big job early drew the next ones) or caps a large worker at the level of
its luck; what a worker's record does show at any demand is whether it did what it was
drawn for. A declaration is thus believed while it is honoured: one that claims more
than the worker can do is drawn for more than it does and falls to what it does.
Nothing self-reported but the bound counts (claims, queue lengths, timings never do).

At every epoch boundary the weights of every registration are snapshotted (table
``worker_epochs``), so the draw of a job is fixed once its seed block is final. The
worker of a pool-earning job is drawn, weighted, without the job's gateway and client,
by the beacon ``COMMITTEE_DELAY`` blocks after the job's commitment (the committee's
block, with another tag): :func:`drawn_workers`. A gateway may still give a job to
another worker (latency, the paid tier); :func:`drawn_assignment_ok` says whether a
certificate's worker is the one the draw picked, for what such a job may earn.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from aipg.pouw import COMMITTEE_DELAY, Certificate, Job, Tier, job_id, sample_committee
from aipg.pouw.records import hash_tagged
from aipg.wire import Address

from .state import Capacity, Registration, State, height_key
from .types import LedgerError

__all__ = [
    "claim_order",
    "draw_weight",
    "drawn_assignment_ok",
    "drawn_workers",
    "record_capacity",
    "record_miss",
    "registration_key",
    "snapshot_workers",
    "worker_weights_at",
]

MAX_DECLARED_CAPACITY = 2**48  # work units per block
DECAY_SHIFT = 6  # the delivered sum loses 1/64 a block; the rate is the sum >> 6
DRAW_DEPTH = 8  # how many workers a draw ranks (the drawn one, then fallbacks in order)


def registration_key(worker: bytes, model_id: bytes) -> bytes:
    return bytes(worker) + bytes(model_id)


def check_register(s: State, worker: bytes, model_id: bytes, declared: int) -> None:
    if declared > MAX_DECLARED_CAPACITY:
        raise LedgerError(f"a declared capacity is at most {MAX_DECLARED_CAPACITY} units a block")
    if declared and s.bond(worker).stake < s.params.min_worker_bond:
        raise LedgerError(
            f"a worker registers with a bond of at least {s.params.min_worker_bond} "
            f"(has {s.bond(worker).stake})"
        )
    if not declared and registration_key(worker, model_id) not in s.workers:
        raise LedgerError("not registered for this model")


def register(s: State, worker: bytes, model_id: bytes, declared: int) -> None:
    key = registration_key(worker, model_id)
    s.put("workers", key, Registration(declared, s.height) if declared else None)


def _decay(total: int, blocks: int) -> int:
    for _ in range(min(max(0, blocks), 1024)):
        if not total:
            break
        total -= max(1, total >> DECAY_SHIFT)
    return total


def decayed(c: Capacity, height: int) -> Capacity:
    """The worker's sums brought to ``height``."""
    blocks = height - c.height
    return Capacity(_decay(c.recent, blocks), height, _decay(c.missed, blocks))


def _row(s: State, worker: bytes) -> Capacity:
    row = s.capacity.get(worker)
    return decayed(row, s.height) if row is not None else Capacity(0, s.height, 0)


def record_capacity(s: State, units_by_worker: Mapping[bytes, int]) -> None:
    """The work units certified to each worker in this block for jobs it was drawn for
    add to its delivered sum."""
    for worker, units in sorted(units_by_worker.items()):
        if units > 0:
            row = _row(s, worker)
            s.put("capacity", worker, row._replace(recent=row.recent + units))


def record_miss(s: State, job: Job, doer: bytes, units: int) -> None:
    """``doer`` did free ``job`` (``units`` by the registered cost): when it is the draw's
    runner-up, the drawn worker missed it (D97). Only the runner-up counts, as the
    gateway's fallback goes to the next claimant in the draw's order: a gateway that
    routes jobs past the draw to a worker of its choice charges nobody a miss unless its
    worker was drawn second. A paid job routed past the draw (D84) is nobody's miss."""
    if job.tier != Tier.FREE or units <= 0:
        return
    ranked = drawn_workers(s, job)
    if ranked and len(ranked) > 1 and ranked[1] == bytes(doer):
        row = _row(s, ranked[0])
        s.put("capacity", ranked[0], row._replace(missed=row.missed + units))


BELIEF = 8  # a declaration is believed up to this many times the best worker's rate


def draw_weight(declared: int, delivered: int, missed: int, best_rate: int) -> int:
    """What a registration weighs in a draw (D97): its declared capacity, believed up to
    ``BELIEF`` times the rate of the model's best worker, times the share of what it
    was drawn for that it did (a newcomer that missed a job before delivering any: 1)."""
    if not declared:
        return 0
    believed = min(declared, max(BELIEF * best_rate, 1))
    if not missed:
        return believed
    return max(1, believed * delivered // (delivered + missed))


def snapshot_workers(s: State) -> None:
    """At an epoch boundary: every bonded registration's draw weight, for the draws of
    jobs seeded in the next epoch."""
    bonded = [
        (key, reg)
        for key, reg in sorted(s.workers.items())
        if s.bond(key[:32]).stake >= s.params.min_worker_bond
    ]  # unbonded below the minimum: not drawn until it bonds again
    rows_of = {key: _row(s, key[:32]) for key, _ in bonded}
    best: dict[bytes, int] = {}  # model -> the best rate among its workers
    # (a sum decaying by 1/64 a block holds about 64 blocks of a steady rate; a chain
    # younger than that has had fewer: divide by its age, not to under-believe everyone)
    window = max(1, min(1 << DECAY_SHIFT, s.height))
    for key, _ in bonded:
        best[key[32:]] = max(best.get(key[32:], 0), rows_of[key].recent // window)
    rows = []
    for key, reg in bonded:
        row = rows_of[key]
        rows.append((key, draw_weight(reg.declared, row.recent, row.missed, best[key[32:]])))
    s.put("worker_epochs", height_key(s.epoch_of(s.height + 1)), tuple(rows))


def worker_weights_at(s: State, height: int, model_id: bytes) -> dict[bytes, int] | None:
    """{worker: weight} registered for ``model_id`` in the snapshot that draws jobs
    seeded at ``height``; None when that snapshot is not kept."""
    rows = s.worker_epochs.get(height_key(s.epoch_of(height)))
    if rows is None:
        return None if s.epoch_of(height) else {}
    return {k[:32]: w for k, w in rows if k[32:] == bytes(model_id) and w > 0}


def assignment_seed(beacon: bytes, jid: bytes) -> bytes:
    return hash_tagged(b"assign/seed/1", beacon, jid)


def _excluded(job: Job, keys: Iterable[bytes]) -> set[bytes]:
    """A job's gateway and client are never drawn for it (routing your own jobs to
    yourself gains nothing)."""
    out = {bytes(job.signer)}
    out.update(k for k in keys if Address.from_public_key(k).raw == job.client)
    return out


def drawn_workers(s: State, job: Job) -> tuple[bytes, ...] | None:
    """The registered workers of ``job``'s model in draw order (the first is the drawn
    one; up to ``DRAW_DEPTH``), or None while the job is not committed or its seed block
    not final. Empty when nobody is registered."""
    jid = job_id(job)
    committed = s.commitments.get(jid)
    if committed is None:
        return None
    seed_height = committed + COMMITTEE_DELAY
    beacon = s.beacon_at(seed_height)
    if beacon is None or seed_height > s.height:
        return None
    weights = worker_weights_at(s, seed_height, job.model_id)
    if weights is None:
        return None
    out = _excluded(job, weights)
    eligible = {k: w for k, w in weights.items() if k not in out}
    return tuple(sample_committee(eligible, assignment_seed(beacon, jid), DRAW_DEPTH))


def drawn_assignment_ok(s: State, cert: Certificate) -> bool:
    """Whether ``cert``'s worker is the one the draw picked for its job (D58): a job
    given to anyone else earns what the rules allow a chosen worker (stake's rewards)."""
    ranked = drawn_workers(s, cert.job)
    return bool(ranked) and ranked[0] == bytes(cert.receipt.signer)


def claim_order(s: State, job: Job, claimants: Iterable[bytes]) -> list[bytes] | None:
    """The order in which a gateway offers ``job`` to its ``claimants`` (D58): the
    registered workers in draw order, then the others by a hash keyed with the job's
    beacon, and the job's own gateway last (it may serve its own job, but only when no
    one else will). None while the draw is not known (the job is not committed, or its
    seed block not final)."""
    ranked = drawn_workers(s, job)
    if ranked is None:
        return None
    beacon = s.beacon_at(s.commitments[job_id(job)] + COMMITTEE_DELAY) or b""
    keys = [bytes(k) for k in claimants]
    first = [k for k in ranked if k in keys]
    rest = sorted(
        (k for k in keys if k not in first),
        key=lambda k: (
            k == bytes(job.signer),
            hash_tagged(b"assign/tie/1", beacon, job_id(job), k),
        ),
    )
    return first + rest
