"""The mempool: transactions waiting for a block, each checked against the chain state
with every transaction ahead of it applied.

- :meth:`Mempool.admit` takes a transaction only if it applies to the *pending* state
  (the chain state plus the pool), so an account's transactions are pooled in nonce
  order without gaps; :meth:`Mempool.next_nonce` is that state's nonce.
- :meth:`Mempool.sign` is the one place this node picks a nonce for an account it holds
  the key of (the paid tier's custodial accounts, D6) and signs; it remembers the key.
- :meth:`Mempool.offer` is for transactions from the network: one whose nonce is ahead
  (gossip reordered a burst) waits in a bounded queue until its turn.
- :meth:`Mempool.settle` runs after every finalized block: what the block carried leaves,
  the rest is replayed on the new state. A transaction below its account's nonce, or
  one that no longer applies, is dropped; a custodial ESCROW whose nonce was taken by a
  transaction from elsewhere, or freed by a dropped one, is re-signed at the account's
  next nonce (D33). So no account is left with a gap that blocks it.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Iterable

from aipg.stake.state import State
from aipg.stake.tx import Transaction, TxKind, make_tx
from aipg.stake.tx_apply import apply_transaction
from aipg.stake.types import LedgerError
from aipg.wire import Identity, WireError, is_signed_by_signer, require_signature, sign
from aipg.wire.codec import record_digest

log = logging.getLogger("aipg.node.mempool")

MAX_MEMPOOL = 10_000
MAX_QUEUED = 1_024  # transactions from the network whose nonce is ahead, all accounts
MAX_QUEUED_PER_ACCOUNT = 64  # more than a burst reordered in flight; a spammer's limit


def tx_id(tx: Transaction) -> bytes:
    return record_digest(tx)


class Mempool:
    """``state`` is the chain state the pool applies to; ``proposer`` is credited the
    fees in the pending state (who proposes the real block does not change whether a
    transaction applies)."""

    def __init__(self, state: State, proposer: bytes):
        self._proposer = proposer
        self._txs: OrderedDict[bytes, Transaction] = OrderedDict()
        self._pending = state.copy()
        self._queued: dict[bytes, dict[int, Transaction]] = {}  # account -> nonce -> tx
        self._custody: dict[bytes, Identity] = {}  # accounts whose transactions we sign
        # A check of the node's own beyond the ledger's (raises LedgerError): a node that
        # hosts a model refuses a registration of another cost (node/services/costs.py).
        self.extra_check: Callable[[Transaction], None] | None = None

    def __len__(self) -> int:
        return len(self._txs)

    def __contains__(self, txid: bytes) -> bool:
        return txid in self._txs

    def transactions(self) -> list[Transaction]:
        """The pooled transactions in the order they apply."""
        return list(self._txs.values())

    def next_nonce(self, address: bytes) -> int:
        """The nonce ``address``'s next transaction must carry: the ledger's, counting
        the account's pooled transactions."""
        return self._pending.account(address).nonce

    def escrow_pending(self, job_id: bytes, payer: bytes) -> bool:
        """Whether ``payer``'s escrow for ``job_id`` waits here for a block."""
        waiting = [*self._txs.values(), *self._queued.get(payer, {}).values()]
        return any(
            tx.kind == TxKind.ESCROW and tx.job_id == job_id and tx.sender == payer
            for tx in waiting
        )

    # -- entering -------------------------------------------------------------------------

    def admit(self, tx: Transaction) -> bytes:
        """Pool ``tx`` if it applies to the pending state. Returns its id; raises
        LedgerError saying why not (nothing changes then)."""
        try:
            require_signature(tx)
        except WireError as e:
            raise LedgerError(f"transaction {e.reason}") from None
        txid = tx_id(tx)
        if txid in self._txs:
            return txid
        if len(self._txs) >= MAX_MEMPOOL:
            raise LedgerError("the mempool is full; try again in a few blocks")
        if self.extra_check is not None:
            self.extra_check(tx)
        apply_transaction(self._pending, tx, self._proposer)  # checks before it changes
        self._txs[txid] = tx
        self._promote(tx.sender)
        return txid

    def offer(self, tx: Transaction) -> None:
        """A transaction from the network: pooled, queued while its nonce is ahead, or
        dropped (logged) when it cannot apply."""
        try:
            self.admit(tx)
            return
        except LedgerError as e:
            if not self._queue(tx):
                log.debug("tx from the network refused: %s", e)

    def sign(self, identity: Identity, chain_id: str, kind: TxKind, **fields) -> Transaction:
        """Sign a ``kind`` transaction from ``identity``'s account at its next nonce and
        pool it. Raises LedgerError when the ledger would refuse it (no nonce is used:
        the next one signed takes it). The caller serializes calls per account if it
        awaits between signing and publishing (ChainService holds a lock)."""
        address = identity.address.raw
        tx = make_tx(identity, chain_id, kind, self.next_nonce(address), **fields)
        self.admit(tx)
        self._custody[address] = identity
        return tx

    def _queue(self, tx: Transaction) -> bool:
        ahead = tx.nonce > self.next_nonce(tx.sender)
        queue = self._queued.get(tx.sender, {})
        room = len(queue) < MAX_QUEUED_PER_ACCOUNT and sum(map(len, self._queued.values())) < (
            MAX_QUEUED
        )
        if not (ahead and room and tx.chain_id == self._pending.chain_id):
            return False
        if not is_signed_by_signer(tx):  # a forgery must not take a stranger's place
            return False
        self._queued.setdefault(tx.sender, {})[tx.nonce] = tx
        return True

    def _promote(self, sender: bytes) -> None:
        """Pool the queued transactions of ``sender`` whose turn has come."""
        queue = self._queued.get(sender)
        while queue:
            tx = queue.pop(self.next_nonce(sender), None)
            if tx is None:
                break
            try:
                self.admit(tx)  # promotes the next one in turn
            except LedgerError as e:
                log.debug("queued tx dropped: %s", e)
                break
        if sender in self._queued:
            nonce = self.next_nonce(sender)
            stale = [n for n in self._queued[sender] if n < nonce]
            for n in stale:
                del self._queued[sender][n]
            if not self._queued[sender]:
                del self._queued[sender]

    # -- after a block --------------------------------------------------------------------

    def settle(self, state: State, included: Iterable[Transaction]) -> list[Transaction]:
        """``state`` is the chain's after a block that carried ``included``: drop those,
        replay the rest on ``state``. Returns the transactions re-signed meanwhile (the
        caller gossips them)."""
        gone = {tx_id(tx) for tx in included}
        waiting = [tx for txid, tx in self._txs.items() if txid not in gone]
        self._txs = OrderedDict()
        self._pending = state.copy()
        resigned: list[Transaction] = []
        for tx in waiting:
            identity = self._custody.get(tx.sender)
            expected = self.next_nonce(tx.sender)
            # Only an escrow is re-signed: it is idempotent per (job, payer), so if the old
            # version is included elsewhere the new one is refused. A re-signed transfer
            # could pay twice.
            if tx.nonce != expected and identity is not None and tx.kind == TxKind.ESCROW:
                tx = sign(tx.replace(nonce=expected), identity)
                resigned.append(tx)
            try:
                self.admit(tx)
            except LedgerError as e:
                if tx in resigned:
                    resigned.remove(tx)
                if identity is None and self._queue(tx):
                    continue  # ahead of a transaction that left: it may still come
                log.info("dropped tx %s (nonce %d): %s", tx_id(tx).hex()[:12], tx.nonce, e)
        for sender in list(self._queued):
            self._promote(sender)
        return resigned
