import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aipg.stake.block import DoubleSignEvidence, VoteStep
from aipg.stake.builder import make_commit, make_vote
from aipg.stake.ledger import apply_block, apply_transaction, check_transaction
from aipg.stake.state import escrow_key, state_hash
from aipg.stake.tokenomics import split_reward
from aipg.stake.tx import TxKind, make_tx
from aipg.stake.types import LedgerError
from aipg.testing.chainkit import AIPG, CHAIN, TestChain, ident


def tx(chain, who, kind, *, nonce=None, **kw):
    n = chain.state.account(who.address.raw).nonce if nonce is None else nonce
    return make_tx(who, CHAIN, kind, n, **kw)


def test_transfer_pays_fee_to_proposer_and_rewards_split():
    c = TestChain()
    alice, bob = c.users[0], c.users[1]
    before = c.state
    t = tx(c, alice, TxKind.TRANSFER, amount=5 * AIPG, fee=1000, recipient=bob.address)
    block = c.build(transactions=[t])
    s = c.commit(block)
    assert s.balance(alice.address) == before.balance(alice.address) - 5 * AIPG - 1000
    assert s.balance(bob.address) == before.balance(bob.address) + 5 * AIPG
    assert s.account(alice.address.raw).nonce == 1
    split = split_reward(s.params, 500 * AIPG)
    assert s.balance(c.ops.address) == split.operations
    assert s.work_pool == 0 and s.burned == split.work  # no work: the pool is burned (D61)
    # No verdict agreed with any outcome: the proposer gets its bonus and the fee, the
    # rest of the validators' part waits in the verdict pool.
    paid = sum(s.balance(v.address) for v in c.validators)
    bonus = split.validators * s.params.proposer_bonus_bps // 10_000
    assert paid == bonus + 1000
    assert s.verdict_pool == split.validators - bonus
    assert s.minted == 500 * AIPG
    assert s.total_holdings() == s.expected_supply()
    assert before.height == 0  # the input state is untouched


def test_replay_wrong_nonce_wrong_chain_bad_signature_rejected():
    c = TestChain()
    alice, bob = c.users[0], c.users[1]
    t = tx(c, alice, TxKind.TRANSFER, amount=1, recipient=bob.address)
    c.next(transactions=[t])
    with pytest.raises(LedgerError, match="nonce 0, expected 1"):
        check_transaction(c.state, t)
    with pytest.raises(LedgerError, match="chain"):
        check_transaction(c.state, make_tx(alice, "other", TxKind.TRANSFER, 1, amount=1))
    forged = tx(c, alice, TxKind.TRANSFER, amount=1, recipient=bob.address).replace(amount=2)
    with pytest.raises(LedgerError, match="bad signature"):
        check_transaction(c.state, forged)
    with pytest.raises(LedgerError, match="transaction 0: balance"):
        apply_block(
            c.state,
            c.build(
                transactions=[tx(c, alice, TxKind.TRANSFER, amount=10**18, recipient=bob.address)]
            ),
        )


def test_bond_joins_the_validator_set_at_the_epoch_and_unbond_withdraw():
    c = TestChain()
    carol = c.users[2]
    c.keys[carol.public_bytes] = carol
    c.next(transactions=[tx(c, carol, TxKind.BOND, amount=20_000 * AIPG)])
    assert carol.public_bytes not in c.state.validators
    while c.state.height % c.state.params.epoch_length:
        c.next()
    assert c.state.validators.power_of(carol.public_bytes) == 20_000 * AIPG
    c.next(transactions=[tx(c, carol, TxKind.UNBOND, amount=15_000 * AIPG)])
    unbond_height = c.state.height
    with pytest.raises(LedgerError, match="nothing has finished unbonding"):
        check_transaction(c.state, tx(c, carol, TxKind.WITHDRAW))
    while c.state.height < unbond_height + c.state.params.unbonding_period:
        c.next()
    bal = c.state.balance(carol.address)
    c.next(transactions=[tx(c, carol, TxKind.WITHDRAW)])
    assert c.state.balance(carol.address) == bal + 15_000 * AIPG
    assert carol.public_bytes not in c.state.validators  # 5,000 left is under the minimum


def test_escrow_lock_and_reclaim_after_expiry():
    c = TestChain()
    alice, bob = c.users[0], c.users[1]
    job = b"j" * 32
    c.next(transactions=[tx(c, alice, TxKind.ESCROW, amount=7 * AIPG, job_id=job)])
    assert c.state.escrows[escrow_key(job, alice.address.raw)].amount == 7 * AIPG
    with pytest.raises(LedgerError, match="already has an escrow from this account"):
        check_transaction(c.state, tx(c, alice, TxKind.ESCROW, amount=1, job_id=job))
    # Another account's escrow under the same job id takes nobody's slot (D30).
    check_transaction(c.state, tx(c, bob, TxKind.ESCROW, amount=1, job_id=job))
    with pytest.raises(LedgerError, match="locked until"):
        check_transaction(c.state, tx(c, alice, TxKind.RECLAIM, job_id=job))
    with pytest.raises(LedgerError, match="this account has no escrow"):
        check_transaction(c.state, tx(c, bob, TxKind.RECLAIM, job_id=job))
    for _ in range(c.state.params.escrow_period):
        c.next()
    bal = c.state.balance(alice.address)
    c.next(transactions=[tx(c, alice, TxKind.RECLAIM, job_id=job)])
    assert c.state.balance(alice.address) == bal + 7 * AIPG
    assert not c.state.escrows


