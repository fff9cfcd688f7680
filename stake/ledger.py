"""The state transition: ``apply_block(state, block) -> state``.

Reads like a table of contents (as the beacon chain's ``process_block``): header, last
commit, liveness, transactions, evidence, rewards, epoch. A block is invalid exactly when
one of these checks fails; :class:`LedgerError` says which and why, and the input state
is never touched (the block is applied to a copy).

Money moves only through :func:`~.money.credit` and :func:`~.money.debit`, and after every
block the supply identity is checked:
``balances + bonds + unbonding + escrows + work pool == genesis supply + minted - burned``.

The steps too long to sit here have modules of their own: :mod:`.liveness` (missed
blocks and downtime jailing), :mod:`.tx_apply` (each transaction kind's check and
effect) and :mod:`.useful_work` (certificates and fraud).
"""

from __future__ import annotations

from collections.abc import Iterable

from aipg.pouw import COMMITTEE_DELAY, COMMITTEE_LOOKAHEAD
from aipg.wire import is_signed_by_signer

from .assign import snapshot_workers
from .audit import process_draws
from .beacon import next_beacon
from .block import Block, Commit, DoubleSignEvidence, VoteStep, body_hash
from .challenge import expire_challenges, process_answers, process_challenges
from .equivocation import (
    process_conflicting_verdicts,
    process_equivocations,
    process_junk_streams,
)
from .forced import expire_forced_reviews, process_all_reviews, process_forced_errors
from .liveness import process_liveness, without_jailed
from .money import credit, slash
from .pool import WorkItem, pay_work
from .reveal import process_verdict_commits, prune_commitments
from .review import expire_convictions
from .state import Bond, State, height_key, state_hash
from .tokenomics import split_reward
from .tx_apply import apply_transaction, check_transaction, process_transactions
from .types import Height, LedgerError
from .useful_work import process_certificates, process_frauds
from .validators import ValidatorSet
from .verdict_rewards import pay_validators

__all__ = [
    "apply_block",
    "apply_transaction",
    "check_transaction",
    "verify_commit",
]


def apply_block(
    state: State,
    block: Block,
    *,
    check_state_hash: bool = True,
    verified_parent_commit: Commit | None = None,
) -> State:
    """The state after ``block``. Raises LedgerError (and leaves ``state`` as it was).

    ``verified_parent_commit`` is a commit certificate of the parent block that the
    caller has already verified (the chain verifies each block's commit when it
    finalizes it); when the block carries exactly that commit, its signatures are not
    checked a second time.
    """
    s = state.copy()
    parent_state_hash = state_hash(state) if check_state_hash else None
    process_header(s, block, parent_state_hash)
    process_beacon(s, block)
    process_last_commit(s, block, verified_parent_commit)
    process_liveness(s, block)
    process_transactions(s, block)
    drawn, delivered = process_draws(s)  # claims drawn unaudited are paid (D79)
    process_verdict_commits(s, block.body.verdict_commits)
    process_junk_streams(s, block.body.junk_streams)  # D85: before the receipts are paid
    work = process_forced_errors(s, block.body.forced_errors)  # before certificates: D75
    work.update(process_certificates(s, block.body.certificates, delivered))
    work.update(drawn)
    process_double_signs(s, block.body.double_signs)
    process_frauds(s, block.body.frauds)
    process_equivocations(s, block.body.equivocations)
    process_conflicting_verdicts(s, block.body.conflicting_verdicts)
    work.update(process_all_reviews(s, block.body.reviews))
    process_challenges(s, block.body.challenges)
    process_answers(s, block.body.answers)
    expire_convictions(s)
    expire_forced_reviews(s)
    expire_challenges(s)
    process_rewards(s, block, work)
    process_epoch(s)
    record_block(s, block)
    check_supply(s)
    return s


# --- header and commit ------------------------------------------------------------------


