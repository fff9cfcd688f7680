"""Building a block that cannot halt the chain (CometBFT's PrepareProposal).

A proposer's candidates come from its mempool and its work tracker, which strangers
fill: two certificates for one job, a certificate the verifiers accepted but the ledger
refuses (a deadline or an assignment too old), evidence that was already punished.
One such item in a block makes every honest validator reject the block, and a proposer
that keeps carrying it stalls every round it leads.

:func:`prepare_block` therefore applies each candidate, in the order
:func:`~aipg.stake.ledger.apply_block` will, to a scratch copy of the state the block
builds, and keeps only those that apply; a job appears at most once among the
certificates and once among the fraud evidence; the body stays within the block's
limits. It returns the block and what it refused (with the ledger's reason), so the
caller can stop offering those.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from aipg.pouw import (
    Certificate,
    ConflictingVerdicts,
    EquivocationEvidence,
    FraudEvidence,
    FraudReview,
    StreamEvidence,
    VerdictCommit,
    receipt_id,
)
from aipg.pouw.forced import ForcedError
from aipg.wire import Identity, encode

from .audit import process_draws
from .block import (
    MAX_BLOCK_BYTES,
    MAX_BLOCK_CERTIFICATES,
    MAX_BLOCK_EVIDENCE,
    MAX_BLOCK_TXS,
    MAX_BLOCK_VERDICT_COMMITS,
    Block,
    Commit,
    DoubleSignEvidence,
)
from .builder import make_block
from .challenge import (
    ChallengeAnswer,
    WithholdingChallenge,
    process_answers,
    process_challenges,
)
from .equivocation import (
    process_conflicting_verdicts,
    process_equivocations,
    process_junk_streams,
)
from .forced import process_all_reviews, process_forced_errors
from .ledger import (
    process_beacon,
    process_double_signs,
    process_header,
    process_last_commit,
)
from .liveness import process_liveness
from .reveal import process_verdict_commits
from .state import State
from .tx import Transaction
from .tx_apply import apply_transaction
from .types import LedgerError
from .useful_work import process_certificates, process_frauds

# Room left in a block's byte budget for its header, its parent's commit and framing.
BLOCK_BYTES_RESERVED = 1 << 20


@dataclass(frozen=True)
class Candidates:
    """What a proposer would like to include, in its order of preference."""

    transactions: Sequence[Transaction] = ()
    certificates: Sequence[Certificate] = ()
    frauds: Sequence[FraudEvidence] = ()
    double_signs: Sequence[DoubleSignEvidence] = ()
    equivocations: Sequence[EquivocationEvidence] = ()
    conflicting_verdicts: Sequence[ConflictingVerdicts] = ()
    reviews: Sequence[FraudReview] = ()
    verdict_commits: Sequence[VerdictCommit] = ()
    challenges: Sequence[WithholdingChallenge] = ()
    answers: Sequence[ChallengeAnswer] = ()
    junk_streams: Sequence[StreamEvidence] = ()
    forced_errors: Sequence[ForcedError] = ()


@dataclass
class Prepared:
    """A block the ledger accepts, and the candidates left out with the reason why."""

    block: Block
    refused: list[tuple[object, str]] = field(default_factory=list)


def prepare_block(
    state: State,
    proposer: bytes | Identity,
    candidates: Candidates,
    *,
    time_ms: int,
    last_commit: Commit | None,
) -> Prepared:
    """The block ``proposer`` proposes on ``state``: every candidate that applies, in
    ledger order (transactions, certificates, double signs, frauds). Raises LedgerError
    only when no block at all can be built here (a wrong time or proposer)."""
    scratch = state.copy()
    shell = make_block(state, proposer, time_ms=time_ms, last_commit=last_commit)
    builder, proposer = proposer, shell.header.proposer  # the Identity proves the beacon
    process_header(scratch, shell, None)
    if isinstance(builder, Identity):  # the beacon the block's audit draws use (D79)
        process_beacon(scratch, shell)
    process_last_commit(scratch, shell, last_commit)
    process_liveness(scratch, shell)  # a downtime slash changes what UNBOND may take
    budget = _Budget(MAX_BLOCK_BYTES - BLOCK_BYTES_RESERVED)
    refused: list[tuple[object, str]] = []

    def keep(items, limit, apply: Callable[[object], None], key=None) -> list:
        kept, seen = [], set()
        for item in items:
            if len(kept) >= limit:
                break  # the rest waits for the next block
            k = key(item) if key else None
            if k is not None and k in seen:
                refused.append((item, "another one for this job is in the block"))
                continue
            if not budget.fits(item):
                continue  # too big for what is left: maybe the next block
            try:
                apply(item)
            except LedgerError as e:
                refused.append((item, str(e)))
                continue
            budget.take(item)
            kept.append(item)
            if k is not None:
                seen.add(k)
        return kept

    body = {
        "transactions": keep(
            candidates.transactions,
            MAX_BLOCK_TXS,
            lambda tx: apply_transaction(scratch, tx, proposer),
        )
    }
    process_draws(scratch)  # claims paid unaudited here can no longer be certified (D79)
    for name, limit, step, same in EVIDENCE_STEPS:
        body[name] = keep(
            getattr(candidates, name), limit, lambda item, step=step: step(scratch, [item]), same
        )
    block = make_block(state, builder, time_ms=time_ms, last_commit=last_commit, **body)
    return Prepared(block, refused)


# The body's work and evidence fields in the order apply_block processes them: each with
# its count limit, the ledger step that applies one item, and what makes two items one
# (a job is paid or convicted once, a vote or a receipt punished once).
EVIDENCE_STEPS = (
    (
        "verdict_commits",
        MAX_BLOCK_VERDICT_COMMITS,
        process_verdict_commits,
        lambda c: (c.receipt_id, c.signer),
    ),
    (
        "junk_streams",
        MAX_BLOCK_EVIDENCE,
        process_junk_streams,
        lambda ev: ev.receipt.assignment_id,
    ),
    (
        "forced_errors",
        MAX_BLOCK_EVIDENCE,
        process_forced_errors,
        lambda ev: (receipt_id(ev.receipt), tuple(v.signer for v in ev.verdicts)),
    ),
    ("certificates", MAX_BLOCK_CERTIFICATES, process_certificates, lambda c: c.receipt.job_id),
    (
        "double_signs",
        MAX_BLOCK_EVIDENCE,
        process_double_signs,
        lambda ev: (ev.vote_a.signer, ev.vote_a.height, ev.vote_a.round, ev.vote_a.step),
    ),
    ("frauds", MAX_BLOCK_EVIDENCE, process_frauds, lambda ev: ev.receipt.job_id),
    (
        "equivocations",
        MAX_BLOCK_EVIDENCE,
        process_equivocations,
        lambda ev: ev.receipt_a.assignment_id,
    ),
    (
        "conflicting_verdicts",
        MAX_BLOCK_EVIDENCE,
        process_conflicting_verdicts,
        lambda ev: (ev.verdict_a.signer, ev.verdict_a.receipt_id),
    ),
    ("reviews", MAX_BLOCK_EVIDENCE, process_all_reviews, lambda r: receipt_id(r.evidence.receipt)),
    (
        "challenges",
        MAX_BLOCK_EVIDENCE,
        process_challenges,
        lambda c: (receipt_id(c.receipt), c.signer),
    ),
    ("answers", MAX_BLOCK_EVIDENCE, process_answers, lambda a: (a.receipt_id, a.challenger)),
)


class _Budget:
    def __init__(self, limit: int):
        self.left = limit

    def fits(self, item: object) -> bool:
        return len(encode(item)) <= self.left

    def take(self, item: object) -> None:
        self.left -= len(encode(item))
