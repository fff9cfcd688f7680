"""Consensus over trio: four validators with their own stores and sign-records, an
in-memory network, and a deterministic clock."""

import trio

from aipg.stake.driver import BlockContents
from aipg.stake.state import state_hash
from aipg.stake.tx import TxKind, make_tx
from aipg.testing.chainkit import CHAIN, TEST_PARAMS, TestChain
from aipg.testing.drivers import TIMEOUTS, DriverNet


async def test_four_validators_finalize_blocks_with_transactions(tmp_path, autojump_clock):
    world = TestChain(n_validators=4)
    alice, bob = world.users[0], world.users[1]
    payment = make_tx(alice, CHAIN, TxKind.TRANSFER, 0, fee=10, amount=123, recipient=bob.address)

    def contents(state):
        pending = [payment] if state.account(alice.address.raw).nonce == 0 else []
        return BlockContents(transactions=pending)

    # One validator (1/4 of the power) is down: the rest still finalize.
    net = DriverNet(world, tmp_path, down={3})
    net.build(contents=contents)
    await net.run_until(4)
    assert net.agree_up_to(4)
    live = [net.chains[i] for i in net.live]
    assert len({state_hash(c.store.load_state()) for c in live if c.height == live[0].height}) == 1
    s = live[0].state
    assert s.balance(bob.address) == 1_000_000 * 10**8 + 123

    # Restart everyone from their stores and sign-records (which remember what each
    # signed at the height they were in): they carry on without double-signing.
    net.down.clear()
    net.build()
    assert net.chains[3].height == 0  # it was down: it catches up from its peers' answers
    target = max(c.height for c in net.chains) + 3
    await net.run_until(target)
    assert net.agree_up_to(target)
    net.close()


PROPOSE_S = TIMEOUTS.propose_ms / 1000


async def run_with_one_down(tmp_path, params, heights: int):
    """Four validators of ``params``, validator 2 down from the start, until ``heights``
    are final; returns the state, the down validator's key and how long each height took."""
    tmp_path.mkdir()
    world = TestChain(n_validators=4, params=params)
    net = DriverNet(world, tmp_path, down={2})
    finalized_at: dict[int, float] = {}

    def on_finalized(block, commit, before):
        finalized_at[block.height] = trio.current_time()

    net.build(timeouts=TIMEOUTS, on_finalized=on_finalized)
    start = trio.current_time()
    await net.run_until(heights)
    key = world.validators[2].public_bytes
    assert net.agree_up_to(heights)
    for h in range(1, heights + 1):
        assert net.chains[0].store.finalized(h).block.header.proposer != key
    state = net.chains[0].state
    net.close()
    took = {h: finalized_at[h] - finalized_at.get(h - 1, start) for h in finalized_at}
    return state, key, took


async def test_a_validator_down_from_the_start_is_jailed_and_heights_stop_waiting_for_it(
    tmp_path, autojump_clock
):
    # Jailed at its fifth miss of an 8-height window: out of the set from height 7 on.
    params = TEST_PARAMS.replace(
        signed_blocks_window=8, min_signed_per_window_bps=5_000, downtime_jail_period=5
    )
    s, key, took = await run_with_one_down(tmp_path / "on", params, 24)
    assert s.downtime_jailed_until(key) == 6 + params.downtime_jail_period
    assert key not in s.validators and len(s.validators) == 3
    # Before the jailing its proposer turns cost a propose timeout each; after it, no
    # height waits for it (on the deterministic clock, every other height takes no time).
    assert max(took[h] for h in range(1, 7)) >= PROPOSE_S
    assert max(took[h] for h in range(7, 25)) < PROPOSE_S

    # The same network without liveness jailing keeps waiting for it, height after height.
    off = params.replace(min_signed_per_window_bps=0)
    s, key, took = await run_with_one_down(tmp_path / "off", off, 24)
    assert key in s.validators
    assert sum(took[h] >= PROPOSE_S for h in range(7, 25)) >= 3


async def test_a_decision_for_a_height_sync_already_applied_moves_on(tmp_path, autojump_clock):
    """A node that joins while blocks are made may apply a height from sync while its own
    consensus machine decides that height: the decision is dropped and consensus goes on
    from the chain (it used to crash the driver: the block did not follow the chain)."""
    from aipg.stake.consensus import Decide

    world = TestChain(n_validators=4)
    net = DriverNet(world, tmp_path, down={3})
    net.build()
    await net.run_until(3)
    late = net.chains[3]
    net.down.clear()
    net.build()  # validator 3's machine starts at height 1; its chain is at 0
    driver = net.drivers[3]
    assert driver.consensus.height == 1 and late.height == 0
    ahead = net.chains[0].store
    for h in (1, 2):  # what sync does (ChainService._catch_up through the driver's app)
        fb = ahead.finalized(h)
        driver.app.finalize(fb.block, fb.commit)
    one = ahead.finalized(1)
    async with trio.open_nursery() as nursery:
        driver._nursery = nursery  # the driver's timers (run() sets it)
        await driver._carry_out([Decide(one.block, one.commit)])
        nursery.cancel_scope.cancel()
    assert late.height == 2
    assert driver.consensus.height == 3
    assert late.store.block_hash_at(2) == ahead.block_hash_at(2)
    net.close()
