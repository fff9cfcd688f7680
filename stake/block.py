"""Blocks, votes, commit certificates, proposals and double-sign evidence.

A block's hash is the sha256 of its header; the header commits to the body by hash.
The commit certificate of block ``h`` (the +2/3 precommits) is carried in block
``h + 1`` as ``last_commit``, and stored with block ``h`` once known.
"""

from __future__ import annotations

import enum
from typing import Annotated

from aipg.pouw import (
    Certificate,
    ConflictingVerdicts,
    EquivocationEvidence,
    FraudEvidence,
    FraudReview,
    StreamEvidence,
    VerdictCommit,
)
from aipg.pouw.forced import ForcedError
from aipg.wire import (
    I64,
    NO_SIGNATURE,
    NO_SIGNER,
    U8,
    U32,
    U64,
    Hash32,
    Len,
    MaxLen,
    PublicKeyBytes,
    Record,
    SignatureBytes,
    encode,
    record,
    sha256,
)

from .challenge import ChallengeAnswer, WithholdingChallenge
from .tx import Transaction
from .types import NIL_HASH

MAX_BLOCK_TXS = 10_000
MAX_BLOCK_CERTIFICATES = 5_000
MAX_BLOCK_EVIDENCE = 100
MAX_BLOCK_VERDICT_COMMITS = 20_000  # a few per certificate: a full block's committees
MAX_VALIDATORS = 1_000
MAX_BLOCK_BYTES = 32 << 20


class VoteStep(enum.IntEnum):
    PREVOTE = 1
    PRECOMMIT = 2


@record(tag=420)
class Vote(Record):
    """A prevote or precommit for ``block_hash`` (all zeros: nil) at (height, round)."""

    chain_id: Annotated[str, MaxLen(64)]
    height: U64
    round: U32
    step: U8
    block_hash: Hash32 = NIL_HASH
    signer: PublicKeyBytes = NO_SIGNER
    signature: SignatureBytes = NO_SIGNATURE


@record(tag=421, max_size=1 << 20)
class Commit(Record):
    """A commit certificate: precommits for ``block_hash`` from more than 2/3 of the power."""

    height: U64
    round: U32
    block_hash: Hash32
    precommits: Annotated[tuple[Vote, ...], MaxLen(MAX_VALIDATORS)]


@record(tag=425)
class DoubleSignEvidence(Record):
    """Two conflicting votes by one validator for the same height, round and step."""

    vote_a: Vote
    vote_b: Vote


@record(tag=422)
class BlockHeader(Record):
    chain_id: Annotated[str, MaxLen(64)]
    height: U64
    time_ms: U64
    parent_hash: Hash32
    proposer: PublicKeyBytes
    parent_state_hash: Hash32  # the state after the parent block, before this one
    body_hash: Hash32
    # The proposer's ECVRF proof over the parent's beacon (stake/beacon.py, D55).
    vrf_proof: Annotated[bytes, Len(80)] = bytes(80)

    @property
    def hash(self) -> bytes:
        return sha256(encode(self))


@record(tag=423, max_size=MAX_BLOCK_BYTES)
class BlockBody(Record):
    last_commit: Commit | None  # the parent's commit certificate (None in block 1)
    transactions: Annotated[tuple[Transaction, ...], MaxLen(MAX_BLOCK_TXS)]
    certificates: Annotated[tuple[Certificate, ...], MaxLen(MAX_BLOCK_CERTIFICATES)]
    double_signs: Annotated[tuple[DoubleSignEvidence, ...], MaxLen(MAX_BLOCK_EVIDENCE)]
    frauds: Annotated[tuple[FraudEvidence, ...], MaxLen(MAX_BLOCK_EVIDENCE)]
    equivocations: Annotated[tuple[EquivocationEvidence, ...], MaxLen(MAX_BLOCK_EVIDENCE)] = ()
    conflicting_verdicts: Annotated[
        tuple[ConflictingVerdicts, ...], MaxLen(MAX_BLOCK_EVIDENCE)
    ] = ()
    reviews: Annotated[tuple[FraudReview, ...], MaxLen(MAX_BLOCK_EVIDENCE)] = ()
    verdict_commits: Annotated[tuple[VerdictCommit, ...], MaxLen(MAX_BLOCK_VERDICT_COMMITS)] = ()
    challenges: Annotated[tuple[WithholdingChallenge, ...], MaxLen(MAX_BLOCK_EVIDENCE)] = ()
    answers: Annotated[tuple[ChallengeAnswer, ...], MaxLen(MAX_BLOCK_EVIDENCE)] = ()
    # D85: streamed chunks that contradict their worker's receipt (applied before the
    # certificates: the receipt is then not paid)
    junk_streams: Annotated[tuple[StreamEvidence, ...], MaxLen(MAX_BLOCK_EVIDENCE)] = ()
    forced_errors: Annotated[tuple[ForcedError, ...], MaxLen(MAX_BLOCK_EVIDENCE)] = ()


@record(tag=424, max_size=MAX_BLOCK_BYTES)
class Block(Record):
    header: BlockHeader
    body: BlockBody

    @property
    def hash(self) -> bytes:
        return self.header.hash

    @property
    def height(self) -> int:
        return self.header.height


@record(tag=426)
class Proposal(Record):
    """A proposer's signed proposal of block ``block_hash`` in (height, round).

    ``pol_round`` is the round of the proof-of-lock (+2/3 prevotes) for a re-proposed
    block, or -1. The block travels beside it in :class:`ProposalMessage`, so the
    signature covers a hash, not the whole block.
    """

    chain_id: Annotated[str, MaxLen(64)]
    height: U64
    round: U32
    pol_round: I64
    block_hash: Hash32
    signer: PublicKeyBytes = NO_SIGNER
    signature: SignatureBytes = NO_SIGNATURE


@record(tag=427, max_size=MAX_BLOCK_BYTES)
class ProposalMessage(Record):
    proposal: Proposal
    block: Block


@record(tag=428, max_size=MAX_BLOCK_BYTES + (1 << 20))
class FinalizedBlock(Record):
    """A block with its own commit certificate: what sync serves and the store keeps."""

    block: Block
    commit: Commit


def body_hash(body: BlockBody) -> bytes:
    return sha256(encode(body))
