"""The validators' part of each block reward pays verdicts that agree with an outcome.

Of the validators' part of a block's reward (the rest after operations and work), the
proposer's bonus goes to the block's proposer as before; the remainder goes to the
**verdict pool**, which pays out in full to the verdicts this block found agreeing with
a decided outcome, each weighted by the work units of the receipt it checked:

- every valid vote in a certificate the block carries (a certificate's votes are the
  seated members' and, with commit-reveal, each matched a commitment carried in time);
- every invalid vote in the fraud evidence of a conviction the block's review upholds
  (the accusers were right).

Abstentions, votes on the losing side, reveals without a commitment and commitments
never revealed earn nothing for that job. A block without such verdicts carries the
pool forward (as the work pool does, D17), so nothing is minted beyond the schedule and
nothing is lost; rounding dust stays in the pool. Paying by voting power instead paid
validators whether or not they checked anything.
"""

from __future__ import annotations

from collections.abc import Iterable

from aipg.pouw import Verdict, abstains
from aipg.wire import Address

from .money import credit
from .pool import VALIDATOR, budget, total_bonded
from .state import PoolBudget, State
from .types import bps_of


def agree(s: State, verdicts: Iterable[Verdict], valid: bool, work_units: int) -> None:
    """Record the votes among ``verdicts`` on the ``valid`` side (abstentions never) as
    agreeing with this block's outcome, each worth ``work_units``."""
    for v in verdicts:
        if not abstains(v) and v.valid == valid:
            s.agreed.append((bytes(v.signer), max(1, int(work_units))))


def pay_validators(s: State, amount: int, proposer: bytes) -> None:
    """The proposer's bonus of ``amount``; the rest into the verdict pool, which pays
    the block's agreeing verdicts (member key order, so rounding is deterministic)."""
    bonus = bps_of(amount, s.params.proposer_bonus_bps)
    credit(s, Address.from_public_key(proposer).raw, bonus)
    income = amount - bonus
    s.verdict_pool += income
    weights: dict[bytes, int] = {}
    for key, units in s.agreed:
        weights[key] = weights.get(key, 0) + units
    total = sum(weights.values())
    if not total:
        return
    pool = s.verdict_pool
    capped = s.params.verdict_pool_cap_bps
    bonded = total_bonded(s) if capped else 0
    for key in sorted(weights):
        share = pool * weights[key] // total
        if capped:  # at most its bond's share of the income (D83); the rest stays
            have, _ = budget(s, VALIDATOR, key, income, bonded)
            share = min(share, have)
            s.put("pool_budgets", VALIDATOR + key, PoolBudget(have - share, s.height))
        credit(s, Address.from_public_key(key).raw, share)
        s.verdict_pool -= share
