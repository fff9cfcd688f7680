"""Blocks that cannot be halted: a proposer keeps only the candidates that apply.

Strangers fill a proposer's pools: two certificates for one job (a worker that signed
two receipts, or a reassigned job whose first worker finished late), a certificate the
verifiers accepted but the ledger refuses (its assignment too old), evidence already
punished. Each test offers such candidates, with a real ledger, and checks that every
block still applies and the chain goes on.
"""

from __future__ import annotations

import pytest

from aipg.pouw import (
    COMMITTEE_DELAY,
    Certificate,
    ConflictingVerdicts,
    EquivocationEvidence,
    VerdictReason,
    job_id,
    make_verdict,
    receipt_id,
)
from aipg.stake.driver import BlockContents
from aipg.stake.ledger import apply_block
from aipg.stake.proposal import Candidates, prepare_block
from aipg.stake.tx import TxKind, make_tx
from aipg.stake.types import LedgerError
from aipg.testing.chainkit import (
    CHAIN,
    GATEWAY,
    TestChain,
    ident,
    make_certificate,
    make_fraud,
    make_job,
    work_on,
)
from aipg.testing.drivers import DriverNet
from aipg.wire import sign
from aipg.wire.codec import record_digest


def _chain() -> TestChain:
    c = TestChain(n_validators=4)
    for _ in range(3):
        c.next()
    return c


def _prepare(c: TestChain, candidates: Candidates):
    return prepare_block(
        c.state,
        c.keys[c.state.validators.proposer()],
        candidates,
        time_ms=c.state.time_ms + 1_000,
        last_commit=c.last_commit(),
    )


def test_two_certificates_for_one_job_pay_it_once():
    c = _chain()
    first = make_certificate(c, ident(300), nonce=1)
    late = make_certificate(c, ident(301), nonce=1)  # the same job, another worker's receipt
    assert first.receipt.job_id == late.receipt.job_id and first != late
    prepared = _prepare(c, Candidates(certificates=[first, late]))
    assert prepared.block.body.certificates == (first,)
    assert [reason for _, reason in prepared.refused] == [
        "another one for this job is in the block"
    ]
    c.commit(prepared.block)  # the block applies
    again = _prepare(c, Candidates(certificates=[late]))  # next block: already certified
    assert again.block.body.certificates == ()
    assert "already certified" in again.refused[0][1]
    c.commit(again.block)


def test_a_certificate_the_ledger_refuses_is_left_out_with_its_reason():
    c = _chain()
    stale = make_certificate(c, ident(302), nonce=2)
    for _ in range(c.state.params.escrow_period + 1):
        c.next()
    fresh = make_certificate(c, ident(303), nonce=3)
    payment = make_tx(c.users[1], CHAIN, TxKind.TRANSFER, 0, amount=5, recipient=c.users[2].address)
    broke = make_tx(ident(904), CHAIN, TxKind.TRANSFER, 0, amount=5, recipient=c.users[2].address)
    prepared = _prepare(c, Candidates(transactions=[broke, payment], certificates=[stale, fresh]))
    body = prepared.block.body
    assert body.certificates == (fresh,) and body.transactions == (payment,)
    reasons = dict((id(item), reason) for item, reason in prepared.refused)
    assert "too old" in reasons[id(stale)]
    assert id(broke) in reasons
    apply_block(c.state, prepared.block)


def test_fraud_evidence_is_kept_once_per_job_and_never_after_it_was_punished():
    c = _chain()
    fraud = make_fraud(c, ident(305), nonce=4)
    twin = make_fraud(c, ident(306), nonce=4)  # the same job, another receipt convicted
    prepared = _prepare(c, Candidates(frauds=[fraud, twin]))
    assert len(prepared.block.body.frauds) == 1
    c.commit(prepared.block)
    after = _prepare(c, Candidates(frauds=[fraud]))
    assert after.block.body.frauds == () and "already punished" in after.refused[0][1]


