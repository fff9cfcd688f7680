"""Accountable validators on a real ledger: verdicts committed before they are revealed,
rewards for the verdicts that agree with the outcome, an overturned worker paid, and
withholding challenges with a deadline.

Every record is really signed (aipg.testing.chainkit); blocks are applied by the real
``apply_block``.
"""

from __future__ import annotations

import pytest

from aipg.models import DiffusionParams
from aipg.pouw import (
    COMMITTEE_LOOKAHEAD,
    Certificate,
    VerdictReason,
    committee_for,
    job_id,
    make_commit,
    make_verdict,
    receipt_id,
)
from aipg.pouw.commitment import chain_head
from aipg.stake.challenge import (
    ChallengeAnswer,
    WithholdingChallenge,
    challenge_key,
    raw_latent_digest,
)
from aipg.stake.ledger import apply_block
from aipg.stake.tokenomics import split_reward
from aipg.stake.tx import TxKind, make_tx
from aipg.stake.types import LedgerError
from aipg.testing.chainkit import (
    AIPG,
    CHAIN,
    GATEWAY,
    TEST_PARAMS,
    TestChain,
    commit_job,
    make_certificate,
    make_fraud,
    make_review,
    make_work,
)
from aipg.testing.world import signed_assignment, signed_job, signed_receipt, signed_verdict
from aipg.wire import sign

REVEAL = TEST_PARAMS.replace(verdict_commit_blocks=2, escrow_period=6, review_period=3)


def _chain(params=REVEAL, n_validators: int = 6) -> TestChain:
    c = TestChain(n_validators=n_validators, params=params)
    for _ in range(3):
        c.next()
    return c


def _commits(c: TestChain, verdicts):
    return [make_commit(c.keys[v.signer], v) for v in verdicts]


# --- commit, then reveal ----------------------------------------------------------------


def test_a_certificate_counts_only_votes_committed_in_time():
    c = _chain()
    worker = c.users[1]
    job, a, r, verdicts = make_work(c, worker, nonce=1)
    cert = Certificate(job, a, r, verdicts)
    with pytest.raises(LedgerError, match="no commitment of this member was carried in time"):
        apply_block(c.state, c.build(certificates=[cert]))
    c.next(verdict_commits=_commits(c, verdicts))
    s = c.next(certificates=[cert])
    assert r.job_id in s.certified


def test_a_commitment_after_the_commit_phase_is_refused():
    c = _chain()
    _job, _a, _r, verdicts = make_work(c, c.users[1], nonce=2)
    first, *rest = _commits(c, verdicts)
    c.next(verdict_commits=[first])
    for _ in range(REVEAL.verdict_commit_blocks):
        c.next()
    with pytest.raises(LedgerError, match="commit phase closed"):
        apply_block(c.state, c.build(verdict_commits=rest[:1]))


def test_a_copier_that_reveals_without_committing_counts_for_nothing_and_earns_nothing():
    """The committee's members commit and reveal; one member copies a revealed vote
    (signed by itself, with its own challenge and salt) without having committed: a
    certificate that counts it is refused, and the one without it pays it nothing."""
    c = _chain()
    job, a, r, verdicts = make_work(c, c.users[1], nonce=3)
    copier, honest = verdicts[0], verdicts[1:]
    c.next(verdict_commits=_commits(c, honest))
    copied = make_verdict(c.keys[copier.signer], r, VerdictReason.OK, recomputed=b"copied")
    with pytest.raises(LedgerError, match="carried in time"):
        apply_block(c.state, c.build(certificates=[Certificate(job, a, r, verdicts)]))
    with pytest.raises(LedgerError, match="carried in time"):
        apply_block(c.state, c.build(certificates=[Certificate(job, a, r, (copied, *honest))]))
    balances = {k: c.state.balance(_addr(k)) for k in (v.signer for v in verdicts)}
    proposer = c.state.validators.proposer()
    s = c.next(certificates=[Certificate(job, a, r, tuple(honest))])
    gained = {k: s.balance(_addr(k)) - balances[k] for k in balances}
    assert gained[copier.signer] == 0 or copier.signer == proposer
    assert all(gained[v.signer] > 0 for v in honest)


def test_a_reveal_that_contradicts_its_commitment_is_refused():
    c = _chain()
    job, a, r, verdicts = make_work(c, c.users[1], nonce=4)
    c.next(verdict_commits=_commits(c, verdicts))
    turned = signed_verdict(c.keys[verdicts[0].signer], r, valid=False)
    fraud_like = Certificate(job, a, r, (turned, *verdicts[1:]))
    with pytest.raises(LedgerError, match="does not match its commitment"):
        apply_block(c.state, c.build(certificates=[fraud_like]))


