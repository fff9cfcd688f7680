"""The chain service: the node's chain store, mempool, block contents and sync, around
stake's consensus driver.

The pure parts live in :mod:`aipg.stake`: the ledger (``apply_block``), the consensus
state machine and its trio driver (:class:`aipg.stake.driver.ConsensusDriver`), the
store, the sign-record and block sync. This module connects them to the node:

- messages on ``/aipg/1/consensus`` (proposals, votes, and finalized blocks peers send
  to help a node that is behind) go to the driver; what it publishes goes to gossip;
- the driver paces heights at the genesis' target block time;
- a proposal carries the mempool's valid transactions and the certificates and fraud
  evidence the :class:`~aipg.node.services.work.WorkTracker` has decided but no block has yet;
- each finalized block settles what it carried: job rewards (for the API), included
  work (for the tracker), spent transactions (for the :class:`~.mempool.Mempool`, which
  replays the rest on the new state and re-signs displaced custodial escrows);
- nonces of the accounts this node signs for (the paid tier's) are picked in one place,
  :meth:`ChainService.escrow`, one account at a time and gossiped in nonce order;
- consensus starts at genesis time, so the genesis validators begin height 1 together;
- a node far behind (started late, restarted) fetches and verifies the missing blocks
  with ``sync`` from a peer, then consensus resumes at its new height.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Mapping

import trio

from aipg.gossip import GossipError, GossipHost
from aipg.node.overlay import ring_neighbours
from aipg.node.protocol.checked import CheckedMessages
from aipg.node.protocol.messages import topic
from aipg.pouw import (
    Certificate,
    CommitteeRules,
    ConflictingVerdicts,
    EquivocationEvidence,
    FraudEvidence,
    FraudReview,
    Job,
    Receipt,
    StreamEvidence,
    Tier,
    VerdictCommit,
    receipt_id,
)
from aipg.pouw.bounds import evict_over
from aipg.pouw.forced import ForcedError
from aipg.stake.assign import claim_order
from aipg.stake.audit import appeal_opens, audit_due
from aipg.stake.block import Block, Commit, FinalizedBlock, ProposalMessage, Vote
from aipg.stake.chain import Chain
from aipg.stake.challenge import ChallengeAnswer, WithholdingChallenge
from aipg.stake.driver import BlockContents, ConsensusDriver
from aipg.stake.reveal import commit_closes, commitments, review_closes, review_commitments
from aipg.stake.state import State
from aipg.stake.sync import SyncError, SyncServer, sync_from
from aipg.stake.tx import Transaction, TxKind
from aipg.stake.types import LedgerError
from aipg.wire import Identity, PeerId, decode, encode

from .mempool import Mempool
from .work import WorkTracker

log = logging.getLogger("aipg.node.chain")

MAX_BLOCK_TXS = 1_000
MAX_BLOCK_CERTS = 500
CONSENSUS_INBOX = 1024
VALIDATOR_LINK_S = 10.0  # how often a validator checks its overlay links (D105)
VALIDATOR_LINK_FIRST_S = 0.5  # the first retry of a missing link; doubles up to the above
# What recent jobs were paid, for the API (the ledger has the payments themselves): the
# oldest paid job is forgotten first; at 500 certificates a block, a few hundred blocks.
MAX_JOB_REWARDS = 65_536


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
        overlay: bool = True,
    ):
        self.chain = chain
        self.host = host
        self.identity = identity
        self.tracker = tracker
        self.now_ms = now_ms
        self.double_sign = double_sign
        self.overlay = overlay  # off only by the test-only fault no_overlay (D105)
        self.sync_server = SyncServer(chain.store)
        self.mempool = Mempool(chain.state, identity.public_bytes if identity else bytes(32))
        self._account_locks: dict[bytes, trio.Lock] = {}  # custodial accounts (api_keys.json)
        self.job_rewards: OrderedDict[bytes, int] = OrderedDict()  # oldest paid first
        self.new_block = trio.Event()
        self.on_block: list[Callable[[Block], None]] = []  # after each block is settled
        self._highest_seen = chain.height
        self._syncing = False
        self.blocks_published = 0  # blocks we proposed and sent on "blocks" (D102)
        self.overlay_linked = 0  # overlay neighbours connected at the last check (D105)
        self._inbox_send, self._inbox = trio.open_memory_channel[bytes](CONSENSUS_INBOX)
        # consensus messages the topic validator decoded and verified (D90)
        self.checked = CheckedMessages()
        self.driver = ConsensusDriver(
            chain,
            identity,
            sign_record,
            self._publish,
            contents=self._contents,
            clock_ms=now_ms,
            on_finalized=self._settle,
            on_refused=self._refused,
            block_interval_ms=chain.state.params.target_block_time_ms,
            decode_message=self.checked.decode,
            verify=self.checked.verified,
        )

    @property
    def state(self) -> State:
        return self.chain.state

    # -- queries (gateway, API) -------------------------------------------------------------

    @property
    def height(self) -> int:
        return self.state.height

    def bond_of(self, key: bytes) -> int:
        return self.state.bond(key).stake

    async def wait_for_block(self) -> None:
        """Return when the next block is final here."""
        await self.new_block.wait()

    def work_paid(self, job_id: bytes) -> int | None:
        return self.job_rewards.get(job_id)

    def claim_order(self, job: Job, claimants: list[bytes]) -> list[bytes] | None:
        """The chain's order for a job's claimants (D58), None until its draw is known."""
        return claim_order(self.state, job, claimants)

    def next_nonce(self, address: bytes) -> int:
        """The account's next nonce, counting its transactions waiting in the mempool."""
        return self.mempool.next_nonce(address)

    # -- transactions -----------------------------------------------------------------------

    async def submit_tx(self, tx: Transaction) -> bytes:
        """Check ``tx`` against the state (with the mempool ahead of it), keep it and
        gossip it. Returns its id; raises LedgerError saying why it is refused."""
        txid = self.mempool.admit(tx)
        await self.host.publish(topic("txs"), encode(tx))
        return txid

    async def escrow(self, payer: Identity, job_id: bytes, fee: int) -> None:
        """Lock a paid job's fee from ``payer``'s account: an ESCROW transaction signed
        at the account's next nonce, in the mempool and on ``txs`` when this returns.
        Raises ValueError with the ledger's reason when it is refused (no nonce is used).

        One account at a time, until its transaction is gossiped: nonces are allocated
        without a gap and leave in nonce order, so peers' mempools take them in turn."""
        lock = self._account_locks.setdefault(payer.address.raw, trio.Lock())
        async with lock:
            try:
                tx = self.mempool.sign(
                    payer, self.state.chain_id, TxKind.ESCROW, amount=fee, job_id=job_id
                )
            except LedgerError as e:
                raise ValueError(str(e)) from None
            await self.host.publish(topic("txs"), encode(tx))

    async def commit_job(self, sender: Identity, job_id: bytes) -> None:
        """Commit ``job_id`` on chain (a COMMIT from ``sender``'s account, D56): its
        committee is drawn by the beacon two blocks after the block that carries it.
        Raises ValueError with the ledger's reason when it is refused."""
        lock = self._account_locks.setdefault(sender.address.raw, trio.Lock())
        async with lock:
            try:
                tx = self.mempool.sign(
                    sender,
                    self.state.chain_id,
                    TxKind.COMMIT,
                    job_id=job_id,
                    fee=self.state.params.commit_min_fee,  # D83
                )
            except LedgerError as e:
                raise ValueError(str(e)) from None
            await self.host.publish(topic("txs"), encode(tx))

    async def register_worker(self, worker: Identity, model_id: bytes, declared: int) -> None:
        """Register ``worker`` for ``model_id`` with ``declared`` work units a block of
        capacity (REGISTER_WORKER, D58). Raises ValueError with the ledger's reason."""
        lock = self._account_locks.setdefault(worker.address.raw, trio.Lock())
        async with lock:
            try:
                tx = self.mempool.sign(
                    worker,
                    self.state.chain_id,
                    TxKind.REGISTER_WORKER,
                    amount=declared,
                    job_id=model_id,
                )
            except LedgerError as e:
                raise ValueError(str(e)) from None
            await self.host.publish(topic("txs"), encode(tx))

    async def _gossip_txs(self, txs: list[Transaction]) -> None:
        for tx in txs:
            await self.host.publish(topic("txs"), encode(tx))

    # -- consensus ------------------------------------------------------------------------

    def _contents(self, state: State) -> BlockContents:
        """What this node would propose: mempool transactions and decided work, in
        arrival order; the driver keeps what applies (stake's ``prepare_block``)."""
        certs, frauds = self.tracker.pending_outcomes()
        txs = self.mempool.transactions()[:MAX_BLOCK_TXS]
        return BlockContents(
            txs,
            certs[:MAX_BLOCK_CERTS],
            frauds[:MAX_BLOCK_CERTS],
            self.tracker.pending_equivocations(),
            self.tracker.pending_conflicts(),
            self.tracker.pending_reviews(),
            self.tracker.pending_commits(),
            self.tracker.pending_challenges(),
            self.tracker.pending_answers(),
            junk_streams=self.tracker.pending_junk_streams(),
            forced_errors=self.tracker.pending_forced(),
        )

    def _refused(self, refused: list[tuple[object, str]]) -> None:
        """Work a proposal left out can never be included: the tracker stops offering
        it, except a paid job's certificate whose escrow waits in the mempool (D31: it
        is includable from the escrow's block on). Transactions stay until a block
        settles the mempool."""
        for item, reason in refused:
            if isinstance(item, Certificate) and self._escrow_on_its_way(item):
                continue
            if isinstance(item, Certificate | FraudEvidence):
                self.tracker.set_aside(item, reason)
            elif isinstance(item, EquivocationEvidence):
                self.tracker.settle_equivocation(item)
            elif isinstance(item, StreamEvidence):
                self.tracker.settle_junk_stream(item)
            elif isinstance(item, ConflictingVerdicts):
                self.tracker.settle_conflict(item)
            elif isinstance(item, FraudReview):
                self.tracker.settle_review(item, carried=False)
            elif isinstance(item, VerdictCommit):
                self.tracker.settle_commits([item])
            elif isinstance(item, WithholdingChallenge):
                self.tracker.settle_challenges(challenges=[item])
            elif isinstance(item, ChallengeAnswer):
                self.tracker.settle_challenges(answers=[item])
            elif isinstance(item, ForcedError):
                log.info("a forced error was refused: %s", reason)
                self.tracker.settle_forced([item])

    def _escrow_on_its_way(self, cert: Certificate) -> bool:
        job = cert.job
        return job.tier == Tier.PAID and self.mempool.escrow_pending(
            cert.receipt.job_id, job.client
        )

    def _settle(self, block: Block, commit: Commit, _before: State) -> None:
        """After a block is final: record what its jobs were paid (the ledger's own
        figures), mark its work included, settle the mempool on the new state (and
        gossip the escrows it re-signed)."""
        self.job_rewards.update(self.state.paid)
        evict_over(self.job_rewards, MAX_JOB_REWARDS)
        for outcome in (*block.body.certificates, *block.body.frauds):
            self.tracker.mark_included(outcome, block.height)
        for evidence in block.body.equivocations:
            self.tracker.settle_equivocation(evidence)
        for junk in block.body.junk_streams:
            self.tracker.settle_junk_stream(junk)
        for conflict in block.body.conflicting_verdicts:
            self.tracker.settle_conflict(conflict)
        for review in block.body.reviews:
            self.tracker.settle_review(review, carried=True)
        self.tracker.settle_commits(block.body.verdict_commits)
        self.tracker.settle_challenges(block.body.challenges, block.body.answers)
        self.tracker.answers_carried(block.body.answers)
        self.tracker.settle_forced(block.body.forced_errors)
        self.tracker.on_block()  # reveals whose commitment this block carried now count
        resigned = self.mempool.settle(self.state, block.body.transactions)
        if resigned:
            self._nursery.start_soon(self._gossip_txs, resigned)
        if self.identity is not None and block.header.proposer == self.identity.public_bytes:
            # the followers' copy (D102): its proposer sends it, every node passes it on once
            data = encode(FinalizedBlock(block, commit))
            self.blocks_published += 1
            self._nursery.start_soon(self.host.publish, topic("blocks"), data)
        for hook in self.on_block:
            hook(block)
        log.info(
            "block %d: %d tx, %d certificate(s), %d fraud(s), %d double sign(s), "
            "%d equivocation(s); proposer %s",
            block.height,
            len(block.body.transactions),
            len(block.body.certificates),
            len(block.body.frauds),
            len(block.body.double_signs),
            len(block.body.equivocations),
            block.header.proposer.hex()[:8],
        )
        self.new_block.set()
        self.new_block = trio.Event()

    async def _publish(self, data: bytes) -> None:
        await self.host.publish(topic("consensus"), data)
        if self.double_sign and self.identity is not None:
            from .faults import conflicting_prevote  # test-only fault

            msg = decode(data, (ProposalMessage, Vote, FinalizedBlock))
            if isinstance(msg, Vote) and msg.signer == self.identity.public_bytes:
                twin = conflicting_prevote(self.identity, msg)
                if twin is not None:
                    await self.host.publish(topic("consensus"), encode(twin))

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                if self.chain.height == 0:
                    wait_ms = self.state.genesis.genesis_time_ms - self.now_ms()
                    if wait_ms > 0:
                        log.info("waiting %.1f s for genesis time", wait_ms / 1000)
                        await trio.sleep(wait_ms / 1000)
                await nursery.start(self.driver.run, self._inbox)
                if self.identity is not None and self.overlay:
                    nursery.start_soon(self._link_validators)
        finally:
            self.chain.close()  # the last committed block stays; nothing is half-written

    async def _link_validators(self) -> None:
        """Keep links to this validator's overlay neighbours (D105): its ring
        neighbours in the current validator set (aipg.node.overlay), a graph that is
        connected by construction, since only validators carry "consensus" (followers
        are not subscribed). A missing link is dialed on demand (address book, DHT
        lookup, relays), all of them at once, every VALIDATOR_LINK_S; the host keeps
        the neighbours' connections however idle, whichever end dialed; other
        connections between validators (a request's) close when idle as usual."""
        me = self.identity.public_bytes
        wait = VALIDATOR_LINK_FIRST_S
        while True:
            keys = [v.key for v in self.state.validators.validators]
            neighbours = [PeerId.from_public_key(k) for k in ring_neighbours(keys, me)]
            self.host.kept_peers = frozenset(neighbours)
            missing = [p for p in neighbours if not self.host.is_connected(p)]
            # behind NAT, a link a public neighbour reached us by through a relay is
            # dialed again directly, and the direct connection replaces the circuit
            natted = self.host.reach.reachability == "private"
            circuits = [p for p in neighbours if natted and self._through_relay(p)]
            if missing or circuits:
                async with trio.open_nursery() as nursery:
                    for peer in missing:
                        nursery.start_soon(self.host.ensure_connection, peer)
                    for peer in circuits:
                        nursery.start_soon(self.host.reverse, peer)
            self.overlay_linked = linked = sum(self.host.is_connected(p) for p in neighbours)
            # a link still missing (a neighbour starting, or not yet in the address book
            # or the DHT) is tried again soon, then less often: a dead one every 10 s
            wait = VALIDATOR_LINK_S if linked == len(neighbours) and not circuits else wait
            await trio.sleep(wait)
            wait = min(2 * wait, VALIDATOR_LINK_S)

    def _through_relay(self, peer: PeerId) -> bool:
        """Whether our link to ``peer`` is a circuit while its record shows an address
        we can dial (it is public): connection reversal's case (D109)."""
        record = self.host.peer_record(peer)
        return (
            self.host.is_relayed(peer)
            and record is not None
            and any(not a.is_relayed for a in record.multiaddrs())
        )

    async def on_consensus_data(self, data: bytes) -> None:
        """A consensus message from gossip (already decoded and checked by the topic
        validator): to the driver, or, when it shows the network is ahead, to sync."""
        msg = self.checked.decode(data, (ProposalMessage, Vote, FinalizedBlock))
        if isinstance(msg, FinalizedBlock):
            height = msg.block.height - 1
        else:
            height = msg.proposal.height if isinstance(msg, ProposalMessage) else msg.height
        if height > self.chain.height + 1:
            self._highest_seen = max(self._highest_seen, height - 1)
            if not self._syncing:
                self._syncing = True
                self._nursery.start_soon(self._catch_up)
            return
        try:
            self._inbox_send.send_nowait(data)
        except trio.WouldBlock:
            log.warning("consensus inbox full: dropped a message (it is re-sent)")

    def saw_height(self, height: int) -> None:
        """Someone sent block ``height``, too far ahead to check: sync if we are behind
        (every block fetched is verified by its commit)."""
        if height > self.chain.height + 1:
            self._highest_seen = max(self._highest_seen, height - 1)
            if not self._syncing:
                self._syncing = True
                self._nursery.start_soon(self._catch_up)

    async def _catch_up(self) -> None:
        """Fetch and verify finalized blocks from peers until we reach the network, then
        have consensus resume at our new height."""
        try:
            for peer in self.host.connected_peers():
                if self.chain.height >= self._highest_seen:
                    break
                try:
                    applied = await sync_from(
                        _Finalizer(self), self.host.request, peer, timeout=10.0
                    )
                except (SyncError, GossipError) as e:
                    log.info("sync from %s failed: %s", peer.short(), e)
                    continue
                log.info(
                    "synced %d block(s) from %s; height %d",
                    applied,
                    peer.short(),
                    self.chain.height,
                )
            self.driver.request_resync()
        finally:
            self._syncing = False

    async def serve_sync(self, _peer, request: bytes) -> bytes:
        return self.sync_server.handle(request)

    def on_tx(self, tx: Transaction) -> None:
        self.mempool.offer(tx)