async def test_validators_offered_duplicate_and_stale_work_forever_keep_finalizing(
    tmp_path, autojump_clock
):
    """Every proposer offers, at every height, two certificates for one job and one the
    ledger refuses as too old: blocks keep coming, and the job is paid exactly once."""
    world = TestChain(n_validators=4)
    offered: dict[str, object] = {}

    def contents(state):
        if state.height < 2:
            return BlockContents()
        world.state = state  # build the work on the chain the validators are deciding
        if not offered:
            offered["jobs"] = {n: make_job(world, nonce=n) for n in (7, 8)}
        jobs = offered["jobs"]
        pending = [job_id(j) for j in jobs.values() if job_id(j) not in state.commitments]
        if pending:  # first the jobs' commitments (D56), then their work
            n = state.account(GATEWAY.address.raw).nonce
            return BlockContents(
                transactions=[
                    make_tx(GATEWAY, CHAIN, TxKind.COMMIT, n + i, job_id=jid)
                    for i, jid in enumerate(pending)
                ]
            )
        if max(state.commitments[job_id(j)] for j in jobs.values()) + COMMITTEE_DELAY > (
            state.height
        ):
            return BlockContents()
        if "a" not in offered:
            offered["a"] = Certificate(*work_on(state, world.keys, jobs[7], ident(310)))
            offered["b"] = Certificate(*work_on(state, world.keys, jobs[7], ident(311)))
            offered["old"] = Certificate(*work_on(state, world.keys, jobs[8], ident(312)))
        stale_enough = (
            state.height > offered["old"].assignment.height + world.genesis.params.escrow_period
        )
        late = [offered["old"]] if stale_enough else []
        return BlockContents(certificates=[offered["a"], offered["b"], *late])

    net = DriverNet(world, tmp_path)
    net.build(contents=contents)
    target = 2 + 1 + COMMITTEE_DELAY + world.genesis.params.escrow_period + 4
    await net.run_until(target)
    job = offered["a"].receipt.job_id
    carried = [
        cert.receipt.job_id
        for h in range(1, target + 1)
        for cert in net.chains[0].store.finalized(h).block.body.certificates
    ]
    assert carried.count(job) == 1
    assert offered["old"].receipt.job_id not in carried  # offered only once too old


def test_an_equivocating_worker_is_slashed_once():
    c = _chain()
    worker = ident(320)
    bond = make_tx(
        c.users[3], CHAIN, TxKind.TRANSFER, 0, amount=20_000 * 10**8, recipient=worker.address
    )
    c.next(transactions=[bond])
    c.next(transactions=[make_tx(worker, CHAIN, TxKind.BOND, 0, amount=10_000 * 10**8)])
    cert = make_certificate(c, worker, nonce=9)
    twin = sign(cert.receipt.replace(output_hash=b"\x05" * 32), worker)
    a, b = sorted((cert.receipt, twin), key=receipt_id)
    evidence = EquivocationEvidence(a, b)
    before = c.state.bond(worker.public_bytes).stake
    prepared = _prepare(c, Candidates(equivocations=[evidence, evidence]))
    assert prepared.block.body.equivocations == (evidence,)
    s = c.commit(prepared.block)
    assert s.bond(worker.public_bytes).stake == before - before * s.params.fraud_slash_bps // 10_000
    again = _prepare(c, Candidates(equivocations=[evidence]))
    assert again.block.body.equivocations == () and "already punished" in again.refused[0][1]
    with pytest.raises(LedgerError, match="already punished"):
        apply_block(c.state, c.build(equivocations=[evidence]))


def test_a_validator_that_voted_both_ways_is_slashed_and_jailed_once():
    c = _chain()
    cert = make_certificate(c, ident(330), nonce=11)
    member = c.keys[cert.verdicts[0].signer]
    flipped = make_verdict(member, cert.receipt, VerdictReason.TOKEN_MISMATCH, recomputed=b"")
    a, b = sorted((cert.verdicts[0], flipped), key=record_digest)
    evidence = ConflictingVerdicts(a, b)
    before = c.state.bond(member.public_bytes).stake
    prepared = _prepare(c, Candidates(conflicting_verdicts=[evidence, evidence]))
    assert prepared.block.body.conflicting_verdicts == (evidence,)
    s = c.commit(prepared.block)
    bond = s.bond(member.public_bytes)
    assert bond.stake == before - before * s.params.double_sign_slash_bps // 10_000
    assert bond.jailed_until == s.height + s.params.jail_period
    again = _prepare(c, Candidates(conflicting_verdicts=[evidence]))
    assert again.block.body.conflicting_verdicts == () and "already punished" in again.refused[0][1]
