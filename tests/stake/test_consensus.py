"""Tendermint: proposer selection, the state machine on its own, the sign-record, and
randomized network schedules with Byzantine validators."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aipg.stake.block import ProposalMessage, Vote, VoteStep
from aipg.stake.consensus import (
    Broadcast,
    Decide,
    Evidence,
    HeightMachine,
    ScheduleTimeout,
    Step,
    Timeouts,
)
from aipg.stake.ledger import apply_block, verify_commit
from aipg.stake.signrecord import (
    STEP_PREVOTE,
    DoubleSignRefused,
    MemorySignRecord,
    SqliteSignRecord,
)
from aipg.stake.simulation import Behaviour, Scenario, Simulation, random_scenario, sim_block
from aipg.stake.validators import ValidatorSet
from aipg.testing.chainkit import CHAIN, TestChain, ident

# --- proposer selection -------------------------------------------------------------------

COMETBFT_SELECTION_1 = (
    "foo baz foo bar foo foo baz foo bar foo foo baz foo foo bar foo baz foo foo bar foo foo "
    "baz foo bar foo foo baz foo bar foo foo baz foo foo bar foo baz foo foo bar foo baz foo "
    "foo bar foo baz foo foo bar foo baz foo foo foo baz bar foo foo foo baz foo bar foo foo "
    "baz foo bar foo foo baz foo bar foo foo baz foo bar foo foo baz foo foo bar foo baz foo "
    "foo bar foo baz foo foo bar foo baz foo foo"
)


def test_proposer_selection_matches_cometbft():
    """CometBFT's TestProposerSelection1 (types/validator_set_test.go)."""
    vs = ValidatorSet.new({b"foo": 1000, b"bar": 300, b"baz": 330})
    seen = []
    for _ in range(99):
        seen.append(vs.proposer().decode())
        vs = vs.advanced(1)
    assert " ".join(seen) == COMETBFT_SELECTION_1


def test_equal_power_rotates_in_key_order_and_rounds_advance():
    vs = ValidatorSet.new({b"c": 5, b"a": 5, b"b": 5})
    assert [vs.proposer(r) for r in range(6)] == [b"a", b"b", b"c"] * 2


def test_update_keeps_priorities_and_newcomers_start_behind():
    vs = ValidatorSet.new({b"a": 10, b"b": 10})
    vs2 = vs.updated({b"a": 10, b"b": 10, b"c": 10})
    assert vs2.power_of(b"c") == 10 and vs2.total_power == 30
    assert next(v.priority for v in vs2.validators if v.key == b"c") < 0
    assert vs.updated({}) is None


# --- the sign-record ----------------------------------------------------------------------


def test_sqlite_sign_record_survives_restart(tmp_path):
    path = tmp_path / "sign.sqlite"
    rec = SqliteSignRecord(path)
    rec.check_and_record(5, 0, STEP_PREVOTE, b"a" * 32)
    rec.check_and_record(5, 0, STEP_PREVOTE, b"a" * 32)  # the identical vote again is fine
    rec.close()
    rec = SqliteSignRecord(path)
    with pytest.raises(DoubleSignRefused, match="already signed height 5 round 0"):
        rec.check_and_record(5, 0, STEP_PREVOTE, b"b" * 32)
    with pytest.raises(DoubleSignRefused):
        rec.check_and_record(4, 9, STEP_PREVOTE, b"a" * 32)
    rec.check_and_record(5, 1, STEP_PREVOTE, b"b" * 32)
    rec.close()


# --- the machine alone --------------------------------------------------------------------


class _App:
    def __init__(self, me):
        self.me = me

    def propose(self, height, round_):
        return sim_block(CHAIN, height, b"\0" * 32, self.me, round_)

    def valid(self, block):
        return block.header.parent_hash == b"\0" * 32


