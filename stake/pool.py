"""The work pool of one block: who is paid what of it, and what is burned.

Each block's work share of the reward pays the work certified in that block and
nothing else: what it does not pay (no certified work, budgets spent, rounding dust) is
burned, never carried to a later block, so a job timed after an idle spell earns what
it would have earned in any block (no windfall; D61).

Free-tier demand costs its creator nothing, so what a gateway's jobs can earn from the
pool is bounded by something that costs to hold: its bond (D62). And since a gateway may
route its jobs to its own worker while that worker also serves everybody else's, what a
worker earns is bounded by its bond too (D63). Both bounds are budgets: a key's budget
fills, in every block whether it works or not, by

    pool x (the key's bond / all bonded stake) x cap_bps / 10,000

(``gateway_pool_cap_bps`` for a gateway, ``worker_pool_cap_bps`` for a worker) and holds
at most ``pool_budget_blocks`` blocks of that. A key's row is made the first time it
earns, with one block's worth: a new key (however many an adversary makes) starts with
nothing saved up.

A block's pool is shared in two steps. Gateways first, by water-filling: every gateway
whose budget allows earns the same amount per work unit of its jobs, a gateway whose
budget does not earns its budget, so a gateway that invents floods of jobs takes at most
its budget and dilutes nobody (the others share what it cannot take). Within a gateway,
jobs by work units. Then each worker is paid at most its budget (pro rata over its jobs)
and the rest is burned. Over any stretch of blocks no key earns more than its cap factor
times its bond's share of the pool, by whatever routing, invented jobs, forged counts or
ground committees; the budget's depth lets honest earnings swing from block to block
around their share without losing any. Paid jobs count like free ones here; their fees
come from their escrows on top.
"""

from __future__ import annotations

from fractions import Fraction
from typing import NamedTuple

from .money import credit
from .state import PoolBudget, State
from .types import BPS

GATEWAY, WORKER, VALIDATOR = b"g", b"w", b"v"  # prefixes of the pool_budgets rows
PAID_ROW = b"paid"  # pool_budgets row: what the last block paid from its pool (D83)
RATE_ROW = b"rate"  # pool_budgets row: the usual pool per work unit (D107), RATE_ONE = 1
RATE_ONE = 1 << 32
RATE_BLOCKS = 64  # the usual rate moves by 1/64 of a block's (clipped) rate a block


class WorkItem(NamedTuple):
    """One certified job of a block: its worker's account, its work units (from the
    model's registered cost), its gateway's key and its worker's key."""

    worker: bytes
    units: int
    gateway: bytes
    worker_key: bytes = b""


def total_bonded(s: State) -> int:
    return sum(b.stake for b in s.bonds.values())


def budget(
    s: State, role: bytes, key: bytes, pool: int, total: int, index: int | None = None
) -> tuple[int, int]:
    """(what ``key`` may earn as ``role`` at this height, the most its budget holds).

    It holds ``pool_budget_blocks`` blocks of its fill at ``pool`` (the minted pool),
    and fills by ``pool`` a block, or, given the asked-pool ``index`` (D99), by the
    pools of the blocks whose certified work asked for them since its row was written."""
    p = s.params
    bps = {GATEWAY: p.gateway_pool_cap_bps, VALIDATOR: p.verdict_pool_cap_bps}.get(
        role, p.worker_pool_cap_bps
    )
    if not total:
        return 0, 0
    stake = s.bond(key).stake
    rate = pool * stake * bps // (total * BPS)
    most = rate * s.params.pool_budget_blocks
    row = s.pool_budgets.get(role + key)
    if row is None:  # first seen: one block's worth, so that no new key brings a windfall
        return min(rate, most), most
    if index is None:
        fill = rate * (s.height - row.height)
    else:
        fill = max(0, index - row.index) * stake * bps // (total * BPS)
    return min(most, row.budget + fill), most


def _spend(s: State, role: bytes, key: bytes, have: int, most: int, spent: int) -> None:
    s.put("pool_budgets", role + key, PoolBudget(have - spent, s.height, _index(s)))


