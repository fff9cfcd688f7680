"""Budgets that fill by the pools the blocks' work asked for (D99, ``budget_refill_paid``):
with mainnet's setting the work pool pays from the first job on, on a quiet chain too;
an idle block fills nothing and empties nothing; an unbonded gateway's jobs ask for
nothing."""

from __future__ import annotations

from aipg.stake.pool import GATEWAY, PAID_ROW, budget, total_bonded
from aipg.stake.tokenomics import split_reward
from aipg.testing.chainkit import ECONOMY_PARAMS, TestChain, ident, make_certificate

WORKER = ident(300)
PARAMS = ECONOMY_PARAMS.replace(budget_refill_paid=1)


def _chain() -> TestChain:
    c = TestChain(n_validators=5, economy=True, params=PARAMS)
    c.next(transactions=c.economy_txs())
    c.next()
    c.next()
    return c


def _pool(s) -> int:
    return split_reward(s.params, s.params.block_reward).work


def _index(s) -> int:
    return s.pool_budgets[PAID_ROW].index


def test_the_pool_pays_from_the_first_job_and_on_a_quiet_chain():
    """It paid nothing, ever: budgets filled by what the previous block paid, and what a
    block pays is bounded by the budgets (zero from genesis on). Now the first job is
    paid (a new key's one block's worth), the index grows by the pool of each block whose
    work asked, idle blocks leave it and every budget as they were, and a job after them
    is paid from what its gateway accrued."""
    c = _chain()
    first = make_certificate(c, WORKER, nonce=1)  # (idle blocks before it: its commit)
    s = c.next(certificates=[first])
    assert s.paid[first.receipt.job_id] > 0
    grown = _index(s)
    assert grown == _pool(s)  # its work asked for the pool
    gw = c.gateway.public_bytes
    have, most = budget(s, GATEWAY, gw, _pool(s), total_bonded(s), grown)
    for _ in range(4):  # idle blocks: no work asks, so nothing fills
        s = c.next()
    assert _index(s) == grown
    after, _ = budget(s, GATEWAY, gw, _pool(s), total_bonded(s), _index(s))
    assert after == have <= most  # nor is anything emptied
    later = make_certificate(c, WORKER, nonce=2)
    s = c.next(certificates=[later])
    assert s.paid[later.receipt.job_id] > 0
    assert _index(s) == 2 * _pool(s)