def _machines(n=4, sign_records=None):
    ids = [ident(i + 1) for i in range(n)]
    vs = ValidatorSet.new({i.public_bytes: 10 for i in ids})
    return (
        ids,
        vs,
        [
            HeightMachine(
                chain_id=CHAIN,
                height=1,
                validators=vs,
                app=_App(i.public_bytes),
                identity=i,
                sign_record=(sign_records or {}).get(k, MemorySignRecord()),
                timeouts=Timeouts(),
            )
            for k, i in enumerate(ids)
        ],
    )


def _deliver_all(machines, pending):
    """Deliver every broadcast to every other machine until quiet; return decisions."""
    decisions = {}
    while pending:
        src, eff = pending.pop(0)
        if isinstance(eff, Decide):
            decisions[src] = eff
        if not isinstance(eff, Broadcast):
            continue
        for k, m in enumerate(machines):
            if k == src:
                continue
            msg = eff.message
            out = m.on_proposal(msg) if isinstance(msg, ProposalMessage) else m.on_vote(msg)
            pending += [(k, e) for e in out]
    return decisions


def test_four_honest_validators_decide_in_round_zero():
    _ids, vs, machines = _machines()
    pending = [(k, e) for k, m in enumerate(machines) for e in m.start()]
    decisions = _deliver_all(machines, pending)
    assert len(decisions) == 4
    blocks = {d.block.hash for d in decisions.values()}
    assert len(blocks) == 1
    d = decisions[0]
    assert d.commit.round == 0 and d.block.header.proposer == vs.proposer(0)
    verify_commit(d.commit, vs, CHAIN, 1, d.block.hash)


def test_silent_proposer_leads_to_nil_votes_and_next_round():
    ids, vs, machines = _machines()
    proposer = next(k for k, i in enumerate(ids) if i.public_bytes == vs.proposer(0))
    others = [m for k, m in enumerate(machines) if k != proposer]
    for m in others:
        effects = m.start()
        assert ScheduleTimeout(1, 0, Step.PROPOSE, Timeouts().propose(0)) in effects
    pending = []
    for k, m in enumerate(machines):
        if k != proposer:
            pending += [(k, e) for e in m.on_timeout(0, Step.PROPOSE)]
    votes = [e.message for _, e in pending if isinstance(e, Broadcast)]
    assert all(isinstance(v, Vote) and v.block_hash == bytes(32) for v in votes)
    live = [m if k != proposer else _Mute() for k, m in enumerate(machines)]
    _deliver_all(live, pending)
    for m in others:
        assert m.step == Step.PRECOMMIT  # +2/3 prevoted nil → precommit nil
        out = m.on_timeout(0, Step.PRECOMMIT)
        assert m.round == 1
        assert any(isinstance(e, ScheduleTimeout) and e.round == 1 for e in out) or any(
            isinstance(e, Broadcast) for e in out
        )
    assert Timeouts().propose(1) > Timeouts().propose(0)  # timeouts grow per round


class _Mute:
    def on_vote(self, vote):
        return []

    def on_proposal(self, msg):
        return []


def test_restarted_validator_does_not_sign_twice(tmp_path):
    path = tmp_path / "sign.sqlite"
    ids, vs, machines = _machines(sign_records={0: SqliteSignRecord(path)})
    first = machines[0].start()
    machines[0].on_timeout(0, Step.PROPOSE)  # prevote (nil, or for its own proposal)
    # Restart validator 0 with the same sign-record: it must not prevote anything else.
    again = HeightMachine(
        chain_id=CHAIN,
        height=1,
        validators=vs,
        app=_App(ids[0].public_bytes),
        identity=ids[0],
        sign_record=SqliteSignRecord(path),
        timeouts=Timeouts(),
    )
    again.start()
    out = again.on_timeout(0, Step.PROPOSE)
    prevotes = [e for e in first + out if isinstance(e, Broadcast) and isinstance(e.message, Vote)]
    assert all(v.message.step == VoteStep.PREVOTE for v in prevotes)
    assert len({v.message.block_hash for v in prevotes}) <= 1


