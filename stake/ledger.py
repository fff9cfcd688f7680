"""The state transition: ``apply_block(state, block) -> state``.

Reads like a table of contents (as the beacon chain's ``process_block``): header, last
commit, transactions, evidence, rewards, epoch. A block is invalid exactly when one of
these checks fails; :class:`LedgerError` says which and why, and the input state is never
touched (the block is applied to a copy).

Money moves only through :func:`credit` and :func:`debit`, and after every block the
supply identity is checked:
``balances + bonds + unbonding + escrows + work pool == genesis supply + minted - burned``.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

from aipg.pouw import (
    COMMITTEE_LOOKAHEAD,
    Certificate,
    FraudEvidence,
    PouwError,
    validate_certificate,
    validate_fraud_evidence,
)
from aipg.wire import Address, is_signed_by_signer

from .block import Block, Commit, DoubleSignEvidence, VoteStep, body_hash
from .state import Account, Bond, Escrow, State, height_key, state_hash
from .tokenomics import split_reward
from .tx import Transaction, TxKind
from .types import Height, LedgerError, bps_of
from .validators import ValidatorSet

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
    process_last_commit(s, block, verified_parent_commit)
    process_transactions(s, block)
    work = process_certificates(s, block.body.certificates)
    process_double_signs(s, block.body.double_signs)
    process_frauds(s, block.body.frauds)
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


# --- transactions ------------------------------------------------------------------------


def process_transactions(s: State, block: Block) -> None:
    for i, tx in enumerate(block.body.transactions):
        try:
            apply_transaction(s, tx, block.header.proposer)
        except LedgerError as e:
            raise LedgerError(f"transaction {i}: {e}") from None


def apply_transaction(s: State, tx: Transaction, proposer: bytes) -> None:
    """Check ``tx`` against ``s`` and apply it (fee to ``proposer``). Raises LedgerError
    before changing anything."""
    check_transaction(s, tx)
    sender = tx.sender
    acct = s.account(sender)
    s.put("accounts", sender, Account(acct.balance - tx.fee, acct.nonce + 1))
    credit(s, Address.from_public_key(proposer).raw, tx.fee)
    _OPERATIONS[TxKind(tx.kind)](s, tx)


def check_transaction(s: State, tx: Transaction) -> None:
    """Raise LedgerError saying why ``tx`` cannot be applied to ``s`` (the mempool's check)."""
    if tx.chain_id != s.chain_id:
        raise LedgerError(f"signed for chain {tx.chain_id!r}, not {s.chain_id!r}")
    if tx.kind not in _OPERATIONS:
        raise LedgerError(f"unknown transaction kind {tx.kind}")
    acct = s.account(tx.sender)
    if tx.nonce != acct.nonce:
        raise LedgerError(f"nonce {tx.nonce}, expected {acct.nonce}")
    spend = tx.fee + (tx.amount if tx.kind in _SPENDS_AMOUNT else 0)
    if spend > acct.balance:
        raise LedgerError(f"balance {acct.balance} cannot pay {spend} (amount and fee)")
    _CHECKS[TxKind(tx.kind)](s, tx)
    if not is_signed_by_signer(tx):
        raise LedgerError("bad signature")


def _check_transfer(s: State, tx: Transaction) -> None:
    if tx.amount == 0:
        raise LedgerError("a transfer needs a positive amount")


def _check_bond(s: State, tx: Transaction) -> None:
    if tx.amount == 0:
        raise LedgerError("a bond needs a positive amount")


def _check_unbond(s: State, tx: Transaction) -> None:
    bonded = s.bond(tx.signer).stake
    if tx.amount == 0 or tx.amount > bonded:
        raise LedgerError(f"cannot unbond {tx.amount}: {bonded} is bonded")


def _check_withdraw(s: State, tx: Transaction) -> None:
    if not any(release <= s.height for release, _ in s.unbonding.get(tx.signer, ())):
        raise LedgerError("nothing has finished unbonding yet")


def _check_escrow(s: State, tx: Transaction) -> None:
    if tx.amount == 0:
        raise LedgerError("an escrow needs a positive amount")
    if tx.job_id in s.escrows or tx.job_id in s.certified:
        raise LedgerError(f"job {tx.job_id.hex()[:16]} already has an escrow or a certificate")


def _check_reclaim(s: State, tx: Transaction) -> None:
    escrow = s.escrows.get(tx.job_id)
    if escrow is None:
        raise LedgerError(f"no escrow for job {tx.job_id.hex()[:16]}")
    if escrow.payer != tx.sender:
        raise LedgerError("only the payer can reclaim an escrow")
    if s.height < escrow.expires_at:
        raise LedgerError(f"the escrow is locked until height {escrow.expires_at}")


def _transfer(s: State, tx: Transaction) -> None:
    debit(s, tx.sender, tx.amount)
    credit(s, tx.recipient, tx.amount)


def _bond(s: State, tx: Transaction) -> None:
    debit(s, tx.sender, tx.amount)
    b = s.bond(tx.signer)
    s.put("bonds", tx.signer, Bond(b.stake + tx.amount, b.jailed_until))


def _unbond(s: State, tx: Transaction) -> None:
    b = s.bond(tx.signer)
    s.put(
        "bonds",
        tx.signer,
        Bond(b.stake - tx.amount, b.jailed_until) if b.stake > tx.amount else None,
    )
    release = s.height + s.params.unbonding_period
    queue = (*s.unbonding.get(tx.signer, ()), (release, tx.amount))
    s.put("unbonding", tx.signer, queue)


def _withdraw(s: State, tx: Transaction) -> None:
    queue = s.unbonding[tx.signer]
    released = sum(amount for release, amount in queue if release <= s.height)
    rest = tuple(e for e in queue if e[0] > s.height)
    s.put("unbonding", tx.signer, rest or None)
    credit(s, tx.sender, released)


def _escrow(s: State, tx: Transaction) -> None:
    debit(s, tx.sender, tx.amount)
    expires = s.height + s.params.escrow_period
    s.put("escrows", tx.job_id, Escrow(tx.sender, tx.amount, expires))


def _reclaim(s: State, tx: Transaction) -> None:
    escrow = s.escrows[tx.job_id]
    s.put("escrows", tx.job_id, None)
    credit(s, escrow.payer, escrow.amount)


_OPERATIONS = {
    TxKind.TRANSFER: _transfer,
    TxKind.BOND: _bond,
    TxKind.UNBOND: _unbond,
    TxKind.WITHDRAW: _withdraw,
    TxKind.ESCROW: _escrow,
    TxKind.RECLAIM: _reclaim,
}
_CHECKS = {
    TxKind.TRANSFER: _check_transfer,
    TxKind.BOND: _check_bond,
    TxKind.UNBOND: _check_unbond,
    TxKind.WITHDRAW: _check_withdraw,
    TxKind.ESCROW: _check_escrow,
    TxKind.RECLAIM: _check_reclaim,
}
_SPENDS_AMOUNT = {TxKind.TRANSFER, TxKind.BOND, TxKind.ESCROW}


# --- money ------------------------------------------------------------------------------


def credit(s: State, address: bytes, amount: int) -> None:
    if amount:
        a = s.account(address)
        s.put("accounts", address, Account(a.balance + amount, a.nonce))


def debit(s: State, address: bytes, amount: int) -> None:
    a = s.account(address)
    if amount > a.balance:
        raise LedgerError(f"balance {a.balance} is less than {amount}")
    if amount:
        s.put("accounts", address, Account(a.balance - amount, a.nonce))


def slash(s: State, key: bytes, bps: int) -> int:
    """Take ``bps`` of ``key``'s bond and of its unbonding entries (unbonding is no escape).
    Returns the amount taken; the caller decides where it goes."""
    taken = 0
    b = s.bond(key)
    if b.stake:
        cut = bps_of(b.stake, bps)
        s.put("bonds", key, Bond(b.stake - cut, b.jailed_until))
        taken += cut
    queue = s.unbonding.get(key)
    if queue:
        cuts = [bps_of(amount, bps) for _, amount in queue]
        s.put("unbonding", key, tuple((r, a - c) for (r, a), c in zip(queue, cuts, strict=True)))
        taken += sum(cuts)
    return taken


# --- useful work -----------------------------------------------------------------------


def process_certificates(
    s: State, certificates: Iterable[Certificate]
) -> dict[bytes, tuple[bytes, int]]:
    """Check each certificate, pay its escrow to the worker, and return the work
    certified in this block: job id -> (worker account, work units)."""
    work: dict[bytes, tuple[bytes, int]] = {}
    snapshots: dict[int, dict[bytes, int]] = {}
    for i, cert in enumerate(certificates):
        try:
            check_work(s, cert, snapshots, _certificate_without_challenges)
        except (LedgerError, PouwError) as e:
            raise LedgerError(f"certificate {i}: {e}") from None
        job = cert.receipt.job_id
        if job in s.certified:
            raise LedgerError(f"certificate {i}: job {job.hex()[:16]} was already certified")
        s.put("certified", job, certification_deadline(s, cert.job.deadline_ms))
        worker = Address.from_public_key(cert.receipt.signer).raw
        escrow = s.escrows.get(job)
        if escrow is not None:  # the paid tier: the locked fee goes to the worker
            s.put("escrows", job, None)
            credit(s, worker, escrow.amount)
            s.paid[job] = escrow.amount
        work[job] = (worker, cert.receipt.work_units)
    return work


# Blocks check every signature that authorizes something (job, assignment, receipt,
# verdicts) but not the verdicts' challenges: those were checked when the verdicts were
# collected from gossip, and a challenge grants nothing its verdict's signature does not.
_certificate_without_challenges = functools.partial(validate_certificate, check_challenges=False)
_fraud_without_challenges = functools.partial(validate_fraud_evidence, check_challenges=False)


def check_work(s: State, cert: Certificate | FraudEvidence, snapshots, validate) -> None:
    """Run pouw's cheap validation of a certificate or fraud evidence against the
    validator set its committee was drawn from. Raises LedgerError or PouwError."""
    seed_height = cert.assignment.height - COMMITTEE_LOOKAHEAD
    if not 0 <= seed_height < s.height:
        raise LedgerError(f"committee seed height {seed_height} is not a finalized block")
    if s.height - cert.assignment.height > s.params.escrow_period:
        raise LedgerError(f"assignment at height {cert.assignment.height} is too old")
    if s.time_ms > certification_deadline(s, cert.job.deadline_ms):
        raise LedgerError("the job's deadline passed too long ago to be certified")
    epoch = s.epoch_of(seed_height)
    snapshot = snapshots.get(epoch)
    if snapshot is None:
        snapshot = s.validator_snapshot_at(seed_height)
        if snapshot is None:
            raise LedgerError(f"no validator set is kept for height {seed_height}")
        snapshots[epoch] = snapshot
    validate(cert, snapshot, s.block_hash_at, committee_size=s.params.committee_size)


def certification_deadline(s: State, job_deadline_ms: int) -> int:
    """The last block time at which a job can be certified (or its fraud proven): its
    deadline plus the escrow period. After it, its ``certified`` entry can be forgotten."""
    return job_deadline_ms + s.params.escrow_period * s.params.target_block_time_ms


def process_frauds(s: State, frauds: Iterable[FraudEvidence]) -> None:
    """Slash each convicted worker's bond; refund the job's escrow to its payer together
    with a share of what was slashed; burn the rest."""
    snapshots: dict[int, dict[bytes, int]] = {}
    for i, ev in enumerate(frauds):
        try:
            check_work(s, ev, snapshots, _fraud_without_challenges)
        except (LedgerError, PouwError) as e:
            raise LedgerError(f"fraud evidence {i}: {e}") from None
        key = b"fraud" + ev.receipt.job_id
        if key in s.punished:
            raise LedgerError(f"fraud evidence {i}: this fraud was already punished")
        s.put("punished", key, s.height)
        slashed = slash(s, ev.receipt.signer, s.params.fraud_slash_bps)
        escrow = s.escrows.get(ev.receipt.job_id)
        refund = 0
        if escrow is not None:
            s.put("escrows", ev.receipt.job_id, None)
            refund = bps_of(slashed, s.params.fraud_refund_bps)
            credit(s, escrow.payer, escrow.amount + refund)
        s.burned += slashed - refund


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


def process_rewards(
    s: State, block: Block, work: dict[bytes, tuple[bytes, int]] | None = None
) -> None:
    """Mint the block reward and split it: operations wallet, work pool, validators."""
    reward = s.emission.block_reward(s.height)
    s.minted += reward
    split = split_reward(s.params, reward)
    credit(s, s.genesis.operations_wallet, split.operations)
    s.work_pool += split.work
    pay_work(s, work or {})
    pay_validators(s, split.validators, block.header.proposer)


def pay_work(s: State, work: dict[bytes, tuple[bytes, int]]) -> None:
    """Pay the whole pool out, to each job's worker by the job's work units (in job id
    order); with no work it carries forward. Rounding dust stays in the pool. What each
    job was paid is in ``s.paid``."""
    total = sum(units for _, units in work.values())
    if not total:
        return
    pool = s.work_pool
    for job in sorted(work):
        worker, units = work[job]
        share = pool * units // total
        credit(s, worker, share)
        s.work_pool -= share
        s.paid[job] = s.paid.get(job, 0) + share


def pay_validators(s: State, amount: int, proposer: bytes) -> None:
    """The proposer's bonus, then the rest by voting power; rounding dust to the proposer."""
    bonus = bps_of(amount, s.params.proposer_bonus_bps)
    rest = amount - bonus
    vset = s.validators
    paid = 0
    for v in vset.validators:
        share = rest * v.power // vset.total_power
        credit(s, Address.from_public_key(v.key).raw, share)
        paid += share
    credit(s, Address.from_public_key(proposer).raw, bonus + rest - paid)


def process_epoch(s: State) -> None:
    """Rotate validator sets. At epoch boundaries membership follows the bonds."""
    s.last_validators = s.validators
    vset = s.validators
    if s.height % s.params.epoch_length == 0:
        vset = vset.updated(s.validator_powers()) or vset  # never an empty set
        rows = tuple((v.key, v.power) for v in vset.validators)
        s.put("epochs", height_key(s.epoch_of(s.height + 1)), rows)
        prune_expired(s)
    s.validators = vset.advanced(1)


def record_block(s: State, block: Block) -> None:
    """Remember the block's hash (committee seeds) and forget what no certificate young
    enough to be included can refer to any more."""
    s.last_block_hash = block.hash
    s.put("block_hashes", height_key(s.height), block.hash)
    old = s.height - s.params.escrow_period - COMMITTEE_LOOKAHEAD - 1
    if old >= 0:
        s.put("block_hashes", height_key(old), None)


def prune_expired(s: State) -> None:
    """Forget punishments too old to be re-submitted (evidence older is rejected anyway)
    and validator sets of epochs no includable certificate was drawn from."""
    horizon = s.height - s.params.unbonding_period
    for key in [k for k, h in s.punished.items() if h < horizon]:
        s.put("punished", key, None)
    for key in [k for k, until in s.certified.items() if until < s.time_ms]:
        s.put("certified", key, None)
    oldest = s.epoch_of(max(0, s.height - s.params.escrow_period - COMMITTEE_LOOKAHEAD - 1))
    for key in [k for k in s.epochs if int.from_bytes(k, "big") < oldest]:
        s.put("epochs", key, None)


def check_supply(s: State) -> None:
    have, want = s.total_holdings(), s.expected_supply()
    if have != want:  # a bug, never a bad block: every path above conserves money
        raise AssertionError(f"supply not conserved at height {s.height}: {have} != {want}")
