"""Transactions: transfer, bond, unbond, withdraw, unjail, the paid-tier job escrow, and
job commitments.

One signed record type with a ``kind``, so a mempool orders any account's transactions
by nonce alone. Every transaction names the chain (no replay across chains), carries
the sender's next nonce (no replay within it) and a fee paid to the block's proposer.
The sender is the account of the signing key; a bond belongs to that same key, which is
the key a validator votes with and a worker signs receipts with.
"""

from __future__ import annotations

import enum
from typing import Annotated

from aipg.wire import (
    NO_SIGNATURE,
    NO_SIGNER,
    U8,
    U64,
    Address,
    AddressBytes,
    Hash32,
    Identity,
    MaxLen,
    PublicKeyBytes,
    Record,
    SignatureBytes,
    Units,
    UnitsField,
    record,
    sign,
)

NO_ADDRESS = bytes(20)
NO_JOB = bytes(32)


class TxKind(enum.IntEnum):
    TRANSFER = 1  # amount from the sender to ``recipient``
    BOND = 2  # amount from the sender's balance to its bond
    UNBOND = 3  # amount from the bond into the unbonding queue (released after the period)
    WITHDRAW = 4  # every released unbonding entry back to the balance
    ESCROW = 5  # lock ``amount`` as the fee of paid-tier job ``job_id``
    RECLAIM = 6  # take back the escrow of ``job_id`` once it expired uncertified
    UNJAIL = 7  # a validator jailed for downtime returns (after its jail period)
    # Fix job ``job_id`` on chain before the beacon that draws its committee (D56); an
    # ESCROW commits its job too. Anyone may commit any id, once.
    COMMIT = 8
    # Register as a worker for model ``job_id`` declaring ``amount`` work units a block
    # of capacity (0 withdraws); needs a bond of min_worker_bond (stake/assign.py, D58).
    REGISTER_WORKER = 9
    REGISTER_MODEL = 10  # put model ``job_id``'s cost (``memo``: a ModelCost) on chain


@record(tag=410)
class Transaction(Record):
    chain_id: Annotated[str, MaxLen(64)]
    kind: U8
    nonce: U64
    fee: UnitsField
    amount: UnitsField = 0
    recipient: AddressBytes = NO_ADDRESS
    job_id: Hash32 = NO_JOB
    memo: Annotated[bytes, MaxLen(256)] = b""
    signer: PublicKeyBytes = NO_SIGNER
    signature: SignatureBytes = NO_SIGNATURE

    @property
    def sender(self) -> bytes:
        """The 20-byte account address of the signer."""
        return Address.from_public_key(self.signer).raw


def make_tx(
    identity: Identity,
    chain_id: str,
    kind: TxKind,
    nonce: int,
    *,
    fee: int = 0,
    amount: int = 0,
    recipient: Address | None = None,
    job_id: bytes = NO_JOB,
    memo: bytes = b"",
) -> Transaction:
    """A signed transaction (the one way clients and tests build them)."""
    tx = Transaction(
        chain_id,
        int(kind),
        nonce,
        Units(fee),
        Units(amount),
        recipient.raw if recipient else NO_ADDRESS,
        job_id,
        memo,
    )
    return sign(tx, identity)


U64Field = U64  # re-exported for symmetry with other record modules
