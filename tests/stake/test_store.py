"""The chain store: blocks, commit certificates and state in one transaction; crash safety."""

import multiprocessing
import os
import random
import signal
import time

import pytest

from aipg.stake.chain import Chain
from aipg.stake.state import state_hash
from aipg.stake.store import ChainStore, StoreError
from aipg.stake.types import LedgerError
from aipg.testing.chainkit import TestChain, reference_chain


@pytest.fixture(scope="module")
def ref():
    c = reference_chain(40)
    return c, [None] + [state_hash(s) for s in _states(c)]


def _states(c):
    from aipg.stake.ledger import apply_block
    from aipg.stake.state import State

    s = State.from_genesis(c.genesis)
    for block in c.blocks:
        s = apply_block(s, block)
        yield s


def test_store_round_trip_and_reopen(tmp_path, ref):
    c, hashes = ref
    chain = Chain.open(tmp_path / "chain.sqlite", c.genesis)
    assert chain.height == 0
    for block, commit in zip(c.blocks[:10], c.commits[:10], strict=True):
        chain.finalize(block, commit)
    chain.close()
    chain = Chain.open(tmp_path / "chain.sqlite", c.genesis)
    assert chain.height == 10
    assert state_hash(chain.state) == hashes[10]
    fb = chain.store.finalized(10)
    assert fb.block == c.blocks[9] and fb.commit == c.commits[9]
    assert chain.block_hash_at(0) == c.genesis.hash
    assert chain.block_hash_at(10) == c.blocks[9].hash
    assert chain.validator_set_at(10) == {v.public_bytes: 10_000 * 10**8 for v in c.validators}
    assert [f.block.height for f in chain.store.finalized_range(8, 5)] == [8, 9, 10]
    with pytest.raises(LedgerError, match="does not follow"):
        chain.finalize(c.blocks[3], c.commits[3])
    with pytest.raises(LedgerError, match="commit certificate is not for block"):
        chain.finalize(c.blocks[10], c.commits[11])
    assert chain.height == 10 and chain.store.height == 10
    chain.close()


def test_store_refuses_another_chain(tmp_path, ref):
    c, _ = ref
    ChainStore(tmp_path / "chain.sqlite", c.genesis).close()
    other = TestChain(n_validators=3).genesis
    with pytest.raises(StoreError, match="another chain"):
        ChainStore(tmp_path / "chain.sqlite", other)


def _writer(path, genesis, blocks, commits, control):
    """Child: resume the chain in ``path``; finalize the next reference block each time
    the parent says go, and report the height committed."""
    chain = Chain.open(path, genesis)
    control.send(chain.height)
    for block, commit in zip(blocks[chain.height :], commits[chain.height :], strict=True):
        control.recv()
        chain.finalize(block, commit)
        control.send(chain.height)
    chain.close()
    os._exit(0)


def test_killed_mid_commit_reopens_at_last_committed_block(tmp_path, ref):
    """SIGKILL a writer at random points, many times; every reopen yields the last
    committed block and exactly the state hash of a run that never crashed.

    The writer commits one block per "go"; after 0-2 whole blocks the parent says go
    once more and kills it a random fraction of one block's time later, so the crash
    lands anywhere inside that block's verify, apply and commit."""
    c, hashes = ref
    path = tmp_path / "chain.sqlite"
    ctx = multiprocessing.get_context("fork")
    rng = random.Random(1234)
    n = len(c.blocks)
    block_time = 0.002
    kills, outcomes = 0, []
    height = 0
    while height < n:
        parent, child = ctx.Pipe()
        p = ctx.Process(target=_writer, args=(path, c.genesis, c.blocks, c.commits, child))
        p.start()
        assert parent.poll(30), "writer did not start"
        reported = parent.recv()
        for _ in range(min(rng.randint(0, 2), n - reported - 1)):
            t0 = time.perf_counter()
            parent.send(True)
            assert parent.poll(30)
            reported = parent.recv()
            block_time = 0.7 * block_time + 0.3 * (time.perf_counter() - t0)
        parent.send(True)
        time.sleep(rng.uniform(0, 1.2 * block_time))  # the random crash point
        os.kill(p.pid, signal.SIGKILL)
        kills += 1
        p.join(30)
        height = _check_store(path, c, hashes, at_least=reported)
        outcomes.append(height > reported)  # did the last block commit before the kill?
    assert kills >= 15
    assert any(outcomes) and not all(outcomes)  # crashes landed before and after commits


def _check_store(path, c, hashes, *, at_least: int) -> int:
    """Reopen the store: the last committed block and the state after it, exactly."""
    store = ChainStore(path, c.genesis)
    try:
        h = store.height
        assert h >= at_least  # nothing reported committed was lost
        state = store.load_state()
        assert state.height == h
        assert state_hash(state) == hashes[h]
        if h:
            fb = store.finalized(h)
            assert fb.block == c.blocks[h - 1] and fb.commit == c.commits[h - 1]
        assert state.total_holdings() == state.expected_supply()
        return h
    finally:
        store.close()
