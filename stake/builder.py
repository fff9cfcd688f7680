"""Building blocks, votes and commit certificates (proposers, tests, benchmarks)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from aipg.pouw import (
    Certificate,
    ConflictingVerdicts,
    EquivocationEvidence,
    FraudEvidence,
    FraudReview,
    StreamEvidence,
    VerdictCommit,
)
from aipg.wire import Identity, sign

from .beacon import NO_PROOF, beacon_proof
from .block import Block, BlockBody, BlockHeader, Commit, DoubleSignEvidence, Vote, VoteStep
from .block import body_hash as hash_body
from .challenge import ChallengeAnswer, WithholdingChallenge
from .state import State, state_hash
from .tx import Transaction
from .types import NIL_HASH


def make_block(
    state: State,
    proposer: bytes | Identity,
    *,
    time_ms: int,
    last_commit: Commit | None,
    transactions: Sequence[Transaction] = (),
    certificates: Sequence[Certificate] = (),
    double_signs: Sequence[DoubleSignEvidence] = (),
    frauds: Sequence[FraudEvidence] = (),
    equivocations: Sequence[EquivocationEvidence] = (),
    conflicting_verdicts: Sequence[ConflictingVerdicts] = (),
    reviews: Sequence[FraudReview] = (),
    verdict_commits: Sequence[VerdictCommit] = (),
    challenges: Sequence[WithholdingChallenge] = (),
    answers: Sequence[ChallengeAnswer] = (),
    junk_streams: Sequence[StreamEvidence] = (),
    forced_errors: Sequence = (),
) -> Block:
    """The next block on ``state`` (height + 1), with the header filled in. A proposer
    given as an Identity proves the beacon (D55); given as a key alone, the header
    carries no proof and the ledger refuses the block (forgeries in tests)."""
    key = proposer.public_bytes if isinstance(proposer, Identity) else bytes(proposer)
    proof = beacon_proof(proposer, state.beacon) if isinstance(proposer, Identity) else NO_PROOF
    body = BlockBody(
        last_commit=last_commit,
        transactions=tuple(transactions),
        certificates=tuple(certificates),
        double_signs=tuple(double_signs),
        frauds=tuple(frauds),
        equivocations=tuple(equivocations),
        conflicting_verdicts=tuple(conflicting_verdicts),
        reviews=tuple(reviews),
        verdict_commits=tuple(verdict_commits),
        challenges=tuple(challenges),
        answers=tuple(answers),
        junk_streams=tuple(junk_streams),
        forced_errors=tuple(forced_errors),
    )
    header = BlockHeader(
        chain_id=state.chain_id,
        height=state.height + 1,
        time_ms=time_ms,
        parent_hash=state.last_block_hash,
        proposer=key,
        parent_state_hash=state_hash(state),
        body_hash=hash_body(body),
        vrf_proof=proof,
    )
    return Block(header, body)


def make_vote(
    identity: Identity,
    chain_id: str,
    height: int,
    round_: int,
    step: VoteStep,
    block_hash: bytes = NIL_HASH,
) -> Vote:
    return sign(Vote(chain_id, height, round_, int(step), block_hash), identity)


def make_commit(
    chain_id: str, height: int, block_hash: bytes, signers: Iterable[Identity], round_: int = 0
) -> Commit:
    """A commit certificate for ``block_hash`` signed by ``signers`` (in key order)."""
    votes = sorted(
        (make_vote(i, chain_id, height, round_, VoteStep.PRECOMMIT, block_hash) for i in signers),
        key=lambda v: v.signer,
    )
    return Commit(height, round_, block_hash, tuple(votes))
