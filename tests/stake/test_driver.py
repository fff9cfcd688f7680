"""Consensus over trio: four validators with their own stores and sign-records, an
in-memory network, and a deterministic clock."""

import trio

from aipg.stake.chain import Chain
from aipg.stake.consensus import Timeouts
from aipg.stake.driver import BlockContents, ConsensusDriver
from aipg.stake.signrecord import SqliteSignRecord
from aipg.stake.state import state_hash
from aipg.stake.tx import TxKind, make_tx
from aipg.testing.chainkit import CHAIN, TestChain


async def test_four_validators_finalize_blocks_with_transactions(tmp_path, autojump_clock):
    world = TestChain(n_validators=4)
    alice, bob = world.users[0], world.users[1]
    payment = make_tx(alice, CHAIN, TxKind.TRANSFER, 0, fee=10, amount=123, recipient=bob.address)

    def contents(state):
        pending = [payment] if state.account(alice.address.raw).nonce == 0 else []
        return BlockContents(transactions=pending)

    chains = [Chain.open(tmp_path / f"v{i}.sqlite", world.genesis) for i in range(4)]
    inboxes = [trio.open_memory_channel(1000) for _ in range(4)]
    silent = {3}  # one validator (1/4 of the power) is down: the rest still finalize

    def publisher(i):
        async def publish(data: bytes) -> None:
            for j, (send, _) in enumerate(inboxes):
                if j != i and j not in silent:
                    await send.send(data)

        return publish

    drivers = [
        ConsensusDriver(
            chains[i],
            world.validators[i],
            SqliteSignRecord(tmp_path / f"sign{i}.sqlite"),
            publisher(i),
            timeouts=Timeouts(1_000, 500, 250),
            contents=contents,
        )
        for i in range(4)
    ]
    with trio.fail_after(600):
        async with trio.open_nursery() as nursery:
            for i, d in enumerate(drivers):
                if i not in silent:
                    await nursery.start(d.run, inboxes[i][1])
            for i, d in enumerate(drivers):
                if i not in silent:
                    await d.wait_for_height(4)
            nursery.cancel_scope.cancel()
    live = [chains[i] for i in range(4) if i not in silent]
    for h in range(1, 5):
        assert len({c.store.block_hash_at(h) for c in live}) == 1
    assert len({state_hash(c.store.load_state()) for c in live if c.height == live[0].height}) == 1
    s = live[0].state
    assert s.balance(bob.address) == 1_000_000 * 10**8 + 123

    # Restart everyone from their stores and sign-records (which remember what each
    # signed at the height they were in): they carry on without double-signing.
    inboxes[:] = [trio.open_memory_channel(1000) for _ in range(4)]
    silent.clear()
    restarted = [
        ConsensusDriver(
            chains[i],
            world.validators[i],
            SqliteSignRecord(tmp_path / f"sign{i}.sqlite"),
            publisher(i),
            timeouts=Timeouts(1_000, 500, 250),
        )
        for i in range(4)
    ]
    assert chains[3].height == 0  # it was down: it catches up from its peers' answers
    target = max(c.height for c in chains) + 3
    with trio.fail_after(600):
        async with trio.open_nursery() as nursery:
            for i, d in enumerate(restarted):
                await nursery.start(d.run, inboxes[i][1])
            for d in restarted:
                await d.wait_for_height(target)
            nursery.cancel_scope.cancel()
    for h in range(1, target + 1):
        assert len({c.store.block_hash_at(h) for c in chains}) == 1
    for c in chains:
        c.close()
