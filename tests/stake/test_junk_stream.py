"""D85 in the ledger: a streamed chunk the worker signed that its own signed receipt
contradicts is evidence a block carries; the worker is slashed like a convicted one,
once per assignment, and that receipt is never paid (its certificate is refused)."""

from __future__ import annotations

import pytest

from aipg.pouw import Certificate, StreamEvidence, TokenChunk
from aipg.stake.ledger import apply_block
from aipg.stake.proposal import Candidates, prepare_block
from aipg.stake.tx import TxKind, make_tx
from aipg.stake.types import BPS, LedgerError
from aipg.testing.chainkit import AIPG, CHAIN, ECONOMY_PARAMS, TEST_COST, TestChain, make_work
from aipg.testing.world import OUTPUT_IDS
from aipg.wire import sign


def _chain():
    c = TestChain(n_validators=5, economy=True, params=ECONOMY_PARAMS)
    c.next(transactions=c.economy_txs(TEST_COST))
    c.next()
    c.next()
    worker = c.users[2]
    c.next(transactions=[make_tx(worker, CHAIN, TxKind.BOND, 0, amount=2_000 * AIPG)])
    return c, worker


def _evidence(receipt, signer, start=2, tokens=(1, 2), ids=OUTPUT_IDS):
    chunk = sign(TokenChunk(receipt.job_id, receipt.assignment_id, start, tokens), signer)
    return StreamEvidence(chunk, receipt, tuple(ids))


def test_a_stream_its_receipt_contradicts_slashes_the_worker_and_the_receipt_is_not_paid():
    c, worker = _chain()
    job, a, receipt, verdicts = make_work(c, worker, nonce=1, output_tokens=len(OUTPUT_IDS))
    ev = _evidence(receipt, worker)  # it streamed (1, 2) as tokens 2-3; it signed (11, 12)
    stake = c.state.bond(worker.public_bytes).stake
    burned = c.state.burned
    s = c.next(junk_streams=[ev])
    cut = stake * ECONOMY_PARAMS.fraud_slash_bps // BPS
    assert s.bond(worker.public_bytes).stake == stake - cut
    assert s.burned >= burned + cut
    # once per assignment
    with pytest.raises(LedgerError, match="already punished"):
        apply_block(c.state, c.build(junk_streams=[ev]))
    # the honest-looking receipt it signed is not paid, whatever its committee says
    cert = Certificate(job, a, receipt, verdicts)
    with pytest.raises(LedgerError, match="contradicts"):
        apply_block(c.state, c.build(certificates=[cert]))
    prepared = prepare_block(
        c.state,
        c.keys[c.state.validators.proposer()],
        Candidates(certificates=[cert]),
        time_ms=c.state.time_ms + 1_000,
        last_commit=c.last_commit(),
    )
    assert not prepared.block.body.certificates
    assert any("contradicts" in why for _, why in prepared.refused)


def test_evidence_that_proves_nothing_is_refused():
    c, worker = _chain()
    _, _, receipt, _ = make_work(c, worker, nonce=2, output_tokens=len(OUTPUT_IDS))
    other = c.users[1]
    cases = {
        "agrees": _evidence(receipt, worker, start=2, tokens=OUTPUT_IDS[2:4]),
        "different signers": _evidence(receipt, other),
        "not the receipt's output tokens": _evidence(receipt, worker, ids=(1, 2, 3, 4)),
        "empty chunk": _evidence(receipt, worker, tokens=()),
    }
    for why, ev in cases.items():
        with pytest.raises(LedgerError, match=why):
            apply_block(c.state, c.build(junk_streams=[ev]))
    forged = _evidence(receipt, worker)
    forged = StreamEvidence(
        forged.chunk.replace(tokens=(3, 4)), forged.receipt, forged.output_token_ids
    )
    with pytest.raises(LedgerError, match="signature"):
        apply_block(c.state, c.build(junk_streams=[forged]))
    # a chunk past the receipt's last token contradicts it too (the stream said more)
    beyond = _evidence(receipt, worker, start=len(OUTPUT_IDS), tokens=(5,))
    c.next(junk_streams=[beyond])


def test_a_junk_stream_drops_its_waiting_claim_and_refuses_a_later_one():
    """With audit sampling (D79) a receipt is claimed before anything checks it: a claim
    whose stream is proved junk is dropped unpaid, and none of that receipt is taken."""
    c, worker = _chain()
    job, a, receipt, _ = make_work(c, worker, nonce=1, output_tokens=len(OUTPUT_IDS))
    claim = Certificate(job, a, receipt, ())
    s = c.next(certificates=[claim])
    assert job.id in s.claims
    s = c.next(junk_streams=[_evidence(receipt, worker)])
    assert job.id not in s.claims and job.id not in s.certified
    for _ in range(3):  # past the claim's draw: nothing pays it
        s = c.next()
    assert job.id not in s.certified
    with pytest.raises(LedgerError, match="contradicts"):
        apply_block(c.state, c.build(certificates=[claim]))
