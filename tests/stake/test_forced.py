"""Forced errors on a real ledger (D75): the lazy validator loses stake, the diligent
ones don't; forged proofs, unforced jobs and unchanged receipts are refused; a worker
that skips its forced error and claims it anyway is reviewed and slashed.

Every record is really signed (aipg.testing.chainkit) and every VRF proof really proven;
blocks are applied by the real ``apply_block``.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aipg.pouw import (
    COMMITTEE_DELAY,
    FraudEvidence,
    PouwError,
    make_commit,
    receipt_id,
)
from aipg.pouw.forced import (
    ForcedError,
    forced_output,
    forced_proof,
    is_forced,
)
from aipg.pouw.records import output_hash_tokens
from aipg.stake.ledger import apply_block
from aipg.stake.proposal import Candidates, prepare_block
from aipg.stake.tx import TxKind, make_tx
from aipg.stake.types import BPS, LedgerError
from aipg.testing.chainkit import (
    AIPG,
    CHAIN,
    TEST_PARAMS,
    TestChain,
    apply_review,
    make_review,
    make_work,
)
from aipg.testing.world import OUTPUT_IDS, signed_verdict

VOCAB = 100
FORCED = TEST_PARAMS.replace(
    verdict_commit_blocks=2,
    escrow_period=8,
    review_period=6,
    unbonding_period=10,
    forced_error_bps=BPS,  # every LLM job is forced: the tests pick the case they need
    lazy_slash_bps=500,
)
WRONG = output_hash_tokens(forced_output(OUTPUT_IDS, VOCAB))


def _chain(params=FORCED) -> TestChain:
    c = TestChain(n_validators=7, params=params)
    for _ in range(3):
        c.next()
    return c


def _beacon(c: TestChain, jid: bytes) -> bytes:
    return c.state.beacon_at(c.state.commitments[jid] + COMMITTEE_DELAY)


def _forced_work(c: TestChain, worker, *, nonce: int, fee: int = 0, corrupt: bool = True):
    """A job done by ``worker`` whose receipt carries the forced change (or not, when
    ``corrupt`` is False: a worker that skipped it); its committee's votes, the first
    member lazy (valid), the rest diligent (invalid), committed on chain and the commit
    phase closed. Returns (job, assignment, receipt, verdicts, lazy key, proof)."""
    over = {"output_hash": WRONG} if corrupt else {}
    job, a, r, verdicts = make_work(c, worker, nonce=nonce, fee=fee, receipt_over=over)
    members = sorted(v.signer for v in verdicts)
    lazy = members[0]
    votes = tuple(signed_verdict(c.keys[k], r, k == lazy or not corrupt) for k in members)
    c.next(verdict_commits=[make_commit(c.keys[v.signer], v) for v in votes])
    for _ in range(FORCED.verdict_commit_blocks):
        c.next()
    proof = forced_proof(worker.seed, _beacon(c, job.id), a)
    return job, a, r, votes, lazy, proof


def _bonded_worker(c: TestChain):
    worker = c.users[1]
    n = c.state.account(worker.address.raw).nonce
    c.next(transactions=[make_tx(worker, CHAIN, TxKind.BOND, n, amount=1_000 * AIPG)])
    return worker


def test_a_forced_error_slashes_the_lazy_validator_and_pays_the_diligent_and_the_worker():
    c = _chain()
    worker, alice = _bonded_worker(c), c.users[0]
    fee = 5 * AIPG
    job, a, r, votes, lazy, proof = _forced_work(c, worker, nonce=1, fee=fee)
    c.next(transactions=[make_tx(alice, CHAIN, TxKind.ESCROW, 0, amount=fee, job_id=job.id)])
    diligent = [v.signer for v in votes if v.signer != lazy]
    addr = {k: c.keys[k].address for k in [lazy, *diligent]}
    before = {k: c.state.balance(addr[k]) for k in addr}
    bonds = {k: c.state.bond(k).stake for k in addr}
    worker_before = c.state.balance(worker.address)
    proposer = c.state.validators.proposer()
    fe = ForcedError(job, a, r, proof, OUTPUT_IDS, VOCAB, votes)
    s = c.next(forced_errors=[fe])
    # the worker is paid as for certified work: the fee for its tokens from the escrow
    charged = fee * r.output_tokens // job.llm.max_tokens
    assert s.balance(worker.address) >= worker_before + charged
    assert job.id in s.certified and not s.escrows
    # the diligent share the verdict pool; the lazy one gets nothing from it
    assert all(s.balance(addr[k]) > before[k] for k in diligent)
    assert s.balance(addr[lazy]) == before[lazy] or lazy == proposer
    # a review of the valid votes decides the slash
    lazy_votes = tuple(v for v in votes if v.signer == lazy)
    evidence = FraudEvidence(job, a, r, lazy_votes)
    assert len(s.forced_reviews) == 1
    s = apply_review(c, make_review(c, evidence, upheld=True))
    assert s.bond(lazy).stake == bonds[lazy] - bonds[lazy] * 500 // BPS
    assert s.bond(lazy).jailed_until > s.height
    assert all(s.bond(k).stake == bonds[k] for k in diligent)
    assert not s.forced_reviews
    assert s.bond(worker.public_bytes).stake == 1_000 * AIPG


def test_after_a_forced_error_no_fraud_evidence_is_taken():
    c = _chain()
    worker = c.users[1]
    job, a, r, votes, _lazy, proof = _forced_work(c, worker, nonce=2)
    fraud = FraudEvidence(job, a, r, tuple(v for v in votes if not v.valid))
    s = c.next(forced_errors=[ForcedError(job, a, r, proof, OUTPUT_IDS, VOCAB, votes)])
    with pytest.raises(LedgerError, match=r"already punished|no commitment"):
        apply_block(s, c.build(frauds=[fraud]))
    assert not s.convictions and b"fraud" + job.id in s.punished


def test_a_forced_error_voids_a_conviction_the_honest_members_opened():
    c = _chain()
    worker = c.users[1]
    job, a, r, votes, _lazy, proof = _forced_work(c, worker, nonce=3)
    fraud = FraudEvidence(job, a, r, tuple(v for v in votes if not v.valid))
    s = c.next(frauds=[fraud])
    assert receipt_id(r) in s.convictions
    s = c.next(forced_errors=[ForcedError(job, a, r, proof, OUTPUT_IDS, VOCAB, votes)])
    assert not s.convictions and job.id in s.certified
    assert len(s.forced_reviews) == 1  # the lazy vote is still reviewed


@pytest.mark.parametrize("case", ["forged proof", "another key", "unchanged", "early"])
def test_forced_errors_the_ledger_refuses(case):
    c = _chain()
    worker = c.users[1]
    if case == "early":
        job, a, r, verdicts = make_work(c, worker, nonce=4, receipt_over={"output_hash": WRONG})
        # a seated member has not committed yet (once all have, it is over: D108)
        c.next(verdict_commits=[make_commit(c.keys[v.signer], v) for v in verdicts[1:]])
        proof = forced_proof(worker.seed, _beacon(c, job.id), a)
        fe = ForcedError(job, a, r, proof, OUTPUT_IDS, VOCAB, verdicts[1:])
        with pytest.raises(LedgerError, match="commit phase has not closed"):
            apply_block(c.state, c.build(forced_errors=[fe]))
        return
    job, a, r, votes, _lazy, proof = _forced_work(c, worker, nonce=4)
    fe = ForcedError(job, a, r, proof, OUTPUT_IDS, VOCAB, votes)
    if case == "forged proof":
        fe = fe.replace(vrf_proof=proof[:48] + bytes(32))
        match = r"VRF|proof"
    elif case == "another key":
        fe = fe.replace(vrf_proof=forced_proof(c.users[2].seed, _beacon(c, job.id), a))
        match = "does not verify"
    else:
        fe = fe.replace(output_token_ids=(9, 10, 11, 13))
        match = "not the prescribed change"
    with pytest.raises(LedgerError, match=match):
        apply_block(c.state, c.build(forced_errors=[fe]))
    # an honest proposer leaves it out rather than proposing a block its ledger refuses
    prepared = prepare_block(
        c.state,
        c.keys[c.state.validators.proposer()],
        Candidates(forced_errors=[fe]),
        time_ms=c.state.time_ms + 1_000,
        last_commit=c.last_commit(),
    )
    assert not prepared.block.body.forced_errors and prepared.refused


def test_a_job_the_vrf_did_not_force_is_refused():
    c = _chain(FORCED.replace(forced_error_bps=1))
    worker = c.users[1]
    for nonce in range(5, 40):
        job, a, r, verdicts = make_work(c, worker, nonce=nonce, receipt_over={"output_hash": WRONG})
        proof = forced_proof(worker.seed, _beacon(c, job.id), a)
        if not is_forced(worker.public_bytes, proof, _beacon(c, job.id), a, 1):
            break
    c.next(verdict_commits=[make_commit(c.keys[v.signer], v) for v in verdicts])
    for _ in range(FORCED.verdict_commit_blocks):
        c.next()
    fe = ForcedError(job, a, r, proof, OUTPUT_IDS, VOCAB, verdicts)
    with pytest.raises(LedgerError, match="does not make this job a forced error"):
        apply_block(c.state, c.build(forced_errors=[fe]))


def test_a_worker_that_skips_its_forced_error_and_claims_it_is_reviewed_and_slashed():
    """The receipt is right (the worker skipped the change) and the whole committee,
    honest, votes valid; the worker then claims a forced error with made-up "true"
    tokens. The valid votes go to review; the reviewers find the receipt right and the
    worker loses ``fraud_slash_bps``; the honest members keep their stake."""
    c = _chain()
    worker = _bonded_worker(c)
    job, a, r, votes, _lazy, proof = _forced_work(c, worker, nonce=6, corrupt=False)
    made_up = (*OUTPUT_IDS[:-1], OUTPUT_IDS[-1] - 1)  # its "change" is the real output
    assert forced_output(made_up, VOCAB) == OUTPUT_IDS
    bonds = {v.signer: c.state.bond(v.signer).stake for v in votes}
    c.next(forced_errors=[ForcedError(job, a, r, proof, made_up, VOCAB, votes)])
    evidence = FraudEvidence(job, a, r, votes)
    s = apply_review(c, make_review(c, evidence, upheld=False))
    assert s.bond(worker.public_bytes).stake == 1_000 * AIPG // 2
    assert all(s.bond(k).stake == bonds[k] for k in bonds)


def test_a_verdict_the_worker_left_out_can_be_added_by_anyone_later():
    c = _chain()
    worker = c.users[1]
    job, a, r, votes, lazy, proof = _forced_work(c, worker, nonce=7)
    shielded = tuple(v for v in votes if v.signer != lazy)
    c.next(forced_errors=[ForcedError(job, a, r, proof, OUTPUT_IDS, VOCAB, shielded)])
    assert not c.state.forced_reviews
    again = ForcedError(job, a, r, proof, OUTPUT_IDS, VOCAB, votes)
    with pytest.raises(LedgerError, match="processed before"):
        apply_block(c.state, c.build(forced_errors=[again]))
    left_out = again.replace(verdicts=tuple(v for v in votes if v.signer == lazy))
    s = c.next(forced_errors=[left_out])
    assert len(s.forced_reviews) == 1  # the left-out vote, now reviewed


def test_a_forced_review_undecided_expires_with_nobody_slashed():
    c = _chain()
    job, a, r, votes, lazy, proof = _forced_work(c, c.users[1], nonce=8)
    bond = c.state.bond(lazy).stake
    c.next(forced_errors=[ForcedError(job, a, r, proof, OUTPUT_IDS, VOCAB, votes)])
    for _ in range(FORCED.review_period + 1):
        c.next()
    assert not c.state.forced_reviews and c.state.bond(lazy).stake == bond


def test_a_chain_without_forced_errors_refuses_them():
    c = _chain(FORCED.replace(forced_error_bps=0))
    job, a, r, verdicts = make_work(c, c.users[1], nonce=9)
    fe = ForcedError(job, a, r, bytes(80), OUTPUT_IDS, VOCAB, verdicts)
    with pytest.raises(LedgerError, match="no forced errors"):
        apply_block(c.state, c.build(forced_errors=[fe]))


@given(
    tokens=st.lists(st.integers(0, 49_999), min_size=1, max_size=64),
    vocab=st.integers(50_000, 200_000),
)
def test_the_prescribed_change_moves_only_the_last_token_within_the_vocabulary(tokens, vocab):
    out = forced_output(tokens, vocab)
    assert out[:-1] == tuple(tokens[:-1]) and out[-1] != tokens[-1] and 0 <= out[-1] < vocab


def test_the_change_needs_a_token_in_the_vocabulary():
    with pytest.raises(PouwError):
        forced_output((), VOCAB)
    with pytest.raises(PouwError):
        forced_output((VOCAB,), VOCAB)
