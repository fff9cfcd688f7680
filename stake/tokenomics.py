"""Emission: the block reward, its halvings, the supply cap and the split of each reward.

Height 0 is genesis and mints nothing. Block ``h >= 1`` is in era ``h // halving_interval``
and its scheduled reward is ``initial_reward >> era`` base units (as in Bitcoin, so the
first era is one block shorter than the others and the reward changes exactly at
multiples of the interval). Issuance is clipped so that genesis supply + everything
minted never passes ``max_supply``: the block that reaches the cap gets only what is
left, and every later block gets nothing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

from aipg.wire import Units

from .genesis import ChainParams
from .types import Height, bps_of

# Halving 64 times shifts any 63-bit reward to zero; past that era nothing is scheduled.
MAX_ERAS = 64


def scheduled_reward(params: ChainParams, height: Height) -> Units:
    """The reward of block ``height`` before the supply cap is applied."""
    if height < 1:
        return Units(0)
    era = height // params.halving_interval
    return Units(params.block_reward >> era) if era < MAX_ERAS else Units(0)


def scheduled_through(params: ChainParams, height: Height) -> Units:
    """Sum of the scheduled rewards of blocks 1..``height`` (closed form, one step per era)."""
    total = 0
    interval = params.halving_interval
    era = 0
    while era < MAX_ERAS:
        first = max(1, era * interval)
        last = min(height, (era + 1) * interval - 1)
        if last < first:
            break
        total += (last - first + 1) * (params.block_reward >> era)
        era += 1
    return Units(total)


@dataclasses.dataclass(frozen=True)
class Emission:
    """The emission schedule of one chain: its parameters and its genesis supply."""

    params: ChainParams
    genesis_supply: Units

    @property
    def room(self) -> Units:
        """What may ever be minted: the cap minus the genesis supply (never negative)."""
        return Units(max(0, self.params.max_supply - self.genesis_supply))

    def minted_through(self, height: Height) -> Units:
        """Everything minted by blocks 1..``height``, the cap applied."""
        return Units(min(scheduled_through(self.params, height), self.room))

    def block_reward(self, height: Height) -> Units:
        """The reward minted by block ``height`` (0 for genesis and past the cap)."""
        if height < 1:
            return Units(0)
        return Units(self.minted_through(height) - self.minted_through(Height(height - 1)))

    def total_scheduled(self) -> Units:
        """What the schedule would mint forever without a cap."""
        return scheduled_through(self.params, Height(MAX_ERAS * self.params.halving_interval))

    def cap_height(self) -> Height | None:
        """The first height whose block brings the supply to the cap, or None if it never does."""
        if self.total_scheduled() < self.room:
            return None
        lo, hi = 0, MAX_ERAS * self.params.halving_interval
        while lo < hi:  # smallest h with minted_through(h) == room
            mid = (lo + hi) // 2
            if self.minted_through(Height(mid)) >= self.room:
                hi = mid
            else:
                lo = mid + 1
        return Height(lo)

    def supply_limit(self) -> Units:
        """The total supply the schedule converges to (the cap, if it is reached)."""
        return Units(self.genesis_supply + min(self.total_scheduled(), self.room))

    def eras(self) -> Iterator[Era]:
        """Each era of nonzero reward, clipped at the cap, in order."""
        interval = self.params.halving_interval
        cap = self.cap_height()
        for era in range(MAX_ERAS):
            first = Height(max(1, era * interval))
            last = Height((era + 1) * interval - 1)
            if cap is not None and first > cap:
                return
            if cap is not None and last >= cap:
                last = cap
            reward = self.block_reward(first)
            if reward == 0:
                return
            yield Era(
                index=era,
                first_height=first,
                last_height=last,
                reward=reward,
                operations_share=split_reward(self.params, reward).operations,
                supply_at_end=Units(self.genesis_supply + self.minted_through(last)),
                clipped=cap is not None and last == cap,
            )


@dataclasses.dataclass(frozen=True)
class Era:
    """One row of the emission schedule."""

    index: int
    first_height: Height
    last_height: Height
    reward: Units  # per block, at the era's first height
    operations_share: Units
    supply_at_end: Units
    clipped: bool  # the cap is reached in this era


@dataclasses.dataclass(frozen=True)
class RewardSplit:
    """Where one block reward goes. The three parts always add up to the reward exactly."""

    operations: Units
    work: Units
    validators: Units


def split_reward(params: ChainParams, reward: Units) -> RewardSplit:
    """Split ``reward``: the operations share first, then work vs validators of the rest.

    Rounding remainders go to the validators, so nothing is lost or created.
    """
    operations = bps_of(reward, params.operations_share_bps)
    rest = reward - operations
    work = bps_of(rest, params.work_share_bps)
    return RewardSplit(Units(operations), Units(work), Units(rest - work))


def block_reward(height: Height, emission: Emission | None = None) -> Units:
    """The reward of block ``height`` under ``emission`` (default: mainnet, empty genesis)."""
    from .genesis import MAINNET_PARAMS

    emission = emission or Emission(MAINNET_PARAMS, Units(0))
    return emission.block_reward(height)
