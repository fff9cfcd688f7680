"""Audit sampling on the real ledger: a claim binds the receipt on chain, the beacon two
blocks later draws its audit; unaudited claims are paid, audited ones only by a
certificate; the audit rate falls with a worker's record and starts over after a
conviction, which also forfeits its unpaid claims; fraud evidence on a claim paid
unaudited still convicts within the window (D79-D83)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aipg.pouw import Certificate, FraudEvidence
from aipg.stake.audit import AUDIT_DELAY, audit_draw, audit_rate, record_rate, worth_bound
from aipg.stake.ledger import apply_block
from aipg.stake.state import AuditRecord
from aipg.stake.tx import TxKind, make_tx
from aipg.stake.types import BPS, LedgerError
from aipg.testing.chainkit import (
    AIPG,
    CHAIN,
    ECONOMY_PARAMS,
    TestChain,
    commit_tx,
    make_certificate,
    make_review,
    make_work,
)

# Every claim after two certified audits is drawn at 50 % (the record's rate, not the
# floor, binds: (1 / 2)^2 = 25 % < 50 %), so both outcomes show within a few claims.
PARAMS = ECONOMY_PARAMS.replace(audit_full_jobs=1, audit_floor_bps=5_000, escrow_period=40)
BOND = 500_000 * AIPG  # slashable 250,000 AIPG: the worth rate stays far below 50 %


def _chain():
    c = TestChain(n_validators=4, params=PARAMS, economy=True)
    c.next(transactions=c.economy_txs())
    worker = c.users[1]
    c.next(transactions=[make_tx(worker, CHAIN, TxKind.BOND, 0, amount=BOND)])
    for n in (1, 2):  # two certified audits: the record's rate falls to the floor
        c.next(certificates=[make_certificate(c, worker, nonce=n)])
    return c, worker


def _claim(c: TestChain, worker, nonce: int, fee: int = 0) -> Certificate:
    """A claim of ``worker``'s work on a new job; a paid one's client escrows its fee."""
    job, a, r, _ = make_work(c, worker, nonce=nonce, fee=fee)
    if fee:
        client = c.users[0]
        n = c.state.account(client.address.raw).nonce
        c.next(transactions=[make_tx(client, CHAIN, TxKind.ESCROW, n, amount=fee, job_id=r.job_id)])
    return Certificate(job, a, r, ())


def test_the_draw_is_the_beacon_after_the_claim_and_an_unaudited_claim_is_paid():
    c, worker = _chain()
    assert record_rate(c.state, worker.public_bytes) == 5_000
    outcomes = {}
    for n in range(10, 30):
        claim = _claim(c, worker, n, fee=16 * 10_000)
        jid = claim.receipt.job_id
        before = c.state.balance(worker.address)
        s = c.next(certificates=[claim])
        row = s.claims[jid]
        assert (row.rate_bps, row.audited, row.height) == (5_000, 0, s.height)
        c.next()
        assert not c.state.claims[jid].audited and jid not in c.state.certified
        s = c.next()  # the beacon of this block draws it
        draw = audit_draw(s.beacon, row.receipt_id)
        audited = draw < row.rate_bps
        outcomes[audited] = outcomes.get(audited, 0) + 1
        if audited:
            assert s.claims[jid].audited and jid not in s.certified
            assert jid not in s.paid
        else:
            assert jid not in s.claims and jid in s.certified
            fee = 16 * 10_000 * claim.receipt.output_tokens // 16
            assert s.paid[jid] > fee  # its fee for its tokens and a pool share
            assert s.balance(worker.address) >= before + s.paid[jid]  # (also a validator)
            assert not any(k.startswith(jid) for k in s.escrows)
        if len(outcomes) == 2 and min(outcomes.values()) >= 2:
            break
    assert set(outcomes) == {True, False}


def test_an_audited_claim_is_paid_only_by_a_certificate_which_raises_the_record():
    c, worker = _chain()
    for n in range(40, 80):
        job, a, r, verdicts = make_work(c, worker, nonce=n)
        claim = Certificate(job, a, r, ())
        c.next(certificates=[claim])
        c.next()
        s = c.next()
        if r.job_id in s.claims:  # audited
            break
    else:
        pytest.fail("no claim was audited at 50 %")
    assert s.claims[r.job_id].audited
    for _ in range(2):  # waiting pays nothing
        s = c.next()
        assert r.job_id not in s.certified
    score = s.audit_records[worker.public_bytes].score
    s = c.next(certificates=[Certificate(job, a, r, verdicts)])
    assert r.job_id in s.certified and r.job_id not in s.claims and s.paid[r.job_id] > 0
    assert s.audit_records[worker.public_bytes].score == score + BPS // 5_000
    with pytest.raises(LedgerError, match="already certified"):
        apply_block(s, c.build(certificates=[claim]))


def test_a_claim_needs_its_committed_job_and_is_made_once():
    c, worker = _chain()
    claim = _claim(c, worker, 90)
    s = c.next(certificates=[claim])
    with pytest.raises(LedgerError, match="already claimed"):
        apply_block(s, c.build(certificates=[claim]))
    job, a, r, _ = make_work(c, worker, nonce=91)
    forged = Certificate(job, a, r.replace(output_tokens=r.output_tokens + 1), ())
    with pytest.raises(LedgerError, match="claim 0"):  # the receipt's signature fails
        apply_block(c.state, c.build(certificates=[forged]))


def test_the_rate_falls_with_the_record_to_the_floor_and_starts_over_on_conviction():
    c, worker = _chain()
    key = worker.public_bytes
    s = c.state
    p = PARAMS.replace(audit_full_jobs=8, audit_floor_bps=20)
    s.genesis = s.genesis.replace(params=p)
    rates = []
    for score in (0, 7, 8, 16, 64, 178, 179, 10_000):
        s.audit_records[key] = AuditRecord(score, s.height)
        rates.append(record_rate(s, key))
    assert rates == [BPS, BPS, BPS, 2_500, 156, 20, 20, 20]
    # The worth rate: a fresh key with the least bond is audited always.
    assert audit_rate(s, c.users[2].public_bytes, 0) == BPS
    slashable = BOND * p.fraud_slash_bps // BPS
    assert audit_rate(s, key, 0) == max(20, -(-2 * worth_bound(s, 0) * BPS // slashable))


def test_a_conviction_resets_the_record_and_forfeits_unpaid_claims():
    c, worker = _chain()
    key = worker.public_bytes
    pending = _claim(c, worker, 120, fee=16 * 10_000)
    fraud = FraudEvidence(*make_work(c, worker, nonce=121, valid=False))
    c.next(certificates=[pending], frauds=[fraud])
    escrowed = c.state.balance(c.users[0].address)
    s = c.next(reviews=[make_review(c, fraud, upheld=True)])
    assert s.audit_records[key].score == 0 and record_rate(s, key) == BPS
    jid = pending.receipt.job_id
    assert jid not in s.claims and jid in s.certified  # never paid
    assert s.balance(c.users[0].address) == escrowed + 16 * 10_000  # the client repaid
    for _ in range(AUDIT_DELAY):
        s = c.next()
    assert jid not in s.paid


def test_fraud_evidence_on_a_claim_paid_unaudited_slashes_within_the_window():
    c, worker = _chain()
    for n in range(140, 200):
        job, a, r, bad = make_work(c, worker, nonce=n, valid=False)  # forged work
        c.next(certificates=[Certificate(job, a, r, ())])
        c.next()
        s = c.next()
        if r.job_id in s.certified:  # paid unaudited
            break
    else:
        pytest.fail("every claim was audited at 50 %")
    bonded = s.bond(worker.public_bytes).stake
    fraud = FraudEvidence(job, a, r, bad)  # a validator re-checked it anyway
    c.next(frauds=[fraud])
    s = c.next(reviews=[make_review(c, fraud, upheld=True)])
    assert s.bond(worker.public_bytes).stake == bonded - bonded * PARAMS.fraud_slash_bps // BPS


def test_a_commit_pays_the_least_fee():
    c = TestChain(params=PARAMS.replace(commit_min_fee=1_000))
    with pytest.raises(LedgerError, match="fee of at least 1000"):
        apply_block(c.state, c.build(transactions=[commit_tx(c.state, b"j" * 32, c.users[0])]))
    n = c.state.account(c.users[0].address.raw).nonce
    tx = make_tx(c.users[0], CHAIN, TxKind.COMMIT, n, fee=1_000, job_id=b"j" * 32)
    assert b"j" * 32 in c.next(transactions=[tx]).commitments


@settings(max_examples=200, deadline=None)
@given(
    score=st.integers(0, 5_000),
    bond_aipg=st.integers(100, 2_000_000),
    fee=st.integers(0, 50 * AIPG),
    cheats=st.lists(st.booleans(), min_size=1, max_size=60).filter(any),
)
def test_cheating_on_some_jobs_loses_in_expectation(score, bond_aipg, fee, cheats):
    """A worker that forges a chosen subset of its claims (paid in full when unaudited,
    slashed and stopped at the first audited forgery) expects to lose, whatever its
    record, bond and choice: each claim's audit probability is at least twice its worth
    over the slashable bond (D80). Honest claims clean its record as fast as possible."""
    c = TestChain(params=PARAMS.replace(audit_full_jobs=8, audit_floor_bps=20))
    s = c.state
    key = c.users[1].public_bytes
    s.bonds[key] = s.bond(key)._replace(stake=bond_aipg * AIPG)
    slash = bond_aipg * AIPG * PARAMS.fraud_slash_bps // BPS
    worth = worth_bound(s, fee)
    alive, gain, loss = 1.0, 0.0, 0.0  # P(no forgery caught yet), expected gain and loss
    for forged in cheats:
        s.audit_records[key] = AuditRecord(score, 0)
        p = audit_rate(s, key, fee) / BPS
        if forged:
            gain += alive * (1 - p) * worth
            loss += alive * p * slash
            alive *= 1 - p
        else:
            score += 1 if p >= 1 else round(1 / p)
    assert gain < loss


def test_a_proposal_sees_the_draw_of_its_own_block():
    """``prepare_block`` draws the claims of its block with that block's beacon, as
    ``apply_block`` will: a certificate offered in the very block that pays its claim
    unaudited is left out (not a block every validator rejects), and one whose claim
    that block audits goes in."""
    from aipg.stake.proposal import Candidates, prepare_block

    c, worker = _chain()
    seen = set()
    for n in range(300, 340):
        job, a, r, verdicts = make_work(c, worker, nonce=n)
        c.next(certificates=[Certificate(job, a, r, ())])
        c.next()
        proposer = c.keys[c.state.validators.proposer()]
        cert = Certificate(job, a, r, verdicts)
        prepared = prepare_block(
            c.state,
            proposer,
            Candidates(certificates=[cert]),
            time_ms=c.state.time_ms + 1_000,
            last_commit=c.last_commit(),
        )
        s = c.commit(prepared.block)  # applies: the proposal and the ledger agree
        paid_unaudited = not prepared.block.body.certificates
        assert paid_unaudited == bool(prepared.refused)
        assert r.job_id in s.certified and r.job_id not in s.claims
        seen.add(paid_unaudited)
        if seen == {True, False}:
            break
    assert seen == {True, False}
