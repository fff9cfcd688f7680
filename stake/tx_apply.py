"""Transactions: what each kind checks against the state, and what it does to it.

:func:`check_transaction` is also the mempool's check; :func:`apply_transaction` runs it
and then applies the transaction (fee to the proposer), changing nothing when it fails.
"""

from __future__ import annotations

from aipg.wire import Address, is_signed_by_signer

from .assign import check_register, register
from .block import Block
from .liveness import check_unjail, unjail
from .models import check_register_model, register_model
from .money import credit, debit
from .state import Account, Bond, Escrow, State, escrow_key
from .tx import NO_JOB, Transaction, TxKind
from .types import LedgerError


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
    job = tx.job_id.hex()[:16]
    if escrow_key(tx.job_id, tx.sender) in s.escrows:
        raise LedgerError(f"job {job} already has an escrow from this account")
    if tx.job_id in s.certified:
        raise LedgerError(f"job {job} is already certified: an escrow now would pay nobody")


def _check_commit(s: State, tx: Transaction) -> None:
    if tx.job_id == NO_JOB:
        raise LedgerError("a commitment names a job")
    if tx.job_id in s.commitments:
        raise LedgerError(f"job {tx.job_id.hex()[:16]} is already committed")
    if tx.fee < s.params.commit_min_fee:  # free-tier commitments cost something (D83)
        raise LedgerError(f"a commitment pays a fee of at least {s.params.commit_min_fee}")
    if tx.job_id in s.certified:
        raise LedgerError(f"job {tx.job_id.hex()[:16]} is already certified")


def _commit(s: State, tx: Transaction) -> None:
    s.put("commitments", tx.job_id, s.height)


def _check_register(s: State, tx: Transaction) -> None:
    check_register(s, tx.signer, tx.job_id, tx.amount)


def _register(s: State, tx: Transaction) -> None:
    register(s, tx.signer, tx.job_id, tx.amount)


def _check_reclaim(s: State, tx: Transaction) -> None:
    escrow = s.escrows.get(escrow_key(tx.job_id, tx.sender))
    if escrow is None:
        raise LedgerError(f"this account has no escrow for job {tx.job_id.hex()[:16]}")
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
    s.put("escrows", escrow_key(tx.job_id, tx.sender), Escrow(tx.sender, tx.amount, expires))
    if tx.job_id not in s.commitments:  # the escrow fixes the job as a COMMIT does (D56)
        s.put("commitments", tx.job_id, s.height)


def _reclaim(s: State, tx: Transaction) -> None:
    key = escrow_key(tx.job_id, tx.sender)
    escrow = s.escrows[key]
    s.put("escrows", key, None)
    credit(s, escrow.payer, escrow.amount)


_OPERATIONS = {
    TxKind.TRANSFER: _transfer,
    TxKind.BOND: _bond,
    TxKind.UNBOND: _unbond,
    TxKind.WITHDRAW: _withdraw,
    TxKind.ESCROW: _escrow,
    TxKind.RECLAIM: _reclaim,
    TxKind.UNJAIL: unjail,
    TxKind.REGISTER_MODEL: register_model,
    TxKind.COMMIT: _commit,
    TxKind.REGISTER_WORKER: _register,
}
_CHECKS = {
    TxKind.TRANSFER: _check_transfer,
    TxKind.BOND: _check_bond,
    TxKind.UNBOND: _check_unbond,
    TxKind.WITHDRAW: _check_withdraw,
    TxKind.ESCROW: _check_escrow,
    TxKind.RECLAIM: _check_reclaim,
    TxKind.UNJAIL: check_unjail,
    TxKind.REGISTER_MODEL: check_register_model,
    TxKind.COMMIT: _check_commit,
    TxKind.REGISTER_WORKER: _check_register,
}
_SPENDS_AMOUNT = {TxKind.TRANSFER, TxKind.BOND, TxKind.ESCROW, TxKind.REGISTER_MODEL}
