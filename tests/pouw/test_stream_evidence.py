"""StreamEvidence (D85): a signed chunk and a signed receipt of one worker and one
assignment prove junk exactly when the receipt's tokens are not the chunk's."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aipg.pouw import PouwError, StreamEvidence, TokenChunk, validate_stream_evidence
from aipg.testing.world import (
    OUTPUT_IDS,
    identity,
    signed_assignment,
    signed_job,
    signed_receipt,
)
from aipg.wire import encode, sign

GATEWAY, WORKER = identity("gateway"), identity("worker")
JOB = signed_job(GATEWAY)
RECEIPT = signed_receipt(WORKER, JOB, signed_assignment(GATEWAY, JOB, WORKER, height=5))


@settings(max_examples=60, deadline=None)
@given(
    start=st.integers(0, len(OUTPUT_IDS) + 2),
    tokens=st.lists(st.integers(0, 15), min_size=1, max_size=6).map(tuple),
)
def test_evidence_holds_exactly_when_the_chunk_contradicts_the_receipt(start, tokens):
    chunk = sign(TokenChunk(RECEIPT.job_id, RECEIPT.assignment_id, start, tokens), WORKER)
    ev = StreamEvidence(chunk, RECEIPT, OUTPUT_IDS)
    end, last = start + len(tokens), len(OUTPUT_IDS) - 1
    # The last output position aside: a forced error (D75) changes only that token.
    agrees = end <= len(OUTPUT_IDS) and all(
        OUTPUT_IDS[i] == t for i, t in enumerate(tokens, start) if i != last
    )
    if agrees:
        with pytest.raises(PouwError, match="agrees"):
            validate_stream_evidence(ev)
    else:
        validate_stream_evidence(ev)


def test_a_signed_chunk_costs_96_bytes_over_an_unsigned_one():
    plain = TokenChunk(RECEIPT.job_id, RECEIPT.assignment_id, 0, (7,))
    assert len(encode(sign(plain, WORKER))) - len(encode(plain)) <= 96 + 2


def test_a_stream_that_differs_only_in_the_last_token_is_no_evidence():
    """A forced receipt (D75) carries the changed last token, the stream the true one."""
    true = (*OUTPUT_IDS[:-1], (OUTPUT_IDS[-1] + 15) % 16)
    chunk = sign(TokenChunk(RECEIPT.job_id, RECEIPT.assignment_id, 0, true), WORKER)
    with pytest.raises(PouwError, match="agrees"):
        validate_stream_evidence(StreamEvidence(chunk, RECEIPT, OUTPUT_IDS))
    junk = (OUTPUT_IDS[0] + 1, *true[1:])
    chunk = sign(TokenChunk(RECEIPT.job_id, RECEIPT.assignment_id, 0, junk), WORKER)
    validate_stream_evidence(StreamEvidence(chunk, RECEIPT, OUTPUT_IDS))
