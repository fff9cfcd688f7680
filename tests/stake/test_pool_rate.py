"""A block's pool pays each work unit at most twice the chain's usual rate (D107): work
timed into a thin block (a pool sniper's held results after an idle spell) earns no
windfall; steady blocks pay their whole pool; the usual rate follows a lasting change.

Real certificates on a real ledger (aipg.testing.chainkit); each receipt's work units are
what the test model's registered cost makes of its counts."""

from __future__ import annotations

import itertools

from aipg.stake.models import certified_work
from aipg.stake.pool import RATE_ONE, RATE_ROW
from aipg.stake.tokenomics import split_reward
from aipg.testing.chainkit import ECONOMY_PARAMS, TestChain, ident, make_certificates

PARAMS = ECONOMY_PARAMS.replace(pool_rate_cap_bps=20_000, budget_refill_paid=1)


def _chain() -> TestChain:
    c = TestChain(n_validators=5, economy=True, params=PARAMS)
    c.next(transactions=c.economy_txs())
    return c


def _block(c: TestChain, jobs: int, nonce: int):
    """A block certifying ``jobs`` jobs (each by its own worker); (state, units, paid)."""
    certs = make_certificates(
        c, [(ident(300 + i), {"nonce": nonce + i, "output_tokens": 8}) for i in range(jobs)]
    )
    units = sum(certified_work(c.state, x.job, x.receipt) for x in certs)
    s = c.next(certificates=certs)
    return s, units, sum(s.paid[x.receipt.job_id] for x in certs)


def _pool(s) -> int:
    return split_reward(s.params, s.params.block_reward).work


def test_steady_blocks_pay_their_pool_and_a_thin_one_at_most_twice_the_usual_rate():
    c = _chain()
    s, units, paid = _block(c, 4, nonce=1)
    assert paid >= _pool(s) - 4  # the first block sets the rate (rounding dust aside)
    usual = s.pool_budgets[RATE_ROW].budget
    assert usual == _pool(s) * RATE_ONE // units
    for n in range(2, 6):  # steady blocks: the cap never binds, the whole pool is paid
        s, units, paid = _block(c, 4, nonce=10 * n)
        assert paid >= _pool(s) - 4  # (rounding dust only)
    usual = s.pool_budgets[RATE_ROW].budget
    burned = s.burned
    s, units, paid = _block(c, 1, nonce=100)  # a thin block: a quarter of the work
    cap = usual * 20_000 * units // (10_000 * RATE_ONE)
    assert cap < _pool(s) and paid <= cap and paid >= cap - 1
    assert s.burned - burned >= _pool(s) - cap  # the rest of the pool is burned
    # one thin block moves the usual rate by at most 1/64 of it
    assert s.pool_budgets[RATE_ROW].budget <= usual + usual // 64 + 1


def test_the_usual_rate_follows_a_lasting_fall_in_demand():
    c = _chain()
    for n in range(1, 4):
        _block(c, 4, nonce=10 * n)
    short = []
    for n in range(4, 80):  # from now on one job a block: the cap binds, then less
        s, _, paid = _block(c, 1, nonce=10 * n)
        short.append(_pool(s) - paid)
    assert short[0] > _pool(s) // 3  # at first half the pool burns (the rate was 1/4)
    assert short[-1] < short[0] // 4  # some 45 blocks later it doubled: it pays again
    assert all(b <= a + 1 for a, b in itertools.pairwise(short))  # never worse
