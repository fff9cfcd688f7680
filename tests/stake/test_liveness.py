"""Validator liveness: the missed-blocks window, downtime jailing, UNJAIL."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aipg.stake.chain import Chain
from aipg.stake.genesis import MAINNET_PARAMS, genesis_from_toml, genesis_to_toml
from aipg.stake.ledger import check_transaction
from aipg.stake.liveness import record_signature
from aipg.stake.state import State, state_hash
from aipg.stake.tokenomics import split_reward
from aipg.stake.tx import TxKind, make_tx
from aipg.stake.types import BPS, Height, LedgerError
from aipg.testing.chainkit import CHAIN, TEST_PARAMS, TestChain

# Jailed at the fifth miss of an 8-height window (more than half missed).
SHORT = TEST_PARAMS.replace(
    signed_blocks_window=8, min_signed_per_window_bps=5_000, downtime_jail_period=5
)


# --- the window -------------------------------------------------------------------------


def first_jailing(pattern: list[bool], window: int, min_signed_bps: int) -> int | None:
    """The model: the index of the first height whose last ``window`` heights (those
    tracked so far) hold more misses than ``1 - min_signed`` of the window allows."""
    for i in range(len(pattern)):
        missed = sum(not signed for signed in pattern[max(0, i - window + 1) : i + 1])
        if missed * BPS > (BPS - min_signed_bps) * window:
            return i
    return None


@settings(max_examples=300, deadline=None)
@given(
    window=st.integers(1, 24),
    min_signed_bps=st.integers(0, BPS),
    start=st.integers(1, 100),
    pattern=st.lists(st.booleans(), max_size=80),
)
def test_jailed_exactly_when_misses_exceed_the_threshold(window, min_signed_bps, start, pattern):
    params = SHORT.replace(signed_blocks_window=window, min_signed_per_window_bps=min_signed_bps)
    s = State.from_genesis(TestChain(params=params).genesis)
    key = s.validators.validators[0].key
    expected = first_jailing(pattern, window, min_signed_bps)
    for i, signed in enumerate(pattern):
        height = Height(start + i)
        s.height = Height(height + 1)  # the block carrying the commit of ``height``
        record_signature(s, key, height, signed=signed)
        row = s.liveness.get(key)
        if expected is not None and i >= expected:
            assert row is not None and row.jailed_until == start + expected + 1 + 5
            continue
        recent = pattern[max(0, i - window + 1) : i + 1]
        missed = sum(not signed for signed in recent)
        assert (row.missed if row else 0) == missed
        assert row is None or (row.jailed_until == 0 and len(row.bitmap) == (window + 7) // 8)
        assert row is not None or missed == 0  # no misses, no row
    if expected is None:
        assert not s.downtime_jailed_until(key)


# --- a chain with a validator that stops signing ------------------------------------------


def jailed_chain(params=SHORT):
    c = TestChain(params=params)
    down = c.validators[3]
    return c, down


def test_a_validator_that_stops_signing_is_jailed_left_out_and_the_chain_goes_on():
    c, down = jailed_chain()
    key = down.public_bytes
    proposers = []
    for _ in range(5):  # heights 1..5 unsigned: the fifth miss is counted in block 6
        proposers.append(c.state.validators.proposer())
        c.next(absent={key})
    assert c.state.liveness[key].missed == 4 and key in c.state.validators
    assert key in proposers  # it had proposer turns while in the set
    c.next(absent={key})
    assert c.state.height == 6
    assert c.state.downtime_jailed_until(key) == 6 + SHORT.downtime_jail_period
    assert key not in c.state.validators  # at once, not at the epoch boundary (8)
    assert key in c.state.last_validators  # it was in the set that voted on block 6
    assert len(c.state.validators) == 3
    for _ in range(12):  # across epoch boundaries: it stays out, its turns never come
        assert c.state.validators.proposer() != key
        c.next(absent={key})
        assert key not in c.state.validators
        assert key not in c.state.validator_powers()
    assert c.state.height == 18
    assert c.state.bond(key).stake == 10_000 * 10**8  # no downtime slash by default


def test_unjail_is_refused_during_the_jail_and_returns_the_validator_at_the_next_epoch():
    c, down = jailed_chain()
    key = down.public_bytes
    for _ in range(6):
        c.next(absent={key})
    until = c.state.downtime_jailed_until(key)  # 11
    early = make_tx(down, CHAIN, TxKind.UNJAIL, 0)
    with pytest.raises(LedgerError, match=f"jailed for downtime until height {until}"):
        check_transaction(c.state, early)
    with pytest.raises(LedgerError, match="transaction 0: jailed for downtime until"):
        c.next(transactions=[early])
    while c.state.height < until - 1:
        c.next()
    c.next(transactions=[make_tx(down, CHAIN, TxKind.UNJAIL, 0)])  # block ``until``
    assert not c.state.downtime_jailed_until(key) and key not in c.state.liveness
    assert key not in c.state.validators  # like a new bond: from the next epoch boundary
    with pytest.raises(LedgerError, match="not jailed for downtime"):
        check_transaction(c.state, make_tx(down, CHAIN, TxKind.UNJAIL, 1))
    while c.state.height % SHORT.epoch_length:
        c.next()
    assert key in c.state.validators
    for _ in range(10):  # back, signing, with a fresh window
        c.next()
    assert key not in c.state.liveness and key in c.state.validators


def test_unjail_needs_the_minimum_bond():
    c, down = jailed_chain(SHORT.replace(downtime_slash_bps=100))
    key = down.public_bytes
    burned = c.state.burned
    for _ in range(6):
        c.next(absent={key})
    stake = c.state.bond(key).stake
    assert stake == 10_000 * 10**8 * 99 // 100  # slashed 1 %, burned (the supply check holds)
    unpaid_pool = 6 * split_reward(c.state.params, c.state.params.block_reward).work  # D61
    assert c.state.burned == burned + 10_000 * 10**8 // 100 + unpaid_pool
    while c.state.height < c.state.downtime_jailed_until(key):
        c.next()
    with pytest.raises(LedgerError, match="at least 10,000 AIPG bonded to return"):
        check_transaction(c.state, make_tx(down, CHAIN, TxKind.UNJAIL, 0))
    # Validators earn by verdicts now, not by voting power: a user funds the top-up.
    user = c.users[0]
    fund = make_tx(
        user,
        CHAIN,
        TxKind.TRANSFER,
        c.state.account(user.address.raw).nonce,
        amount=10**8 * 101,
        recipient=down.address,
    )
    top_up = make_tx(down, CHAIN, TxKind.BOND, 0, amount=10**8 * 100)
    c.next(transactions=[fund, top_up, make_tx(down, CHAIN, TxKind.UNJAIL, 1)])
    assert not c.state.downtime_jailed_until(key)


def test_occasional_misses_never_jail_and_leave_no_rows_behind():
    c, down = jailed_chain()
    key = down.public_bytes
    for h in range(1, 40):
        c.next(absent={key} if h % 3 == 0 else ())  # a third missed: under half
    assert key in c.state.validators and not c.state.downtime_jailed_until(key)
    for _ in range(SHORT.signed_blocks_window + 1):
        c.next()
    assert c.state.liveness == {}  # a window without misses is no row


def test_liveness_state_hashes_are_deterministic_and_survive_the_store(tmp_path):
    def run():
        c, down = jailed_chain()
        for h in range(1, 16):
            c.next(absent={down.public_bytes} if h < 8 else ())
        return c

    a, b = run(), run()
    assert [state_hash(s) for s in _replay(a)] == [state_hash(s) for s in _replay(b)]
    chain = Chain.open(tmp_path / "chain.sqlite", a.genesis)
    for block, commit in zip(a.blocks, a.commits, strict=True):
        chain.finalize(block, commit)
    chain.close()
    reopened = Chain.open(tmp_path / "chain.sqlite", a.genesis)
    assert reopened.state.liveness == a.state.liveness != {}
    assert state_hash(reopened.state) == state_hash(a.state)
    reopened.close()


def _replay(c: TestChain):
    from aipg.stake.ledger import apply_block

    s = State.from_genesis(c.genesis)
    for block in c.blocks:
        s = apply_block(s, block)
        yield s


def test_liveness_parameters_round_trip_through_toml():
    g = TestChain(params=SHORT.replace(downtime_slash_bps=7)).genesis
    text = genesis_to_toml(g)
    assert "signed_blocks_window = 8" in text and "downtime_slash_bps = 7" in text
    assert genesis_from_toml(text) == g
    assert MAINNET_PARAMS.signed_blocks_window * MAINNET_PARAMS.target_block_time_ms == (
        12 * 3600 * 1000
    )