def _index(s: State) -> int:
    """The asked-pool index (D99): the sum of the pools of every block whose certified
    work (a bonded gateway's) asked for its pool, up to the previous block."""
    row = s.pool_budgets.get(PAID_ROW)
    return row.index if row is not None and s.params.budget_refill_paid else 0


def _rate_capped(s: State, pool: int, units: int) -> int:
    """What of ``pool`` this block may pay its ``units`` of work (D107): at most
    ``pool_rate_cap_bps`` of the usual rate per unit. The usual rate is an average of
    past blocks' pool per unit, each block's clipped at twice the average (one thin
    block moves it little), updated here; the first block with work sets it."""
    bps = s.params.pool_rate_cap_bps
    if not bps or units <= 0:
        return pool
    rate = pool * RATE_ONE // units
    row = s.pool_budgets.get(RATE_ROW)
    if row is None:
        s.put("pool_budgets", RATE_ROW, PoolBudget(rate, s.height, 0))
        return pool
    usual = row.budget
    clipped = min(rate, 2 * usual)
    s.put(
        "pool_budgets", RATE_ROW, PoolBudget(usual + (clipped - usual) // RATE_BLOCKS, s.height, 0)
    )
    return min(pool, usual * bps * units // (BPS * RATE_ONE))


def pay_work(s: State, work: dict[bytes, WorkItem]) -> None:
    """Pay this block's pool to its certified work (gateway budgets, work units, worker
    budgets) and burn the rest. What each job was paid is added to ``s.paid``."""
    pool = s.work_pool
    index = _index(s) if s.params.budget_refill_paid else None  # (D99)
    total = total_bonded(s)
    units: dict[bytes, int] = {}
    for item in work.values():
        if item.units:
            units[item.gateway] = units.get(item.gateway, 0) + item.units
    caps = {}
    for g in units:
        caps[g] = (
            (pool, pool)
            if not s.params.gateway_pool_cap_bps
            else budget(s, GATEWAY, g, pool, total, index)
        )
    payable = _rate_capped(s, pool, sum(units.values()))  # (D107)
    order = sorted(units, key=lambda g: (Fraction(min(pool, caps[g][0]), units[g]), g))
    left, weight = payable, sum(units.values())
    alloc: dict[bytes, int] = {}
    for g in order:  # ascending budget per unit: the bounded ones come first
        alloc[g] = min(caps[g][0], left * units[g] // weight)
        left -= alloc[g]
        weight -= units[g]
        if s.params.gateway_pool_cap_bps:
            _spend(s, GATEWAY, g, *caps[g], alloc[g])
    shares: dict[bytes, int] = {}
    by_worker: dict[bytes, int] = {}
    for job in sorted(work):
        item = work[job]
        if item.units:
            shares[job] = alloc[item.gateway] * item.units // units[item.gateway]
            by_worker[item.worker_key] = by_worker.get(item.worker_key, 0) + shares[job]
    scale: dict[bytes, tuple[int, int]] = {}  # worker -> (paid, earned)
    for key in sorted(by_worker) if s.params.worker_pool_cap_bps else ():
        have, most = budget(s, WORKER, key, pool, total, index)
        pay = min(have, by_worker[key])
        scale[key] = (pay, by_worker[key])
        _spend(s, WORKER, key, have, most, pay)
    for job, share in shares.items():
        item = work[job]
        pay, earned = scale.get(item.worker_key, (1, 1))
        share = share * pay // earned if earned else 0
        credit(s, item.worker, share)
        s.work_pool -= share
        s.paid[job] = s.paid.get(job, 0) + share
    if s.params.budget_refill_paid:
        # Budgets fill by the pools of the blocks whose certified work asked for them
        # (D99): an index that grows by this block's pool when a bonded gateway's work
        # was certified in it (an unbonded one's can earn nothing, D62), and not at all
        # in an idle block. (D83 filled by what the previous block paid, itself bounded by
        # the budgets: zero from genesis on, and nothing was ever paid.)
        asked = any(s.bond(g).stake for g in units)
        grown = _index(s) + (pool if asked else 0)
        s.put("pool_budgets", PAID_ROW, PoolBudget(pool if asked else 0, s.height, grown))
    s.burned += s.work_pool
    s.work_pool = 0