def test_only_bonded_keys_commit_and_only_once():
    c = _chain()
    _job, _a, r, verdicts = make_work(c, c.users[1], nonce=5)
    stranger = make_commit(c.users[2], signed_verdict(c.users[2], r))
    with pytest.raises(LedgerError, match="only a bonded key"):
        apply_block(c.state, c.build(verdict_commits=[stranger]))
    once = _commits(c, verdicts[:1])
    c.next(verdict_commits=once)
    with pytest.raises(LedgerError, match="already committed"):
        apply_block(c.state, c.build(verdict_commits=once))


# --- rewards ------------------------------------------------------------------------------


def _addr(key: bytes) -> bytes:
    from aipg.wire import Address

    return Address.from_public_key(key).raw


def test_validator_rewards_follow_agreeing_verdicts_not_voting_power():
    """Five of eight validators sit on the committee; one of them votes invalid (the
    other four still certify). The verdict pool goes to the four agreeing members in
    equal parts; the dissenter and the validators off the committee get nothing but a
    proposer's bonus."""
    c = _chain(TEST_PARAMS.replace(committee_size=5), n_validators=8)
    job, a, r, verdicts = make_work(c, c.users[1], nonce=6)
    dissent = signed_verdict(c.keys[verdicts[0].signer], r, valid=False)
    cert = Certificate(job, a, r, (dissent, *verdicts[1:]))
    keys = [v.public_bytes for v in c.validators]
    before = {k: c.state.balance(_addr(k)) for k in keys}
    pool_before = c.state.verdict_pool
    block = c.build(certificates=[cert])
    proposer = block.header.proposer
    s = c.commit(block)
    gained = {k: s.balance(_addr(k)) - before[k] for k in keys}
    split_validators = 500 * AIPG - 500 * AIPG * 500 // 10_000
    split_validators -= split_validators * s.params.work_share_bps // 10_000
    bonus = split_validators * s.params.proposer_bonus_bps // 10_000
    gained[proposer] -= bonus
    agreeing = {v.signer for v in verdicts[1:]}
    shares = {gained[k] for k in agreeing}
    assert len(shares) == 1 and shares.pop() > 0  # equal work checked, equal pay
    assert all(gained[k] == 0 for k in keys if k not in agreeing)
    paid = sum(gained[k] for k in agreeing)
    assert paid + s.verdict_pool == pool_before + split_validators - bonus  # dust stays
    assert s.total_holdings() == s.expected_supply()


def test_an_overturned_worker_is_paid_for_the_job():
    """A paid job falsely convicted: its escrow stays locked during the review; the
    review overturns the conviction and the worker is paid the fee for its tokens and
    the block's work pool, as a certified job would have been."""
    c = _chain(TEST_PARAMS.replace(escrow_period=8), n_validators=8)
    worker, alice = c.users[1], c.users[0]
    c.next(transactions=[make_tx(worker, CHAIN, TxKind.BOND, 0, amount=1_000 * AIPG)])
    honest = make_certificate(c, worker, nonce=2, fee=5 * AIPG)
    accusers = sorted(v.signer for v in honest.verdicts)[:2]
    false = make_fraud(c, worker, nonce=2, fee=5 * AIPG).replace(
        verdicts=tuple(signed_verdict(c.keys[k], honest.receipt, False) for k in accusers)
    )
    escrow = make_tx(alice, CHAIN, TxKind.ESCROW, 0, amount=5 * AIPG, job_id=honest.receipt.job_id)
    c.next(transactions=[escrow])
    c.next(frauds=[false])
    assert c.state.escrows  # locked while under review
    worker_before = c.state.balance(worker.address)
    alice_before = c.state.balance(alice.address)
    pool = c.state.work_pool
    s = c.next(reviews=[make_review(c, false, upheld=False)])
    fee = 5 * AIPG * honest.receipt.output_tokens // 16
    share = s.paid[honest.receipt.job_id] - fee
    assert share >= pool  # the whole pool (this job is the block's only work)
    assert s.balance(worker.address) == worker_before + fee + share
    assert s.balance(alice.address) == alice_before + 5 * AIPG - fee
    assert not s.escrows and honest.receipt.job_id in s.certified
    with pytest.raises(LedgerError, match="already certified"):
        apply_block(s, c.build(certificates=[honest]))


