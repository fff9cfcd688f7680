"""Forced errors' pure parts (D75): the VRF decides, unforgeably and at the chain's
rate, and the gateway's check of a forced result refuses what does not hold."""

from __future__ import annotations

import hashlib

import pytest

from aipg.pouw import PouwError
from aipg.pouw.forced import check_forced_result, forced_output, forced_proof, is_forced
from aipg.pouw.records import output_hash_tokens
from aipg.testing.world import OUTPUT_IDS, World

VOCAB = 64
BETA = hashlib.sha256(b"seed beacon").digest()


def _forced_receipt(w: World, job, a):
    return w.receipt(job, a, output_hash=output_hash_tokens(forced_output(OUTPUT_IDS, VOCAB)))


def test_a_forced_result_passes_the_gateways_check():
    w = World()
    job = w.llm_job()
    a = w.assignment(job)
    proof = forced_proof(w.worker.seed, BETA, a)
    check_forced_result(_forced_receipt(w, job, a), a, BETA, proof, OUTPUT_IDS, VOCAB, 10_000)


@pytest.mark.parametrize("case", ["other key", "other beacon", "not forced", "other tokens"])
def test_the_gateway_refuses_a_forced_result_that_does_not_hold(case):
    w = World()
    job = w.llm_job()
    a = w.assignment(job)
    proof, beta, bps, tokens = forced_proof(w.worker.seed, BETA, a), BETA, 10_000, OUTPUT_IDS
    if case == "other key":
        proof = forced_proof(w.gateway.seed, BETA, a)
    elif case == "other beacon":
        beta = hashlib.sha256(b"another").digest()
    elif case == "not forced":
        bps = 0
    else:
        tokens = (*OUTPUT_IDS[:-1], OUTPUT_IDS[-1] + 2)
    with pytest.raises(PouwError):
        check_forced_result(_forced_receipt(w, job, a), a, beta, proof, tokens, VOCAB, bps)


def test_the_vrf_forces_jobs_at_the_chains_rate():
    """400 assignments at 25 %: the share forced is within five standard deviations."""
    w = World()
    job = w.llm_job()
    forced = 0
    for height in range(400):
        a = w.assignment(job, height=height)
        forced += is_forced(
            w.worker.public_bytes, forced_proof(w.worker.seed, BETA, a), BETA, a, 2_500
        )
    assert 100 - 5 * 8.7 < forced < 100 + 5 * 8.7
