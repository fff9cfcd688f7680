"""Checking a block's signatures in bulk.

A block with a thousand certificates of five verdicts holds some 8,000 Ed25519 signatures, and checking
them is most of the cost of validating it. Ed25519 in ``cryptography`` holds the GIL, so
:func:`preverify_block` gathers every signature of the block and checks them through a
caller-supplied ``map`` (a process pool's, to use every core); the successes land in
:mod:`aipg.wire.keys`' verified-signature cache, and the normal, rule-by-rule validation
that follows finds them there. Failures are simply not cached: the rule that checks that
signature then fails with its usual, precise error.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from aipg.pouw import Certificate, FraudEvidence
from aipg.wire import signing_bytes
from aipg.wire.keys import verify_signatures

from .block import Block, FinalizedBlock

Triple = tuple[bytes, bytes, bytes]


def _signed(rec) -> Triple:
    return (rec.signer, rec.signature, signing_bytes(rec))


def _work_signatures(work: Certificate | FraudEvidence) -> Iterator[Triple]:
    """What a block checks of certified work (verdict challenges are checked when the
    verdicts are collected from gossip, not again in blocks: see the ledger)."""
    yield _signed(work.job)
    yield _signed(work.assignment)
    yield _signed(work.receipt)
    for v in work.verdicts:
        yield _signed(v)


def block_signatures(block: Block) -> list[Triple]:
    """Every (public key, signature, message) the block's validation will check."""
    body = block.body
    out: list[Triple] = [_signed(tx) for tx in body.transactions]
    if body.last_commit is not None:
        out += [_signed(v) for v in body.last_commit.precommits]
    for work in (*body.certificates, *body.frauds):
        out += _work_signatures(work)
    for ev in body.double_signs:
        out += [_signed(ev.vote_a), _signed(ev.vote_b)]
    out += [_signed(c) for c in body.verdict_commits]
    return out


def finalized_signatures(fb: FinalizedBlock) -> list[Triple]:
    """The block's signatures and its own commit certificate's (what sync checks)."""
    return block_signatures(fb.block) + [_signed(v) for v in fb.commit.precommits]


def preverify_block(block: Block, map_: Callable = map) -> int:
    """Check all of ``block``'s signatures through ``map_``; returns how many are bad
    (the block's validation will then say which and why)."""
    return sum(not ok for ok in verify_signatures(block_signatures(block), map_))