def test_an_expired_conviction_returns_a_paid_jobs_escrow_to_its_client():
    c = _chain(TEST_PARAMS.replace(escrow_period=8), n_validators=8)
    worker, alice = c.users[1], c.users[0]
    c.next(transactions=[make_tx(worker, CHAIN, TxKind.BOND, 0, amount=1_000 * AIPG)])
    fraud = make_fraud(c, worker, nonce=3, fee=5 * AIPG)
    escrow = make_tx(alice, CHAIN, TxKind.ESCROW, 0, amount=5 * AIPG, job_id=fraud.receipt.job_id)
    c.next(transactions=[escrow])
    c.next(frauds=[fraud])
    alice_before = c.state.balance(alice.address)
    while c.state.convictions:  # nobody reviews it
        c.next()
    assert not c.state.escrows
    assert c.state.balance(alice.address) == alice_before + 5 * AIPG
    assert c.state.bond(worker.public_bytes).stake == 1_000 * AIPG


# --- withholding challenges -----------------------------------------------------------------

CHALLENGE = TEST_PARAMS.replace(
    challenge_period=3, challenge_fee=2 * AIPG, withholding_slash_bps=100, escrow_period=8
)
SHAPE = (1, 4, 2, 2)
LATENT_BYTES = 4 * 16


def _latent(i: int) -> bytes:
    return bytes([i % 251]) * LATENT_BYTES


def _diffusion_work(c: TestChain, worker, steps: int = 4):
    job = signed_job(
        GATEWAY,
        model_id=b"d" * 32,
        llm=None,
        diffusion=DiffusionParams(steps=steps, width=64, height=64),
        created_ms=c.state.time_ms,
        deadline_ms=c.state.time_ms + 60_000,
    )
    seed = commit_job(c, GATEWAY, job_id(job))  # D56: drawn two blocks after its commitment
    height = max(COMMITTEE_LOOKAHEAD, c.state.height)
    a = signed_assignment(GATEWAY, job, worker, height=height, assigned_ms=job.created_ms)
    digests = tuple(raw_latent_digest(SHAPE, _latent(i)) for i in range(steps + 1))
    r = signed_receipt(worker, job, a, commitment=chain_head(digests))
    committee = committee_for(
        job,
        a,
        c.state.validator_snapshot_at(seed),
        c.state.beacon_at(seed),
        rules=c.state.params.committee_rules(),
    )
    return job, a, r, digests, committee


def _challenge(c, member, job, a, r, steps=(1, 2)):
    return sign(WithholdingChallenge(job, a, r, tuple(steps)), c.keys[member])


def _answer(c, worker, r, member, digests, steps=(1, 2), latents=None):
    latents = latents or tuple(_latent(i) for i in steps)
    answer = ChallengeAnswer(receipt_id(r), member, tuple(steps), SHAPE, digests, latents)
    return sign(answer, worker)


def _funded(c: TestChain, member: bytes):
    user = c.users[3]
    nonce = c.state.account(user.address.raw).nonce
    from aipg.wire import Address

    fund = make_tx(
        user,
        CHAIN,
        TxKind.TRANSFER,
        nonce,
        amount=10 * AIPG,
        recipient=Address.from_public_key(member),
    )
    c.next(transactions=[fund])


def test_an_answered_challenge_pays_its_fee_to_the_worker():
    c = _chain(CHALLENGE)
    worker = c.users[1]
    c.next(transactions=[make_tx(worker, CHAIN, TxKind.BOND, 0, amount=1_000 * AIPG)])
    job, a, r, digests, committee = _diffusion_work(c, worker)
    member = committee.members[0]
    _funded(c, member)
    member_before = c.state.balance(_addr(member))
    s = c.next(challenges=[_challenge(c, member, job, a, r)])
    assert challenge_key(receipt_id(r), member) in s.challenges
    assert s.balance(_addr(member)) <= member_before - 2 * AIPG + 500 * AIPG  # deposited
    with pytest.raises(LedgerError, match="does not match its digest"):
        bad = _answer(c, worker, r, member, digests, latents=(_latent(1), _latent(9)))
        apply_block(s, c.build(answers=[bad]))
    worker_before = s.balance(worker.address)
    s = c.next(answers=[_answer(c, worker, r, member, digests)])
    assert not s.challenges
    assert s.balance(worker.address) == worker_before + 2 * AIPG
    for _ in range(CHALLENGE.challenge_period + 1):
        s = c.next()
    assert s.bond(worker.public_bytes).stake == 1_000 * AIPG
    with pytest.raises(LedgerError, match="already challenged"):
        apply_block(s, c.build(challenges=[_challenge(c, member, job, a, r)]))


