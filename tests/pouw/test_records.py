"""The pouw records: canonical round trips, domain-separated signatures, strict decoding."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aipg.models import SamplingParams
from aipg.pouw import Certificate, FraudEvidence, Job, Receipt, Verdict, job_id, records
from aipg.testing.world import World
from aipg.wire import WireError, decode, encode, is_signed_by_signer, require_signature

W = World()


def test_every_pouw_tag_is_in_its_range():
    types = [
        v
        for v in vars(records).values()
        if hasattr(v, "__wire_tag__") and v.__module__ == records.__name__
    ]
    assert len(types) >= 10
    assert all(300 <= t.__wire_tag__ <= 399 for t in types)


def test_certificate_round_trips_and_stays_signed():
    cert = W.certificate()
    back = decode(encode(cert), Certificate)
    assert back == cert
    require_signature(back.job)
    require_signature(back.assignment)
    require_signature(back.receipt)
    for v in back.verdicts:
        require_signature(v)


def test_a_signature_of_one_type_is_not_valid_as_another():
    # Same field layout, different type: the domain tag keeps the signature apart.
    cert = W.certificate()
    ev = FraudEvidence(cert.job, cert.assignment, cert.receipt, cert.verdicts)
    assert encode(ev) != encode(cert)
    r = cert.receipt
    forged = Verdict(
        receipt_id=r.job_id,
        job_id=r.model_id,
        valid=True,
        reason=0,
        detail="",
        challenge=r.signature,
        check_hash=r.params_hash,
        max_error_micro=0,
        signer=r.signer,
        signature=r.signature,
    )
    assert not is_signed_by_signer(forged)


@settings(max_examples=60, deadline=None)
@given(
    max_tokens=st.integers(1, 8192),
    temp=st.integers(0, 10_000),
    top_k=st.integers(0, 2**32 - 1),
    top_p=st.integers(1, 1000),
    seed=st.integers(0, 2**64 - 1),
    prompt=st.text(max_size=64),
    fee=st.integers(0, 2**63 - 1),
)
def test_job_round_trip(max_tokens, temp, top_k, top_p, seed, prompt, fee):
    params = SamplingParams(
        max_tokens=max_tokens, temperature_milli=temp, top_k=top_k, top_p_milli=top_p
    )
    job = W.llm_job(llm=params, seed=seed, prompt=prompt, fee=fee)
    back = decode(encode(job), Job)
    assert back == job and job_id(back) == job_id(job)
    require_signature(back)


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=400))
def test_decoding_garbage_raises_only_wire_error(data):
    for cls in (Receipt, Certificate, Verdict, Job):
        with contextlib.suppress(WireError):
            decode(data, cls)


@settings(max_examples=200, deadline=None)
@given(pos=st.integers(0, 10_000), byte=st.integers(0, 255))
def test_a_flipped_byte_is_rejected_or_breaks_a_signature(pos, byte):
    cert = W.certificate()
    raw = bytearray(encode(cert))
    pos %= len(raw)
    if raw[pos] == byte:
        return
    raw[pos] = byte
    try:
        back = decode(bytes(raw), Certificate)
    except WireError:
        return
    parts = [back.job, back.assignment, back.receipt, *back.verdicts]
    assert not all(is_signed_by_signer(p) for p in parts)


def test_out_of_range_fields_are_refused_on_construction():
    with pytest.raises(WireError, match="max_tokens"):
        SamplingParams(max_tokens=0)
    with pytest.raises(WireError, match="top_p_milli"):
        SamplingParams(max_tokens=1, top_p_milli=1001)
