"""Bulk signature checks: the verified cache, block pre-verification, and that a bad
signature still fails the block with its precise rule."""

from concurrent.futures import ThreadPoolExecutor

import pytest

from aipg.stake.ledger import apply_block
from aipg.stake.sigbatch import block_signatures, preverify_block
from aipg.stake.types import LedgerError
from aipg.testing.chainkit import TestChain, ident, make_certificate
from aipg.wire.keys import forget_verified, verify_signature, verify_signatures


def test_verify_signatures_caches_only_successes():
    key = ident(7)
    good = (key.public_bytes, key.sign(b"hello"), b"hello")
    bad = (key.public_bytes, key.sign(b"hello"), b"hullo")
    forget_verified()
    assert verify_signatures([good, bad, good]) == [True, False, True]
    with ThreadPoolExecutor(2) as pool:
        assert verify_signatures([bad, good], pool.map) == [False, True]
    assert verify_signature(*good) and not verify_signature(*bad)
    assert not verify_signature(key.public_bytes[:31], good[1], good[2])


def test_preverified_block_applies_and_bad_signatures_still_fail():
    c = TestChain(n_validators=5)
    for _ in range(3):
        c.next()
    certs = [make_certificate(c, ident(300 + i), nonce=i) for i in range(3)]
    block = c.build(certificates=certs)
    assert len(block_signatures(block)) == 5 + 3 * (3 + len(certs[0].verdicts))
    forget_verified()
    with ThreadPoolExecutor(2) as pool:
        assert preverify_block(block, pool.map) == 0
    assert len(apply_block(c.state, block).certified) == 3
    v = certs[1].verdicts[0]
    forged = certs[1].replace(verdicts=(v.replace(check_hash=bytes(32)), *certs[1].verdicts[1:]))
    bad_block = c.build(certificates=[certs[0], forged])
    assert preverify_block(bad_block) == 1
    with pytest.raises(LedgerError, match=r"certificate 1: verdicts\[0\]\.signature"):
        apply_block(c.state, bad_block)