def test_last_commit_is_required_and_verified():
    c = TestChain()
    c.next()
    good = c.build()
    no_commit = c.build()
    no_commit = no_commit.replace(body=no_commit.body.replace(last_commit=None))
    from aipg.stake.block import body_hash

    no_commit = no_commit.replace(
        header=no_commit.header.replace(body_hash=body_hash(no_commit.body))
    )
    with pytest.raises(LedgerError, match="lacks its parent's commit"):
        apply_block(c.state, no_commit)
    weak = make_commit(CHAIN, 1, c.blocks[-1].hash, c.validators[:2])
    with pytest.raises(LedgerError, match="more than 2/3"):
        from aipg.stake.ledger import verify_commit

        verify_commit(weak, c.state.last_validators, CHAIN, 1, c.blocks[-1].hash)
    apply_block(c.state, good)
    with pytest.raises(LedgerError, match="wrong parent"):
        apply_block(c.state, good.replace(header=good.header.replace(parent_hash=b"x" * 32)))
    with pytest.raises(LedgerError, match="different state"):
        apply_block(c.state, good.replace(header=good.header.replace(parent_state_hash=b"x" * 32)))


def test_double_sign_evidence_slashes_and_jails():
    c = TestChain()
    c.next()
    bad = c.validators[0]
    a = make_vote(bad, CHAIN, 1, 0, VoteStep.PREVOTE, b"a" * 32)
    b = make_vote(bad, CHAIN, 1, 0, VoteStep.PREVOTE, b"b" * 32)
    ev = DoubleSignEvidence(a, b)
    stake = c.state.bond(bad.public_bytes).stake
    c.next(double_signs=[ev])
    s = c.state
    cut = stake * s.params.double_sign_slash_bps // 10_000
    assert s.bond(bad.public_bytes).stake == stake - cut
    assert s.burned == cut + 2 * split_reward(s.params, 500 * AIPG).work  # and 2 unpaid pools
    assert s.bond(bad.public_bytes).jailed_until == s.height + s.params.jail_period
    with pytest.raises(LedgerError, match="already punished"):
        apply_block(s, c.build(double_signs=[ev]))
    same = DoubleSignEvidence(a, a)
    with pytest.raises(LedgerError, match="do not conflict"):
        apply_block(s, c.build(double_signs=[same]))
    while s.height % s.params.epoch_length:
        s = c.next()
    assert bad.public_bytes not in s.validators  # jailed and below the minimum


# --- properties ---------------------------------------------------------------------------

tx_specs = st.lists(
    st.tuples(
        st.sampled_from(list(TxKind)),
        st.integers(0, 3),  # sender
        st.integers(0, 3),  # recipient
        st.sampled_from([0, 1, 10**5, 10**12, 10**14, 2 * 10**14, 10**18]),  # amount
        st.sampled_from([0, 1, 10**4, 10**15]),  # fee
        st.sampled_from(["ok"] * 8 + ["nonce", "sig", "chain"]),
        st.integers(0, 2),  # job id
    ),
    max_size=12,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(blocks=st.lists(tx_specs, min_size=1, max_size=3))
def test_random_transaction_sequences_conserve_supply(blocks):
    c = TestChain()
    for specs in blocks:
        accepted = []
        scratch = c.state.copy()
        scratch.height += 1
        for kind, si, ri, amount, fee, flaw, job in specs:
            who = c.users[si]
            n = scratch.account(who.address.raw).nonce
            t = make_tx(
                who,
                "other" if flaw == "chain" else CHAIN,
                kind,
                n + 1 if flaw == "nonce" else n,
                fee=fee,
                amount=amount,
                recipient=c.users[ri].address,
                job_id=bytes([job]) * 32,
            )
            if flaw == "sig":
                t = t.replace(fee=fee + 1)
            try:
                apply_transaction(scratch, t, c.state.validators.proposer())
            except LedgerError as e:
                assert str(e)  # every rejection says why
                if flaw != "ok":
                    continue
                # a rejected valid-looking transaction must also be rejected inside a block
                with pytest.raises(LedgerError):
                    apply_block(c.state, c.build(transactions=[*accepted, t]))
                continue
            assert flaw == "ok", "a flawed transaction was accepted"
            accepted.append(t)
        s = c.next(transactions=accepted)
        assert all(a.balance >= 0 for a in s.accounts.values())
        assert all(b.stake >= 0 for b in s.bonds.values())
        assert s.total_holdings() == s.expected_supply()
        for t in accepted:  # every accepted transaction advanced its sender's nonce
            assert s.account(t.sender).nonce > t.nonce


def test_state_hash_changes_with_state():
    c = TestChain()
    h0 = state_hash(c.state)
    c.next()
    assert state_hash(c.state) != h0
    assert ident(1).public_bytes in c.state.validators
