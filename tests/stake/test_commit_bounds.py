"""Verdict commitments the ledger keeps are bounded (D77): a committed job whose
committee is drawn, a key of the set it is drawn from, one per job and member, and a
quota of open rows per member that a flood fills for the flooder alone.

Real ledger, real signatures (aipg.testing.chainkit)."""

from __future__ import annotations

import hashlib

import pytest

from aipg.pouw import Certificate, VerdictCommit, job_id, make_commit
from aipg.stake.ledger import apply_block
from aipg.stake.proposal import Candidates, prepare_block
from aipg.stake.reveal import COMMITS_PER_JOB
from aipg.stake.tx import TxKind, make_tx
from aipg.stake.types import LedgerError
from aipg.testing.chainkit import (
    AIPG,
    CHAIN,
    TEST_PARAMS,
    TestChain,
    commit_jobs,
    make_job,
    make_work,
)
from aipg.testing.world import signed_verdict
from aipg.wire import sign

QUOTA = 6
PARAMS = TEST_PARAMS.replace(verdict_commit_blocks=2, escrow_period=6, max_open_commits=QUOTA)


def _chain() -> TestChain:
    c = TestChain(n_validators=6, params=PARAMS)
    for _ in range(3):
        c.next()
    return c


def _junk(key, jid: bytes, n: int) -> VerdictCommit:
    """A commitment on a made-up receipt of job ``jid``."""
    rid = hashlib.sha256(b"made up %d" % n).digest()
    return sign(VerdictCommit(rid, hashlib.sha256(rid).digest(), jid), key)


def _refused(c: TestChain, commit: VerdictCommit, match: str) -> None:
    with pytest.raises(LedgerError, match=match):
        apply_block(c.state, c.build(verdict_commits=[commit]))


def test_a_commitment_needs_a_committed_job_with_its_committee_drawn():
    c = _chain()
    spammer = c.validators[0]
    _refused(c, _junk(spammer, b"\x07" * 32, 0), "never committed")
    job = make_job(c, nonce=1)
    c.next(transactions=[make_tx(c.gateway, CHAIN, TxKind.COMMIT, 0, job_id=job_id(job))])
    _refused(c, _junk(spammer, job_id(job), 1), "not final yet")


def test_only_a_key_of_the_drawing_set_commits_and_a_few_times_per_job():
    c = _chain()
    user = c.users[2]
    c.next(transactions=[make_tx(user, CHAIN, TxKind.BOND, 0, amount=1_000 * AIPG)])
    job, _a, r, verdicts = make_work(c, c.users[1], nonce=2)
    # bonded (below a validator's stake), not in the set that draws the committee
    _refused(c, make_commit(user, signed_verdict(user, r)), "not in the validator set")
    member = c.keys[verdicts[0].signer]
    c.next(verdict_commits=[make_commit(member, verdicts[0])])
    # other receipts of the same job (reassignments, a twin): a few, then refused
    extra = [_junk(member, job_id(job), 3 + i) for i in range(COMMITS_PER_JOB - 1)]
    c.next(verdict_commits=extra)
    _refused(c, _junk(member, job_id(job), 9), "receipts of this job")


def test_a_flood_fills_the_flooders_quota_and_nobody_elses():
    c = _chain()
    jobs = [make_job(c, nonce=10 + i) for i in range(QUOTA + 4)]
    commit_jobs(c, jobs)
    spammer = c.validators[0]
    flood = [_junk(spammer, job_id(j), i) for i, j in enumerate(jobs)]
    job, a, r, verdicts = make_work(c, c.users[1], nonce=99)
    honest = [make_commit(c.keys[v.signer], v) for v in verdicts]
    proposer = c.keys[c.state.validators.proposer()]
    prepared = prepare_block(
        c.state,
        proposer,
        Candidates(verdict_commits=[*flood, *honest]),
        time_ms=c.state.time_ms + 1_000,
        last_commit=c.last_commit(),
    )
    kept = prepared.block.body.verdict_commits
    assert sum(1 for k in kept if k.signer == spammer.public_bytes) <= QUOTA
    assert all(h in kept for h in honest if h.signer != spammer.public_bytes)
    assert any("open commitments" in why for _, why in prepared.refused)
    s = c.commit(prepared.block)
    assert s.commit_counts[spammer.public_bytes] <= QUOTA
    assert len(s.verdict_commits) <= QUOTA + len(honest)
    # the honest members' votes certify; their rows go with the certificate
    for _ in range(PARAMS.verdict_commit_blocks):
        c.next()
    # (the flooder's own vote, if it sits on this committee, found its quota full)
    votes = tuple(v for v in verdicts if v.signer != spammer.public_bytes)
    s = c.next(certificates=[Certificate(job, a, r, votes)])
    assert r.job_id in s.certified
    counted = {v.signer for v in verdicts} - {spammer.public_bytes}
    assert not any(s.commit_counts.get(k) for k in counted)
    # the flood's rows go at the horizon, and with them the flooder's quota
    for _ in range(PARAMS.escrow_period + PARAMS.verdict_commit_blocks + 2):
        c.next()
    assert not c.state.verdict_commits and not c.state.commit_counts
    assert not c.state.commit_jobs


def test_a_commitment_naming_another_job_counts_for_nothing():
    """A member that commits on a receipt while naming another committed job (to dodge
    the one-per-job rule) holds a row no certificate of the receipt's job counts."""
    c = _chain()
    other = make_job(c, nonce=40)
    commit_jobs(c, [other])
    job, a, r, verdicts = make_work(c, c.users[1], nonce=41)
    liar, rest = verdicts[0], verdicts[1:]
    lie = sign(
        VerdictCommit(
            liar.receipt_id, make_commit(c.keys[liar.signer], liar).commitment, job_id(other)
        ),
        c.keys[liar.signer],
    )
    c.next(verdict_commits=[lie, *(make_commit(c.keys[v.signer], v) for v in rest)])
    for _ in range(PARAMS.verdict_commit_blocks):
        c.next()
    with pytest.raises(LedgerError, match="no commitment of this member"):
        apply_block(c.state, c.build(certificates=[Certificate(job, a, r, verdicts)]))