def test_equivocation_is_reported_as_evidence():
    ids, _vs, machines = _machines()
    from aipg.stake.builder import make_vote

    a = make_vote(ids[3], CHAIN, 1, 0, VoteStep.PREVOTE, b"a" * 32)
    b = make_vote(ids[3], CHAIN, 1, 0, VoteStep.PREVOTE, b"b" * 32)
    assert machines[0].on_vote(a) == []
    out = machines[0].on_vote(b)
    ev = [e.evidence for e in out if isinstance(e, Evidence)]
    assert len(ev) == 1 and {ev[0].vote_a.block_hash, ev[0].vote_b.block_hash} == {
        b"a" * 32,
        b"b" * 32,
    }
    forged = b.replace(block_hash=b"c" * 32)  # signature no longer matches
    assert machines[0].on_vote(forged) == []


# --- randomized schedules -----------------------------------------------------------------

SCHEDULES = [(4, 400), (7, 400), (10, 200)]  # 1,000 in all


@pytest.mark.parametrize(("n", "count"), SCHEDULES)
def test_random_schedules_are_safe_and_live(n, count):
    """Random delays, drops, partitions that heal and Byzantine validators (< 1/3 of the
    stake: silent, equivocating, proposing conflicting blocks): no two honest nodes ever
    finalize different blocks at a height, and everyone finalizes once the network heals."""
    byzantine_runs = 0
    for seed in range(n * 100_000, n * 100_000 + count):
        sc = random_scenario(seed, n)
        sim = Simulation(sc)
        live = sim.run()
        assert sim.conflicting_decisions() == [], f"safety violated in schedule {seed}"
        assert live, f"schedule {seed} did not finalize after the network healed"
        byzantine_runs += any(b != Behaviour.HONEST for b in sc.behaviours)
        node = sim.honest[0]
        vs = sim.vset
        for h in range(1, sc.heights + 1):
            block, commit = node.decided[h]
            verify_commit(commit, vs, sc.chain_id, h, block.hash)
            vs = vs.advanced(1)
    assert byzantine_runs > count // 3


def test_double_sign_evidence_from_the_network_slashes():
    chain = TestChain(n_validators=4)
    sc = Scenario(
        seed=11,
        n=4,
        stakes=[10_000] * 4,
        behaviours=[Behaviour.HONEST] * 3 + [Behaviour.EQUIVOCATE],
        gst_ms=0,
        drop_rate=0.0,
        max_delay_ms=5,
        pre_gst_delay_ms=5,
        partition=None,
        heights=1,
        chain_id=CHAIN,
    )
    sim = Simulation(sc, identities=chain.validators)
    assert sim.run()
    evidence = [e for node in sim.honest for e in node.evidence]
    assert evidence and all(e.vote_a.signer == chain.validators[3].public_bytes for e in evidence)
    chain.next()
    stake = chain.state.bond(chain.validators[3].public_bytes).stake
    s = apply_block(chain.state, chain.build(double_signs=[evidence[0]]))
    assert s.bond(chain.validators[3].public_bytes).stake < stake
    assert s.bond(chain.validators[3].public_bytes).jailed_until > s.height


@settings(max_examples=60, deadline=None)
@given(powers=st.lists(st.integers(1, 50), min_size=1, max_size=8))
def test_proposer_frequency_follows_voting_power(powers):
    """Over as many heights as the total power, each validator proposes its power's
    worth of blocks, give or take one (CometBFT's weighted round robin)."""
    vs = ValidatorSet.new({bytes([i]) * 32: p for i, p in enumerate(powers)})
    total = vs.total_power
    for _ in range(total * 2):  # let the priorities settle
        vs = vs.advanced(1)
    counts = {}
    for _ in range(total):
        counts[vs.proposer()] = counts.get(vs.proposer(), 0) + 1
        vs = vs.advanced(1)
    for i, p in enumerate(powers):
        assert abs(counts.get(bytes([i]) * 32, 0) - p) <= 1
