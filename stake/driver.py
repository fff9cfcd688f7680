"""The async shell around consensus: a trio service that feeds a :class:`Consensus`
machine with network messages and timeouts, proposes and checks blocks against the
:class:`Chain`, and finalizes decided blocks into the store.

It does no networking itself: messages arrive on a receive channel (the node's gossip
handler for the ``consensus`` topic feeds it) and go out through an injected
``publish(data)`` coroutine.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import NoReturn

import trio

from aipg.pouw import (
    Certificate,
    ConflictingVerdicts,
    EquivocationEvidence,
    FraudEvidence,
    FraudReview,
    StreamEvidence,
    VerdictCommit,
)
from aipg.wire import Identity, WireError, decode, encode, is_signed_by_signer

from .block import Block, Commit, DoubleSignEvidence, FinalizedBlock, ProposalMessage, Vote
from .builder import make_block
from .chain import Chain
from .challenge import ChallengeAnswer, WithholdingChallenge
from .consensus import Broadcast, Consensus, Decide, Evidence, ScheduleTimeout, Timeouts
from .ledger import apply_block
from .proposal import Candidates, prepare_block
from .signrecord import SignRecord
from .state import State
from .tx import Transaction
from .types import LedgerError

log = logging.getLogger("aipg.stake.driver")

# A proposal from further in the future than this is invalid (clock skew allowance).
MAX_CLOCK_DRIFT_MS = 10_000
EVENT_BUFFER = 1024
MAX_HELPED = 64  # heights per height change we send to peers that are behind


@dataclass
class BlockContents:
    """What a proposer would like in its block (its mempool and pouw pools, in order of
    preference); :func:`~aipg.stake.proposal.prepare_block` keeps what applies."""

    transactions: Sequence[Transaction] = ()
    certificates: Sequence[Certificate] = ()
    frauds: Sequence[FraudEvidence] = ()
    equivocations: Sequence[EquivocationEvidence] = ()
    conflicting_verdicts: Sequence[ConflictingVerdicts] = ()
    reviews: Sequence[FraudReview] = ()
    verdict_commits: Sequence[VerdictCommit] = ()
    challenges: Sequence[WithholdingChallenge] = ()
    answers: Sequence[ChallengeAnswer] = ()
    junk_streams: Sequence[StreamEvidence] = ()
    forced_errors: Sequence = ()  # aipg.pouw.forced.ForcedError (D75)


Contents = Callable[[State], BlockContents]


@dataclass
class ChainApp:
    """The ledger side of consensus: builds proposals and validates blocks on ``chain``."""

    chain: Chain
    me: bytes
    clock_ms: Callable[[], int]
    contents: Contents = lambda state: BlockContents()
    last_commit: Commit | None = None
    # Called after every finalized block with the state before it (the node settles
    # what the block carried: job rewards, included work, spent transactions).
    on_finalized: Callable[[Block, Commit, State], None] | None = None
    # Called with the candidates a proposal left out and the ledger's reason for each
    # (the node stops offering work that can never be included).
    on_refused: Callable[[list[tuple[object, str]]], None] | None = None
    evidence: list[DoubleSignEvidence] = field(default_factory=list)
    identity: Identity | None = None  # proves each proposal's beacon (D55)
    _checked: dict[bytes, State | None] = field(default_factory=dict)

    def propose(self, height: int, round_: int) -> Block:
        """Our block for the next height: the candidates that apply (see
        :func:`~aipg.stake.proposal.prepare_block`); never one our ledger rejects."""
        s = self.chain.state
        c = self.contents(s)
        time_ms = max(self.clock_ms(), s.time_ms + 1)
        evidence = [e for e in self.evidence if e.vote_a.height <= s.height]
        candidates = Candidates(
            transactions=c.transactions,
            certificates=c.certificates,
            frauds=c.frauds,
            double_signs=evidence,
            equivocations=c.equivocations,
            conflicting_verdicts=c.conflicting_verdicts,
            reviews=c.reviews,
            verdict_commits=c.verdict_commits,
            challenges=c.challenges,
            answers=c.answers,
            junk_streams=c.junk_streams,
            forced_errors=c.forced_errors,
        )
        builder = self.identity or self.me
        prepared = prepare_block(
            s, builder, candidates, time_ms=time_ms, last_commit=self.last_commit
        )
        refused = {id(item) for item, _ in prepared.refused}
        self.evidence = [e for e in self.evidence if id(e) not in refused]
        if prepared.refused and self.on_refused is not None:
            self.on_refused(prepared.refused)
        if self.valid(prepared.block):
            return prepared.block
        log.error("height %d: the prepared block does not apply; proposing it empty", height)
        return make_block(s, builder, time_ms=time_ms, last_commit=self.last_commit)

    def valid(self, block: Block) -> bool:
        h = block.hash
        if h not in self._checked:
            self._checked[h] = self._apply(block)
        return self._checked[h] is not None

    def _apply(self, block: Block) -> State | None:
        if block.header.time_ms > self.clock_ms() + MAX_CLOCK_DRIFT_MS:
            return None
        try:
            return apply_block(self.chain.state, block)
        except LedgerError:
            return None

    def finalize(self, block: Block, commit: Commit) -> None:
        """Verify, apply and store ``block`` (from consensus, a peer's help or sync)."""
        before = self.chain.state
        self.chain.finalize(block, commit)
        self.last_commit = commit
        if self.on_finalized is not None:
            self.on_finalized(block, commit, before)
        self._checked.clear()
        horizon = self.chain.height - self.chain.state.params.unbonding_period
        self.evidence = [e for e in self.evidence if e.vote_a.height >= horizon]
        applied = {(e.vote_a.signer, e.vote_a.height) for e in block.body.double_signs}
        self.evidence = [
            e for e in self.evidence if (e.vote_a.signer, e.vote_a.height) not in applied
        ]


class ConsensusDriver:
    """Runs consensus for one validator (or a non-voting follower, ``identity=None``).

    ``publish`` sends encoded consensus messages to the network. Owns nothing but its
    tasks; the chain and the sign-record belong to the caller."""

    def __init__(
        self,
        chain: Chain,
        identity: Identity | None,
        sign_record: SignRecord,
        publish: Callable[[bytes], Awaitable[None]],
        *,
        timeouts: Timeouts | None = None,
        contents: Contents | None = None,
        clock_ms: Callable[[], int] | None = None,
        on_finalized: Callable[[Block, Commit, State], None] | None = None,
        on_refused: Callable[[list[tuple[object, str]]], None] | None = None,
        block_interval_ms: int = 0,
        decode_message: Callable[[bytes, tuple], object] = decode,
        verify: Callable[[object], bool] = is_signed_by_signer,
    ):
        """``block_interval_ms`` paces heights: after a decision the next height starts
        no sooner than that long after the previous one started (Tendermint's
        timeout_commit), so blocks come at the chain's target pace rather than as fast
        as the validators can vote. ``decode_message`` and ``verify`` decode the inbox's
        messages and verify their signatures (a node hands in ones that reuse what its
        gossip validator already did)."""
        self.chain = chain
        self._decode = decode_message
        self._verify = verify
        self.block_interval_ms = block_interval_ms
        self.publish = publish
        self.clock_ms = clock_ms or (lambda: int(trio.current_time() * 1000))
        last = chain.store.finalized(chain.height) if chain.height else None
        self.app = ChainApp(
            chain,
            identity.public_bytes if identity else b"",
            self.clock_ms,
            contents or (lambda state: BlockContents()),
            last.commit if last else None,
            on_finalized,
            on_refused,
            identity=identity,
        )
        self._identity = identity
        self._sign_record = sign_record
        self._timeouts = timeouts or Timeouts.from_params(chain.state.params)
        self.consensus = self._new_consensus()
        self._height_changed = trio.Event()
        self._helped: set[int] = set()
        self._own: list[bytes] = []  # our messages at the current height
        t = timeouts or Timeouts.from_params(chain.state.params)
        self.rebroadcast_ms = 2 * (t.propose_ms + 2 * t.vote_ms)
        self._events_send, self._events = trio.open_memory_channel(EVENT_BUFFER)
        self._height_started_ms = self.clock_ms()

    async def wait_for_height(self, height: int) -> None:
        """Return once the chain has finalized ``height``."""
        while self.chain.height < height:
            await self._height_changed.wait()

    async def run(
        self,
        inbox: trio.abc.ReceiveChannel[bytes],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> NoReturn:
        """Run until cancelled. Malformed messages from ``inbox`` are dropped."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._forward, inbox)
            nursery.start_soon(self._rebroadcast)
            await self._carry_out(self.consensus.start())
            task_status.started()
            async for kind, item in self._events:
                if kind == "timeout":
                    effects = self.consensus.on_timeout(item.height, item.round, item.step)
                elif kind == "resync":
                    effects = self._resync()
                elif kind == "finalized":
                    effects = self._catch_up(item)
                else:
                    effects = await self._on_message(item)
                await self._carry_out(effects)
        raise AssertionError("unreachable: the event channel never closes")

    async def _forward(self, inbox: trio.abc.ReceiveChannel[bytes]) -> None:
        async for data in inbox:
            try:
                msg = self._decode(data, (ProposalMessage, Vote, FinalizedBlock))
            except WireError:
                continue  # gossip's validator scores the sender; here it is just dropped
            kind = "finalized" if isinstance(msg, FinalizedBlock) else "message"
            await self._events_send.send((kind, msg))

    async def _on_message(self, msg: ProposalMessage | Vote) -> list:
        height = msg.proposal.height if isinstance(msg, ProposalMessage) else msg.height
        if height < self.consensus.height:
            await self._help_behind(height)
            return []
        return self.consensus.on_message(msg)

    async def _help_behind(self, height: int) -> None:
        """Someone still votes on a height we finalized: send that block and its commit
        (once per height; they verify the commit before using it)."""
        if height in self._helped or len(self._helped) > MAX_HELPED:
            return
        self._helped.add(height)
        fb = self.chain.store.finalized(height)
        if fb is not None:
            await self.publish(encode(fb))

    def _catch_up(self, fb: FinalizedBlock) -> list:
        """A finalized block of the height we are deciding, from a peer that is ahead."""
        if fb.block.height != self.consensus.height:
            return []
        try:
            self.app.finalize(fb.block, fb.commit)  # verifies the commit certificate
        except LedgerError:
            return []
        self._new_height()
        return self.consensus.next_height(self.chain.state.validators)

    def request_resync(self) -> None:
        """The chain moved on outside consensus (the node applied blocks from sync):
        restart consensus at the height after the chain's last block."""
        self._events_send.send_nowait(("resync", None))

    def _resync(self) -> list:
        if self.chain.height < self.consensus.height:
            return []
        self._new_height()
        self.consensus = self._new_consensus()
        return self.consensus.start()

    def _new_consensus(self) -> Consensus:
        """A consensus machine for the height after the chain's last block."""
        return Consensus(
            chain_id=self.chain.state.chain_id,
            height=self.chain.height + 1,
            validators=self.chain.state.validators,
            app=self.app,
            identity=self._identity,
            sign_record=self._sign_record,
            timeouts=self._timeouts,
            verify=self._verify,
        )

    async def _pace(self) -> None:
        wait_ms = self._height_started_ms + self.block_interval_ms - self.clock_ms()
        if wait_ms > 0:
            await trio.sleep(wait_ms / 1000)
        self._height_started_ms = self.clock_ms()

    def _new_height(self) -> None:
        self._helped.clear()
        self._own.clear()
        self._height_changed.set()
        self._height_changed = trio.Event()

    async def _rebroadcast(self) -> NoReturn:
        """Re-send our own messages of a height that makes no progress: a peer that missed
        them (it was restarting, catching up, or the network dropped them) would otherwise
        wait forever. Peers drop duplicates before any signature check."""
        period = self.rebroadcast_ms / 1000
        while True:
            height = self.chain.height
            await trio.sleep(period)
            if self.chain.height == height:
                for data in list(self._own):
                    await self.publish(data)

    async def _timer(self, timeout: ScheduleTimeout) -> None:
        await trio.sleep(timeout.delay_ms / 1000)
        await self._events_send.send(("timeout", timeout))

    async def _carry_out(self, effects) -> None:
        while effects:
            effect, *effects = effects
            if isinstance(effect, Broadcast):
                data = encode(effect.message)
                self._own.append(data)
                await self.publish(data)
            elif isinstance(effect, ScheduleTimeout):
                self._nursery.start_soon(self._timer, effect)
            elif isinstance(effect, Evidence):
                self.app.evidence.append(effect.evidence)
            elif isinstance(effect, Decide):
                if effect.block.height <= self.chain.height:
                    # sync applied this height while we were deciding it: go on from
                    # the chain's height (a node that joins while blocks are made)
                    effects = self._resync() + effects
                    continue
                self.app.finalize(effect.block, effect.commit)
                self._new_height()
                await self._pace()
                effects = self.consensus.next_height(self.chain.state.validators) + effects