def test_an_unanswered_challenge_slashes_a_little_and_refunds_the_challenger():
    c = _chain(CHALLENGE)
    worker = c.users[1]
    c.next(transactions=[make_tx(worker, CHAIN, TxKind.BOND, 0, amount=1_000 * AIPG)])
    job, a, r, digests, committee = _diffusion_work(c, worker)
    member = committee.members[0]
    _funded(c, member)
    c.next(challenges=[_challenge(c, member, job, a, r)])
    burned = c.state.burned
    for _ in range(CHALLENGE.challenge_period):
        c.next()
    assert c.state.challenges  # the deadline block may still carry the answer
    late = c.state
    s = c.next()
    assert not s.challenges
    assert s.bond(worker.public_bytes).stake == 1_000 * AIPG * 99 // 100  # 1 %, not the bond
    # The slash is burned, beside each block's unpaid work pool (D61: no work, all burned).
    pool_burn = split_reward(s.params, s.emission.block_reward(s.height)).work
    assert s.burned - late.burned == 10 * AIPG + pool_burn
    assert burned <= late.burned
    assert s.total_holdings() == s.expected_supply()
    assert late.height + 1 == s.height
    with pytest.raises(LedgerError, match="no open challenge"):
        apply_block(s, c.build(answers=[_answer(c, worker, r, member, digests)]))


def test_only_a_committee_member_may_challenge_and_only_a_diffusion_receipt():
    c = _chain(CHALLENGE, n_validators=10)
    worker = c.users[1]
    job, a, r, _digests, committee = _diffusion_work(c, worker)
    outsider = next(v.public_bytes for v in c.validators if v.public_bytes not in committee)
    _funded(c, outsider)
    with pytest.raises(LedgerError, match="not a candidate of the job's committee"):
        apply_block(c.state, c.build(challenges=[_challenge(c, outsider, job, a, r)]))
    ljob, la, lr, _ = make_work(c, worker, nonce=9)
    member = committee.members[0]
    with pytest.raises(LedgerError, match="only a diffusion receipt"):
        apply_block(c.state, c.build(challenges=[_challenge(c, member, ljob, la, lr)]))


def test_commitments_challenges_and_the_verdict_pool_survive_the_store(tmp_path):
    """A chain whose state holds commitments, a commit window, an open challenge (its
    deposit) and a verdict pool reopens from its store with the same state hash."""
    from aipg.stake.chain import Chain
    from aipg.stake.state import state_hash

    c = _chain(CHALLENGE.replace(verdict_commit_blocks=2))
    worker = c.users[1]
    c.next(transactions=[make_tx(worker, CHAIN, TxKind.BOND, 0, amount=1_000 * AIPG)])
    job, a, r, verdicts = make_work(c, worker, nonce=11)
    c.next(verdict_commits=_commits(c, verdicts))
    c.next(certificates=[Certificate(job, a, r, verdicts)])
    assert not c.state.verdict_commits  # the certificate counted them: they are gone
    *_, pending = make_work(c, worker, nonce=12)
    c.next(verdict_commits=_commits(c, pending))  # a receipt still being decided
    djob, da, dr, _, committee = _diffusion_work(c, worker)
    _funded(c, committee.members[0])
    c.next(challenges=[_challenge(c, committee.members[0], djob, da, dr)])
    s = c.state
    assert s.verdict_commits and s.commit_windows and s.challenges
    chain = Chain.open(tmp_path / "chain.sqlite", c.genesis)
    for block, commit in zip(c.blocks, c.commits, strict=True):
        chain.finalize(block, commit)
    chain.close()
    reopened = Chain.open(tmp_path / "chain.sqlite", c.genesis)
    try:
        assert state_hash(reopened.state) == state_hash(s)
        assert reopened.state.verdict_pool == s.verdict_pool
        assert reopened.state.challenges == s.challenges
    finally:
        reopened.close()


def test_an_audited_claim_whose_latents_stay_withheld_is_slashed_as_fraud():
    """D82: the claim is drawn for audit (a new worker: always), a member's challenge goes
    unanswered: the worker loses what a conviction takes, not 1 %, and its claims go."""
    c = _chain(CHALLENGE)
    worker = c.users[1]
    c.next(transactions=[make_tx(worker, CHAIN, TxKind.BOND, 0, amount=1_000 * AIPG)])
    job, a, r, _, committee = _diffusion_work(c, worker)
    c.next(certificates=[Certificate(job, a, r, ())])  # the claim
    c.next()
    s = c.next()
    assert s.claims[r.job_id].audited  # its rate is 100 %
    member = committee.members[0]
    _funded(c, member)
    c.next(challenges=[_challenge(c, member, job, a, r)])
    for _ in range(CHALLENGE.challenge_period + 1):
        s = c.next()
    assert not s.challenges
    assert s.bond(worker.public_bytes).stake == 1_000 * AIPG * (10_000 - 5_000) // 10_000
    assert r.job_id not in s.claims and s.audit_records[worker.public_bytes].score == 0