def process_header(s: State, block: Block, parent_state_hash: bytes | None) -> None:
    h = block.header
    if h.chain_id != s.chain_id:
        raise LedgerError(f"block is for chain {h.chain_id!r}, not {s.chain_id!r}")
    if h.height != s.height + 1:
        raise LedgerError(f"block height {h.height}, expected {s.height + 1}")
    if h.parent_hash != s.last_block_hash:
        raise LedgerError(f"block {h.height} does not extend the chain (wrong parent hash)")
    if h.time_ms <= s.time_ms:
        raise LedgerError(f"block time {h.time_ms} is not after its parent's {s.time_ms}")
    # Any validator may be the proposer: a block decided in a later round can be the one
    # an earlier round's proposer built (Tendermint re-proposes its valid value); which
    # proposer may propose in which round is checked by consensus, on the signed Proposal.
    if h.proposer not in s.validators:
        raise LedgerError(f"block {h.height} proposer {h.proposer.hex()[:16]} is not a validator")
    if h.body_hash != body_hash(block.body):
        raise LedgerError(f"block {h.height} body does not match its header's body hash")
    if parent_state_hash is not None and h.parent_state_hash != parent_state_hash:
        raise LedgerError(f"block {h.height} was built on a different state (state hash)")
    s.height = Height(h.height)
    s.time_ms = h.time_ms


def process_beacon(s: State, block: Block) -> None:
    """Check the proposer's VRF proof over the parent's beacon and advance the beacon."""
    s.beacon = next_beacon(s.beacon, block.header.proposer, block.header.vrf_proof)
    s.put("beacons", height_key(s.height), s.beacon)


def process_last_commit(s: State, block: Block, verified: Commit | None = None) -> None:
    """Block 1 has no parent commit; every later block carries its parent's."""
    commit = block.body.last_commit
    if block.header.height == 1:
        if commit is not None:
            raise LedgerError("block 1 cannot carry a last commit")
        return
    if commit is None:
        raise LedgerError(f"block {block.header.height} lacks its parent's commit certificate")
    if verified is not None and commit == verified and commit.height == s.height - 1:
        if commit.block_hash != s.last_block_hash:  # cheap, and what a mix-up would break
            raise LedgerError(f"commit for block {s.height - 1} is for another block")
        return
    verify_commit(commit, s.last_validators, s.chain_id, Height(s.height - 1), s.last_block_hash)


def verify_commit(
    commit: Commit, validators: ValidatorSet, chain_id: str, height: Height, block_hash: bytes
) -> None:
    """Check ``commit`` finalizes ``block_hash`` at ``height``: distinct validators of
    ``validators`` with more than 2/3 of the power, each precommit validly signed.
    Raises LedgerError."""
    if commit.height != height or commit.block_hash != block_hash:
        raise LedgerError(f"commit certificate is not for block {height} {block_hash.hex()[:16]}")
    seen: set[bytes] = set()
    power = 0
    for vote in commit.precommits:
        if (
            vote.chain_id != chain_id
            or vote.height != height
            or vote.round != commit.round
            or vote.step != VoteStep.PRECOMMIT
            or vote.block_hash != block_hash
        ):
            raise LedgerError(f"commit for block {height} holds a vote for something else")
        if vote.signer in seen:
            raise LedgerError(f"commit for block {height} counts a validator twice")
        if vote.signer not in validators:
            raise LedgerError(f"commit for block {height} has a vote from a non-validator")
        seen.add(vote.signer)
        power += validators.power_of(vote.signer)
    if not validators.has_quorum(power):
        raise LedgerError(
            f"commit for block {height} has {power} of {validators.total_power} voting power; "
            "it needs more than 2/3"
        )
    for vote in commit.precommits:  # signatures last: the expensive check
        if not is_signed_by_signer(vote):
            raise LedgerError(f"commit for block {height} has a badly signed precommit")


# --- evidence ---------------------------------------------------------------------------


def process_double_signs(s: State, evidence: Iterable[DoubleSignEvidence]) -> None:
    for ev in evidence:
        key = check_double_sign(s, ev)
        offender = ev.vote_a.signer
        s.burned += slash(s, offender, s.params.double_sign_slash_bps)
        b = s.bond(offender)
        if b.stake:
            s.put("bonds", offender, Bond(b.stake, s.height + s.params.jail_period))
        s.put("punished", key, s.height)


