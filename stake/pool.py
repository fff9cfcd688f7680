"""The work pool of one block: who is paid what of it, and what is burned.

Each block's work share of the reward pays the work certified in that block and
nothing else: what it does not pay (no certified work, gateways at their caps, rounding
dust) is burned, never carried to a later block, so a job timed after an idle spell
earns exactly what it would have earned in any block (no windfall; issue 12, D61).

Free-tier demand costs its creator nothing, so the pool a gateway's jobs can earn in a
block is capped by something that costs to hold: its bond. Gateway ``g`` (the key that
signed the job) may earn at most

    cap_g = pool x bond_g / (all bonded stake) x gateway_pool_cap_bps / 10,000

and the pool is shared by work units with those caps by water-filling: every gateway
under its cap earns the same amount per work unit, a gateway at its cap earns its cap
(D62). A gateway inventing jobs for its own worker thus earns at most its bond's share
of the pool however many units it invents, and does not dilute the others (they share
what it cannot take). Within a gateway, jobs are paid by their work units. Paid jobs
count like free ones here; their fees are paid from their escrows on top.

A gateway's cap bounds what the jobs it *routes* earn, not who does them: a gateway that
sends its whole allotment to its own worker, while that worker also serves everybody
else's jobs, would still earn about twice its share. So a worker's pool earnings follow
its bond too (D63): each worker has a budget that fills by ``worker_pool_cap_bps`` x its
bond share of every block's pool (whether it worked or not) and holds at most
``worker_budget_blocks`` blocks of that; a block pays a worker at most its budget and
burns the rest. Over any stretch of blocks no key earns more than that factor times its
bond's share of the pool, by whatever mix of routing, invented jobs, forged counts or
ground committees; the bucket lets an honest worker's earnings swing from block to block
around its share without losing any.
"""

from __future__ import annotations

from fractions import Fraction
from typing import NamedTuple

from .money import credit
from .state import PoolBudget, State
from .types import BPS


class WorkItem(NamedTuple):
    """One certified job of a block: its worker's account, its work units (from the
    model's registered cost) and its gateway's key."""

    worker: bytes
    units: int
    gateway: bytes
    worker_key: bytes = b""


def total_bonded(s: State) -> int:
    return sum(b.stake for b in s.bonds.values())


def gateway_caps(s: State, pool: int, gateways) -> dict[bytes, int]:
    """Each gateway's most of ``pool`` this block (bond share times the cap factor)."""
    total = total_bonded(s)
    if not total:
        return {g: 0 for g in gateways}
    bps = s.params.gateway_pool_cap_bps
    return {g: min(pool, pool * s.bond(g).stake * bps // (total * BPS)) for g in gateways}


def worker_budget(s: State, key: bytes, pool: int, total: int) -> tuple[int, int]:
    """(the budget ``key`` has at this height, the most it can hold): it fills by
    ``worker_pool_cap_bps`` x the key's bond share of ``pool`` per block."""
    rate = pool * s.bond(key).stake * s.params.worker_pool_cap_bps // (total * BPS) if total else 0
    most = rate * s.params.worker_budget_blocks
    row = s.pool_budgets.get(key)
    if row is None:
        return most, most
    return min(most, row.budget + rate * (s.height - row.height)), most


def pay_work(s: State, work: dict[bytes, WorkItem]) -> None:
    """Pay this block's pool to its certified work (gateway caps, then work units) and
    burn the rest. What each job was paid is added to ``s.paid``."""
    pool = s.work_pool
    units: dict[bytes, int] = {}
    for item in work.values():
        if item.units:
            units[item.gateway] = units.get(item.gateway, 0) + item.units
    caps = gateway_caps(s, pool, units)
    order = sorted(units, key=lambda g: (Fraction(caps[g], units[g]), g))
    left, weight = pool, sum(units.values())
    alloc: dict[bytes, int] = {}
    for g in order:  # ascending cap per unit: the capped ones come first
        fair = left * units[g] // weight
        alloc[g] = min(caps[g], fair)
        left -= alloc[g]
        weight -= units[g]
    shares: dict[bytes, int] = {}
    by_worker: dict[bytes, int] = {}
    for job in sorted(work):
        item = work[job]
        if item.units:
            shares[job] = alloc[item.gateway] * item.units // units[item.gateway]
            by_worker[item.worker_key] = by_worker.get(item.worker_key, 0) + shares[job]
    total = total_bonded(s)
    scale: dict[bytes, tuple[int, int]] = {}  # worker -> (paid, earned)
    for key in sorted(by_worker) if s.params.worker_pool_cap_bps else ():
        budget, most = worker_budget(s, key, pool, total)
        pay = min(budget, by_worker[key])
        scale[key] = (pay, by_worker[key])
        left_over = budget - pay
        s.put("pool_budgets", key, None if left_over >= most else PoolBudget(left_over, s.height))
    for job, share in shares.items():
        item = work[job]
        pay, earned = scale.get(item.worker_key, (1, 1))
        share = share * pay // earned if earned else 0
        credit(s, item.worker, share)
        s.work_pool -= share
        s.paid[job] = s.paid.get(job, 0) + share
    s.burned += s.work_pool
    s.work_pool = 0