class FinalizedChain:
    """The work tracker's view of a chain store: what committees are drawn from."""

    def __init__(self, chain: Chain):
        self.chain = chain

    @property
    def committee_size(self) -> int:
        return self.chain.state.params.committee_size

    @property
    def committee_rules(self) -> CommitteeRules:
        return self.chain.state.params.committee_rules()

    @property
    def job_committee_rules(self) -> CommitteeRules:
        """A job's committee (D98: on mainnet fewer seats than a review's)."""
        return self.chain.state.params.job_committee_rules()

    def validator_snapshot_at(self, height: int) -> Mapping[bytes, int] | None:
        return self.chain.state.validator_snapshot_at(height)

    def finalized_hash(self, height: int) -> bytes | None:
        return self.chain.block_hash_at(height)

    @property
    def height(self) -> int:
        return self.chain.state.height

    @property
    def commit_reveal(self) -> bool:
        """Whether verdicts are committed before they are revealed on this chain."""
        return self.chain.state.params.verdict_commit_blocks > 0

    def committed(
        self, receipt_id: bytes, member: bytes, job_id: bytes | None = None
    ) -> bytes | None:
        """The member's commitment a finalized block carried in time, if any (only one
        naming ``job_id``, when given: what counts for that job's outcomes)."""
        lookup = commitments(self.chain.state, job_id)
        return None if lookup is None else lookup(receipt_id, member)

    def commit_closes(self, receipt_id: bytes) -> int | None:
        """The last height that may carry a commitment on the receipt (None: none yet)."""
        return commit_closes(self.chain.state, receipt_id)

    @property
    def challenge_period(self) -> int:
        return self.chain.state.params.challenge_period

    def beacon_at(self, height: int) -> bytes | None:
        return self.chain.state.beacon_at(height)

    def committed_at(self, job_id: bytes) -> int | None:
        return self.chain.state.commitments.get(job_id)

    def review_committed(self, evidence, member: bytes) -> bytes | None:
        """The reviewer's commitment a finalized block carried for the review of
        ``evidence`` (or its first vote's, D76), if any."""
        lookup = review_commitments(self.chain.state, evidence)
        return None if lookup is None else lookup(receipt_id(evidence.receipt), member)

    @property
    def forced_error_bps(self) -> int:
        return self.chain.state.params.forced_error_bps

    def review_closes(self, receipt_id_: bytes) -> int | None:
        """The last height that may carry a review commitment (None: none yet)."""
        return review_closes(self.chain.state, receipt_id_)

    def audit_due(self, job: Job, receipt: Receipt) -> bool | None:
        """Whether the committee must check this receipt (D79): True once its claim is
        drawn for audit, or while its audit is certain anyway (the worker's rate is
        100 %: a newcomer, a convicted worker, a small bond); False while its claim's
        draw is pending or it was paid unaudited; None when no claim is on chain yet
        and its audit is not certain."""
        return audit_due(self.chain.state, job, receipt)

    def paid_unaudited(self, job_id: bytes) -> bool:
        """Whether the job was settled on chain without a certificate (its claim drawn
        unaudited, or forfeited by a conviction)."""
        s = self.chain.state
        return job_id in s.certified and job_id not in s.claims

    def under_review(self, receipt_id_: bytes) -> bool:
        """Whether a conviction (fraud evidence or an appeal, D96) of this receipt is
        open, waiting for its review."""
        return receipt_id_ in self.chain.state.convictions

    def appeal_opens(self, job_id: bytes, receipt_id: bytes) -> int | None:
        """The first block that may carry an appeal of this audited, undecided claim
        (D96); None when it cannot be appealed."""
        return appeal_opens(self.chain.state, job_id, receipt_id)


class _Finalizer:
    """What :func:`aipg.stake.sync.sync_from` drives: our height, and the driver's one
    finalize step (so synced blocks are settled like decided ones)."""

    def __init__(self, service: ChainService):
        self.service = service

    @property
    def height(self) -> int:
        return self.service.chain.height

    def finalize(self, block: Block, commit: Commit) -> None:
        self.service.driver.app.finalize(block, commit)