def check_double_sign(s: State, ev: DoubleSignEvidence) -> bytes:
    """Check double-sign evidence against ``s``; return its punishment key. Raises LedgerError."""
    a, b = ev.vote_a, ev.vote_b
    same = (a.signer, a.chain_id, a.height, a.round, a.step)
    if same != (b.signer, b.chain_id, b.height, b.round, b.step):
        raise LedgerError("double-sign evidence: the votes are not by one validator for one step")
    if a.chain_id != s.chain_id:
        raise LedgerError("double-sign evidence from another chain")
    if a.block_hash == b.block_hash:
        raise LedgerError("double-sign evidence: the votes do not conflict")
    if a.height > s.height or s.height - a.height > s.params.unbonding_period:
        raise LedgerError(
            f"double-sign evidence for height {a.height} is too old or from the future"
        )
    # One punishment per validator and height, however many rounds it equivocated in.
    key = b"ds" + a.signer + a.height.to_bytes(8, "big")
    if key in s.punished:
        raise LedgerError("this double sign was already punished")
    if not s.bond(a.signer).stake and not s.unbonding.get(a.signer):
        raise LedgerError("double-sign evidence against a key with nothing bonded")
    if not (is_signed_by_signer(a) and is_signed_by_signer(b)):
        raise LedgerError("double-sign evidence with a bad signature")
    return key


# --- rewards and epochs -----------------------------------------------------------------


def process_rewards(s: State, block: Block, work: dict[bytes, WorkItem] | None = None) -> None:
    """Mint the block reward and split it: operations wallet, work pool, and the
    validators' part: the proposer's bonus and the verdict pool (:mod:`.verdict_rewards`)."""
    reward = s.emission.block_reward(s.height)
    s.minted += reward
    split = split_reward(s.params, reward)
    credit(s, s.genesis.operations_wallet, split.operations)
    s.work_pool += split.work
    pay_work(s, work or {})
    pay_validators(s, split.validators, block.header.proposer)


def process_epoch(s: State) -> None:
    """Rotate validator sets. At epoch boundaries membership follows the bonds; a
    validator jailed for downtime leaves at once (every height it would lead waits for
    a propose timeout), while the epoch's committee snapshot stays as it was."""
    s.last_validators = s.validators
    vset = s.validators
    if s.height % s.params.epoch_length == 0:
        vset = vset.updated(s.validator_powers()) or vset  # never an empty set
        rows = tuple((v.key, v.power) for v in vset.validators)
        s.put("epochs", height_key(s.epoch_of(s.height + 1)), rows)
        snapshot_workers(s)
        prune_expired(s)
    s.validators = without_jailed(s, vset).advanced(1)


def record_block(s: State, block: Block) -> None:
    """Remember the block's hash (committee seeds) and forget what no certificate young
    enough to be included can refer to any more."""
    s.last_block_hash = block.hash
    s.put("block_hashes", height_key(s.height), block.hash)
    old = s.height - s.params.escrow_period - COMMITTEE_LOOKAHEAD - 1
    if old >= 0:
        s.put("block_hashes", height_key(old), None)
        s.put("beacons", height_key(old), None)


def prune_expired(s: State) -> None:
    """Forget punishments too old to be re-submitted (evidence older is rejected anyway)
    and validator sets of epochs no includable certificate was drawn from."""
    horizon = s.height - s.params.unbonding_period
    for key in [k for k, h in s.punished.items() if h < horizon]:
        s.put("punished", key, None)
    for key in [k for k, until in s.certified.items() if until < s.time_ms]:
        s.put("certified", key, None)
    # A commitment lives as long as the beacon that draws its committee is kept.
    gone = s.height - s.params.escrow_period - COMMITTEE_LOOKAHEAD - 1 - COMMITTEE_DELAY
    for key in [k for k, h in s.commitments.items() if h < gone]:
        s.put("commitments", key, None)
    oldest = s.epoch_of(max(0, s.height - s.params.escrow_period - COMMITTEE_LOOKAHEAD - 1))
    for key in [k for k in s.epochs if int.from_bytes(k, "big") < oldest]:
        s.put("epochs", key, None)
    for key in [k for k in s.worker_epochs if int.from_bytes(k, "big") < oldest]:
        s.put("worker_epochs", key, None)
    prune_commitments(s)


def check_supply(s: State) -> None:
    have, want = s.total_holdings(), s.expected_supply()
    if have != want:  # a bug, never a bad block: every path above conserves money
        raise AssertionError(f"supply not conserved at height {s.height}: {have} != {want}")
