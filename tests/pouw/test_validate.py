"""Cheap validation of certificates and fraud evidence: every rule, and what breaks it."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aipg.pouw import (
    Certificate,
    FraudEvidence,
    PouwError,
    VerdictReason,
    VoteCollector,
    job_id,
    make_verdict,
    validate_certificate,
    validate_fraud_evidence,
)
from aipg.testing.world import World, identity
from aipg.wire import sign

W = World()


def check(cert):
    validate_certificate(cert, W.stakes, W.beacon)


def test_a_good_certificate_validates():
    check(W.certificate())
    check(W.certificate(kind="diffusion"))


@pytest.mark.parametrize(
    ("mutate", "what"),
    [
        (lambda c: c.replace(job=c.job.replace(fee=1)), "job.signature"),
        (lambda c: c.replace(job=sign(c.job.replace(fee=1), W.gateway)), "assignment.job_id"),
        (lambda c: c.replace(assignment=sign(c.assignment, W.worker)), "assignment.signature"),
        (lambda c: c.replace(receipt=c.receipt.replace(work_units=99)), "receipt.signature"),
        (lambda c: c.replace(receipt=sign(c.receipt, W.gateway)), "receipt.signature"),
        (
            lambda c: c.replace(receipt=sign(c.receipt.replace(work_units=99), W.worker)),
            "receipt.work_units",
        ),
        (
            lambda c: c.replace(receipt=sign(c.receipt.replace(seed=8), W.worker)),
            "receipt.seed",
        ),
        (
            lambda c: c.replace(receipt=sign(c.receipt.replace(model_id=bytes(32)), W.worker)),
            "receipt.model_id",
        ),
        (
            lambda c: c.replace(
                receipt=sign(c.receipt.replace(output_tokens=17, work_units=20), W.worker)
            ),
            "receipt.output_tokens",
        ),
        (lambda c: c.replace(verdicts=c.verdicts[:1]), "quorum"),
        (lambda c: c.replace(verdicts=(*c.verdicts, c.verdicts[0])), "verdicts[5].signer"),
        (
            lambda c: c.replace(assignment=sign(c.assignment.replace(height=500), W.gateway)),
            "receipt.assignment_id",
        ),
    ],
)
def test_each_broken_rule_is_named(mutate, what):
    with pytest.raises(PouwError) as e:
        check(mutate(W.certificate()))
    assert e.value.what == what


def test_verdict_from_outside_the_committee_is_refused():
    big = World(n_validators=10)
    cert = big.certificate()
    committee = big.committee(cert.job, cert.assignment)
    outsider = next(v for v in big.validators if v.public_bytes not in committee)
    bad = make_verdict(outsider, cert.receipt, VerdictReason.OK, recomputed=b"x")
    with pytest.raises(PouwError, match="not a committee member"):
        validate_certificate(
            cert.replace(verdicts=(*cert.verdicts[:4], bad)), big.stakes, big.beacon
        )


def _abstain(validator, receipt):
    return make_verdict(validator, receipt, VerdictReason.UNAVAILABLE, recomputed=b"")


def test_an_abstention_seats_a_reserve_whose_vote_then_certifies():
    cert = W.certificate()
    c = W.committee(cert.job, cert.assignment)
    away, reserve = c.members[0], c.candidates[len(c.members)]
    votes = {k: W.verdict(k, cert.receipt) for k in c.members[1:]}
    votes[away] = _abstain(W.by_key[away], cert.receipt)
    votes[reserve] = W.verdict(reserve, cert.receipt)
    check(cert.replace(verdicts=tuple(v for _, v in sorted(votes.items()))))
    # Without the abstention the reserve has no seat: its vote is refused.
    del votes[away]
    with pytest.raises(PouwError, match="reserve whose seat no abstention opened"):
        check(cert.replace(verdicts=tuple(v for _, v in sorted(votes.items()))))


def test_abstentions_alone_neither_certify_nor_convict():
    cert = W.certificate()
    c = W.committee(cert.job, cert.assignment)
    abstentions = tuple(_abstain(W.by_key[k], cert.receipt) for k in sorted(c.candidates))
    with pytest.raises(PouwError, match="empty seats"):
        check(cert.replace(verdicts=abstentions))
    with pytest.raises(PouwError, match="empty seats"):
        validate_fraud_evidence(
            FraudEvidence(cert.job, cert.assignment, cert.receipt, abstentions),
            W.stakes,
            W.beacon,
        )
    # And the collector, fed every abstention, decides nothing.
    collector = VoteCollector(cert.job, cert.assignment, cert.receipt, c, W.stakes)
    assert all(collector.add(v) is None for v in abstentions)


def test_copied_verdict_under_another_key_is_refused():
    # A lazy member re-signs another member's verdict: its challenge is not its own.
    cert = W.certificate()
    lazy = W.by_key[cert.verdicts[1].signer]
    copied = sign(cert.verdicts[0], lazy)
    with pytest.raises(PouwError) as e:
        check(cert.replace(verdicts=(cert.verdicts[0], copied, *cert.verdicts[2:])))
    assert e.value.what == "verdicts[1].challenge"


def test_another_beacon_and_replayed_receipt():
    cert = W.certificate()
    with pytest.raises(PouwError, match="a beacon is 32 bytes"):
        validate_certificate(cert, W.stakes, b"")
    # another beacon draws another committee: the verdicts are no longer its members'
    with pytest.raises(PouwError, match=r"not a committee member|reserve"):
        validate_certificate(cert, W.stakes, bytes(32))
    other = W.llm_job(seed=99)
    a = W.assignment(other)
    with pytest.raises(PouwError) as e:
        check(Certificate(other, a, cert.receipt, cert.verdicts))
    assert e.value.what == "receipt.job_id"
    # Same worker, other job: the receipt binds its own job.


def test_vote_collector_decides_certificate_or_fraud():
    job = W.llm_job()
    a = W.assignment(job)
    r = W.receipt(job, a)
    committee = W.committee(job, a)
    members = committee.members
    stakes = W.stakes
    total = len(members)
    # Certificate: add valid votes (largest stake first) until >= 2/3 of the seats.
    col = VoteCollector(job, a, r, committee, stakes)
    for acc, k in enumerate(sorted(members, key=lambda k: -stakes[k]), start=1):
        out = col.add(W.verdict(k, r, True))
        assert (out is not None) == (3 * acc >= 2 * total)
        if out is not None:
            break
    assert isinstance(out, Certificate)
    check(out)
    # Fraud: invalid votes until > 1/3.
    col = VoteCollector(job, a, r, committee, stakes)
    for k in sorted(members, key=lambda k: -stakes[k]):
        out = col.add(W.verdict(k, r, False))
        if out is not None:
            break
    assert isinstance(out, FraudEvidence)
    validate_fraud_evidence(out, W.stakes, W.beacon)
    with pytest.raises(PouwError, match="quorum"):
        validate_fraud_evidence(FraudEvidence(job, a, r, ()), W.stakes, W.beacon)


@settings(max_examples=40, deadline=None)
@given(votes=st.lists(st.booleans(), min_size=5, max_size=5), height=st.integers(2, 99))
def test_collector_and_validator_agree(votes, height):
    job = W.llm_job(seed=height)
    a = W.assignment(job, height=height)
    r = W.receipt(job, a)
    committee = W.committee(job, a)
    members = committee.members
    col = VoteCollector(job, a, r, committee, W.stakes)
    out = None
    for k, v in zip(members, votes, strict=False):
        out = col.add(W.verdict(k, r, v)) or out
    if isinstance(out, Certificate):
        check(out)
    elif isinstance(out, FraudEvidence):
        validate_fraud_evidence(out, W.stakes, W.beacon)
    else:
        t_valid = sum(W.stakes[k] for k, v in zip(members, votes, strict=False) if v)
        total = sum(W.stakes[k] for k in members)
        assert 3 * t_valid < 2 * total
    assert job_id(job) == r.job_id
    assert identity("worker").public_bytes == r.signer
