from hypothesis import given, settings
from hypothesis import strategies as st

from aipg.stake.genesis import MAINNET_PARAMS
from aipg.stake.tokenomics import Emission, block_reward, scheduled_through, split_reward
from aipg.wire import UNITS_PER_AIPG

AIPG = UNITS_PER_AIPG


def test_rewards_at_era_boundaries():
    assert block_reward(0) == 0
    assert block_reward(1) == 500 * AIPG
    assert block_reward(99_999) == 500 * AIPG
    assert block_reward(100_000) == 250 * AIPG
    assert block_reward(199_999) == 250 * AIPG
    assert block_reward(200_000) == 125 * AIPG
    assert block_reward(300_000) == 62_50000000
    assert block_reward(10**9) == 0


def test_schedule_without_cap_converges_below_max_supply():
    e = Emission(MAINNET_PARAMS, 0)
    assert e.cap_height() is None
    # 100,000 blocks per era, reward halving in integer base units: just under 100M AIPG.
    limit = e.supply_limit()
    assert 99_999 * 500 * AIPG < limit < 100_000_000 * AIPG
    assert limit == scheduled_through(MAINNET_PARAMS, 64 * 100_000)


def test_last_reward_is_clipped_at_the_cap():
    genesis_supply = 150_000_000 * AIPG + 123
    e = Emission(MAINNET_PARAMS, genesis_supply)
    cap = e.cap_height()
    assert cap is not None
    assert genesis_supply + e.minted_through(cap) == MAINNET_PARAMS.max_supply
    assert 0 < e.block_reward(cap) < 250 * AIPG  # clipped
    assert e.block_reward(cap + 1) == 0
    assert e.block_reward(cap - 1) == 250 * AIPG
    eras = list(e.eras())
    assert eras[-1].clipped and eras[-1].last_height == cap
    assert eras[-1].supply_at_end == MAINNET_PARAMS.max_supply


@settings(max_examples=200, deadline=None)
@given(
    genesis=st.integers(0, 200_000_000 * AIPG),
    height=st.integers(0, 5_000_000),
)
def test_cumulative_issuance_never_above_cap(genesis, height):
    e = Emission(MAINNET_PARAMS, genesis)
    minted = e.minted_through(height)
    assert genesis + minted <= MAINNET_PARAMS.max_supply
    if height >= 1:
        assert minted == e.minted_through(height - 1) + e.block_reward(height)


@settings(max_examples=300, deadline=None)
@given(reward=st.integers(0, 10**18))
def test_split_is_exact_in_base_units(reward):
    s = split_reward(MAINNET_PARAMS, reward)
    assert s.operations + s.work + s.validators == reward
    assert s.operations == reward * 5 // 100
    assert min(s.operations, s.work, s.validators) >= 0


def test_mainnet_operations_share():
    s = split_reward(MAINNET_PARAMS, 500 * AIPG)
    assert s.operations == 25 * AIPG
    assert s.work + s.validators == 475 * AIPG
