"""The chain service: ledger state, mempool, Tendermint consensus over gossip, block
production with the certified work the node has seen.

The pure parts live in :mod:`aipg.stake`: the ledger (``apply_block``), the consensus
state machine (:class:`aipg.stake.consensus.Consensus`) and the sign-record. This
module is their async shell:

- messages on ``/aipg/1/consensus`` go into the machine; its effects come out as
  gossip (Broadcast), trio timers (ScheduleTimeout), applied blocks (Decide) and
  double-sign evidence for the next block (Evidence);
- after a decision the next height starts once the target block time has passed
  since the last block (Tendermint's timeout_commit), so blocks come at the genesis'
  pace rather than as fast as the network can vote;
- a proposal carries the mempool's valid transactions and the certificates and fraud
  evidence the :class:`~aipg.node.work.WorkTracker` has decided but no block has yet.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import trio

from aipg.gossip import GossipError, GossipHost
from aipg.pouw import Certificate, FraudEvidence, PouwError
from aipg.stake.block import Block, Commit, DoubleSignEvidence, ProposalMessage, Vote
from aipg.stake.builder import make_block
from aipg.stake.chain import Chain
from aipg.stake.consensus import Broadcast, Consensus, Decide, Evidence, ScheduleTimeout, Timeouts
from aipg.stake.ledger import apply_block, check_transaction
from aipg.stake.state import State
from aipg.stake.sync import SyncError, SyncServer, sync_from
from aipg.stake.tokenomics import split_reward
from aipg.stake.tx import Transaction, TxKind, make_tx
from aipg.stake.types import LedgerError
from aipg.wire import Address, Identity, WireError, decode, encode, require_signature

from .messages import topic

if TYPE_CHECKING:
    from .work import WorkTracker

log = logging.getLogger("aipg.node.chain")

MAX_MEMPOOL = 10_000
MAX_BLOCK_TXS = 1_000
MAX_BLOCK_CERTS = 500


class ChainService:
    """Owns the node's view of the chain. ``identity`` votes and proposes when the node
    is a validator (None: follow only)."""

    def __init__(
        self,
        chain: Chain,
        host: GossipHost,
        identity: Identity | None,
        sign_record,
        tracker: WorkTracker,
        now_ms: Callable[[], int],
        *,
        double_sign: bool = False,
    ):
        self.double_sign = double_sign
        self.chain = chain
        state = chain.state
        self.host = host
        self.identity = identity
        self.sign_record = sign_record
        self.tracker = tracker
        self.now_ms = now_ms
        self.sync_server = SyncServer(chain.store)
        self._highest_seen = state.height
        self._syncing = False
        self.mempool: OrderedDict[bytes, Transaction] = OrderedDict()
        self.evidence: list[DoubleSignEvidence] = []
        self._recent_commits: dict[int, Commit] = {}
        self.job_rewards: dict[bytes, int] = {}
        self.new_block = trio.Event()
        self._timers: trio.Nursery | None = None
        self.consensus = self._new_consensus()
        self._last_block_ms = now_ms()
        # Our own proposal and votes of the current height, re-gossiped until it is
        # decided: a message sent before a peer subscribed is otherwise lost, and
        # Tendermint's liveness assumes every message eventually arrives.
        self._own: list[ProposalMessage | Vote] = []

    def _new_consensus(self) -> Consensus:
        """A consensus machine for the height after our last finalized block."""
        s = self.state
        return Consensus(
            chain_id=s.chain_id,
            height=s.height + 1,
            validators=s.validators,
            app=self,
            identity=self.identity,
            sign_record=self.sign_record,
            timeouts=Timeouts.from_params(s.params),
        )

    @property
    def state(self) -> State:
        return self.chain.state

    # -- queries (WorkTracker's ChainView, gateway, API) ------------------------------------

    @property
    def height(self) -> int:
        return self.state.height

    @property
    def committee_size(self) -> int:
        return self.state.params.committee_size

    def validator_snapshot_at(self, height: int) -> Mapping[bytes, int] | None:
        return self.state.validator_snapshot_at(height)

    def finalized_hash(self, height: int) -> bytes | None:
        return self.chain.block_hash_at(height)

    def bond_of(self, key: bytes) -> int:
        return self.state.bond(key).stake

    def work_paid(self, job_id: bytes) -> int | None:
        return self.job_rewards.get(job_id)

    def next_nonce(self, address: bytes) -> int:
        """The account's next nonce, counting its transactions waiting in the mempool."""
        nonce = self.state.account(address).nonce
        pending = [tx.nonce for tx in self.mempool.values() if tx.sender == address]
        return max([nonce, *(n + 1 for n in pending)])

    # -- transactions -----------------------------------------------------------------------

    async def submit_tx(self, tx: Transaction) -> bytes:
        """Check ``tx`` against the state (with the mempool ahead of it), keep it and
        gossip it. Returns its id; raises LedgerError saying why it is refused."""
        txid = self._admit(tx)
        await self.host.publish(topic("txs"), encode(tx))
        return txid

    def _admit(self, tx: Transaction) -> bytes:
        try:
            require_signature(tx)
        except WireError as e:
            raise LedgerError(f"transaction {e.reason}") from None
        txid = _tx_id(tx)
        if txid in self.mempool:
            return txid
        if len(self.mempool) >= MAX_MEMPOOL:
            raise LedgerError("the mempool is full; try again in a few blocks")
        scratch = self._state_with_mempool()
        check_transaction(scratch, tx)
        self.mempool[txid] = tx
        return txid

    def _state_with_mempool(self) -> State:
        from aipg.stake.ledger import apply_transaction

        s = self.state.copy()
        for tx in self.mempool.values():
            try:
                check_transaction(s, tx)
                apply_transaction(s, tx, self.identity.public_bytes if self.identity else bytes(32))
            except LedgerError:
                continue
        return s

    async def escrow(self, payer: Identity, job_id: bytes, fee: int) -> None:
        """Lock a paid job's fee from ``payer``'s account (a signed ESCROW transaction).
        Raises ValueError saying why the ledger refuses it."""
        tx = make_tx(
            payer,
            self.state.chain_id,
            TxKind.ESCROW,
            self.next_nonce(Address.from_public_key(payer.public_bytes).raw),
            amount=fee,
            job_id=job_id,
        )
        try:
            await self.submit_tx(tx)
        except LedgerError as e:
            raise ValueError(str(e)) from None

    # -- consensus Application ------------------------------------------------------------

    def propose(self, height: int, round_: int) -> Block:
        assert self.identity is not None
        scratch = self.state.copy()
        txs = []
        from aipg.stake.ledger import apply_transaction

        for tx in list(self.mempool.values())[:MAX_BLOCK_TXS]:
            try:
                check_transaction(scratch, tx)
                apply_transaction(scratch, tx, self.identity.public_bytes)
                txs.append(tx)
            except LedgerError:
                continue
        certs, frauds = self.tracker.pending_outcomes()
        certs = [c for c in certs if c.receipt.job_id not in self.state.certified][:MAX_BLOCK_CERTS]
        last_commit = self._commit_of(self.state.height)
        block = make_block(
            self.state,
            self.identity.public_bytes,
            time_ms=max(self.now_ms(), self.state.time_ms + 1),
            last_commit=last_commit,
            transactions=txs,
            certificates=certs,
            double_signs=self.evidence[:10],
            frauds=frauds[:MAX_BLOCK_CERTS],
        )
        if not self.valid(block):
            # Something in the pools no longer applies (e.g. a certificate too old):
            # propose the transactions alone rather than nothing at all.
            block = make_block(
                self.state,
                self.identity.public_bytes,
                time_ms=block.header.time_ms,
                last_commit=last_commit,
                transactions=txs,
            )
        return block

    def valid(self, block: Block) -> bool:
        try:
            apply_block(self.state, block)
        except (LedgerError, PouwError) as e:
            log.info("block %d is not valid: %s", block.height, e)
            return False
        return True

    # -- the async shell ----------------------------------------------------------------

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        try:
            await self._run(task_status)
        finally:
            self.chain.close()  # the last committed block stays; nothing is half-written

    async def _run(self, task_status) -> None:
        async with trio.open_nursery() as nursery:
            self._timers = nursery
            task_status.started()
            if self.state.height == 0:
                # As in Tendermint, consensus starts at genesis time, so the genesis
                # validators begin height 1 together rather than one after another.
                wait_ms = self.state.genesis.genesis_time_ms - self.now_ms()
                if wait_ms > 0:
                    log.info("waiting %.1f s for genesis time", wait_ms / 1000)
                    await trio.sleep(wait_ms / 1000)
                self._last_block_ms = self.now_ms()
            await self._carry_out(self.consensus.start())
            await self._regossip()

    async def _regossip(self) -> None:
        interval = max(0.5, self.state.params.timeout_vote_ms / 1000)
        while True:
            await trio.sleep(interval)
            for msg in list(self._own):
                await self.host.publish(topic("consensus"), encode(msg))

    async def on_consensus_message(self, msg: ProposalMessage | Vote) -> None:
        log.debug("consensus in: %s", _describe(msg))
        height = msg.proposal.height if isinstance(msg, ProposalMessage) else msg.height
        if height > self.state.height + 1:
            # The network is ahead of us (we started late or restarted): catch up.
            self._highest_seen = max(self._highest_seen, height - 1)
            if not self._syncing:
                self._syncing = True
                self._timers.start_soon(self._catch_up)
            return
        await self._carry_out(self.consensus.on_message(msg))

    async def _catch_up(self) -> None:
        """Fetch, verify and apply finalized blocks from peers until we reach the
        network, then restart consensus at our new height."""
        try:
            for peer in self.host.connected_peers():
                if self.state.height >= self._highest_seen:
                    break
                try:
                    applied = await sync_from(_Finalizer(self), self.host.request, peer, timeout=10.0)
                except (SyncError, GossipError) as e:
                    log.info("sync from %s failed: %s", peer.short(), e)
                    continue
                log.info("synced %d block(s) from %s; height %d", applied, peer.short(), self.state.height)
            self._own.clear()
            self.consensus = self._new_consensus()
            self._last_block_ms = self.now_ms()
            await self._carry_out(self.consensus.start())
        finally:
            self._syncing = False

    async def serve_sync(self, _peer, request: bytes) -> bytes:
        return self.sync_server.handle(request)

    def on_tx(self, tx: Transaction) -> None:
        try:
            self._admit(tx)
        except LedgerError as e:
            log.debug("tx from gossip refused: %s", e)

    async def _carry_out(self, effects: list) -> None:
        for effect in effects:
            log.debug("consensus effect: %s", type(effect).__name__ if not isinstance(effect, Broadcast) else "Broadcast " + _describe(effect.message))
            if isinstance(effect, Broadcast):
                self._own.append(effect.message)
                await self.host.publish(topic("consensus"), encode(effect.message))
                if self.double_sign and isinstance(effect.message, Vote) and self.identity:
                    from .faults import conflicting_prevote

                    twin = conflicting_prevote(self.identity, effect.message)
                    if twin is not None:
                        await self.host.publish(topic("consensus"), encode(twin))
                # Gossip does not deliver our own messages back to us.
                await self._carry_out(self.consensus.on_message(effect.message))
            elif isinstance(effect, ScheduleTimeout):
                self._timers.start_soon(self._timeout, effect)
            elif isinstance(effect, Decide):
                await self._decide(effect.block, effect.commit)
            elif isinstance(effect, Evidence):
                self.evidence.append(effect.evidence)

    async def _timeout(self, t: ScheduleTimeout) -> None:
        await trio.sleep(t.delay_ms / 1000)
        await self._carry_out(self.consensus.on_timeout(t.height, t.round, t.step))

    async def _decide(self, block: Block, commit: Commit) -> None:
        if block.height != self.state.height + 1:
            return
        self.finalize(block, commit)
        self._timers.start_soon(self._next_height)

    def finalize(self, block: Block, commit: Commit) -> None:
        """Verify, apply and store a finalized block (from consensus or from sync), then
        settle what it carries: job rewards, included work, spent transactions."""
        rewards = self._job_rewards(block)
        self.chain.finalize(block, commit)  # raises LedgerError; nothing stored then
        self._recent_commits[block.height] = commit
        self._recent_commits.pop(block.height - 64, None)
        self.job_rewards.update(rewards)
        for cert in block.body.certificates:
            self.tracker.mark_included(cert.receipt.job_id, block.height)
        for ev in block.body.frauds:
            self.tracker.mark_included(ev.receipt.job_id, block.height)
        included = {_tx_id(tx) for tx in block.body.transactions}
        for txid in list(self.mempool):
            if txid in included:
                del self.mempool[txid]
        self.evidence = [e for e in self.evidence if e not in block.body.double_signs]
        log.info(
            "block %d: %d tx, %d certificate(s), %d fraud(s); proposer %s",
            block.height,
            len(block.body.transactions),
            len(block.body.certificates),
            len(block.body.frauds),
            block.header.proposer.hex()[:8],
        )
        self._own.clear()
        self.new_block.set()
        self.new_block = trio.Event()

    def _commit_of(self, height: int) -> Commit | None:
        if height == 0:
            return None
        commit = self._recent_commits.get(height)
        if commit is None:
            fb = self.chain.store.finalized(height)
            commit = fb.commit if fb else None
        return commit

    async def _next_height(self) -> None:
        """Tendermint's timeout_commit: pace heights at the target block time."""
        target = self.state.params.target_block_time_ms
        wait_ms = self._last_block_ms + target - self.now_ms()
        if wait_ms > 0:
            await trio.sleep(wait_ms / 1000)
        self._last_block_ms = self.now_ms()
        await self._carry_out(self.consensus.next_height(self.state.validators))

    def _job_rewards(self, block: Block) -> dict[bytes, int]:
        """What each certified job in ``block`` pays its worker: its share of the work
        pool by work units, plus its escrowed fee (paid tier)."""
        certs = block.body.certificates
        if not certs:
            return {}
        reward = self.state.emission.block_reward(block.height)
        pool = self.state.work_pool + split_reward(self.state.params, reward).work
        total = sum(c.receipt.work_units for c in certs)
        out = {}
        for c in certs:
            escrow = self.state.escrows.get(c.receipt.job_id)
            out[c.receipt.job_id] = pool * c.receipt.work_units // total + (
                escrow.amount if escrow else 0
            )
        return out

    def decode_consensus(self, data: bytes) -> ProposalMessage | Vote:
        return decode(data, (ProposalMessage, Vote))


class _Finalizer:
    """What :func:`aipg.stake.sync.sync_from` drives: our height and our finalize step."""

    def __init__(self, service: ChainService):
        self.service = service

    @property
    def height(self) -> int:
        return self.service.state.height

    def finalize(self, block: Block, commit: Commit) -> None:
        self.service.finalize(block, commit)


def _describe(msg: ProposalMessage | Vote) -> str:
    if isinstance(msg, ProposalMessage):
        p = msg.proposal
        return f"proposal h={p.height} r={p.round} by {p.signer.hex()[:8]}"
    return f"vote h={msg.height} r={msg.round} step={msg.step} {msg.block_hash.hex()[:8]} by {msg.signer.hex()[:8]}"


def _tx_id(tx: Transaction) -> bytes:
    from aipg.wire.codec import record_digest

    return record_digest(tx)


# Re-exported for the node's topic handlers.
__all__ = ["Certificate", "ChainService", "FraudEvidence"]
