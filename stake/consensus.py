"""Tendermint consensus as a pure state machine.

This is Algorithm 1 of Buchman, Kwon and Milosevic, "The latest gossip on BFT consensus"
(2018), with voting power in place of process counts: "2f + 1" reads "more than 2/3 of
the total power" and "f + 1" reads "more than 1/3". One :class:`HeightMachine` runs one
height; :class:`Consensus` chains them. Inputs are messages (:class:`ProposalMessage`,
:class:`Vote`), fired timeouts and finalized blocks learned from sync; outputs are
effects: messages to broadcast, timeouts to schedule, a decision, and double-sign
evidence. The machine never does I/O itself, except through the sign-record it is
given, which it consults before signing anything.

The upon-rules keep the paper's line numbers in comments, so each can be checked
against the pseudocode.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Protocol

from aipg.wire import Identity, is_signed_by_signer, sign

from .block import Block, Commit, DoubleSignEvidence, Proposal, ProposalMessage, Vote, VoteStep
from .signrecord import STEP_PRECOMMIT, STEP_PREVOTE, STEP_PROPOSAL, DoubleSignRefused, SignRecord
from .types import NIL_HASH
from .validators import ValidatorSet

# Votes more than this many rounds ahead are dropped: a Byzantine validator could
# otherwise make us store votes for any number of rounds.
MAX_ROUNDS_AHEAD = 100
# Distinct values one validator's votes are counted for in one step (a Byzantine one
# can sign any number; two are enough to prove and survive equivocation).
MAX_VALUES_PER_SIGNER = 4
# Messages for the next height kept until we get there (the rest is re-gossiped).
MAX_BUFFERED = 10_000


class Step:
    PROPOSE = 0
    PREVOTE = 1
    PRECOMMIT = 2


@dataclasses.dataclass(frozen=True)
class Timeouts:
    """Each round's timeouts grow by ``delta_ms``, so after the network stabilizes they
    eventually exceed its delays (the partial-synchrony assumption)."""

    propose_ms: int = 3_000
    vote_ms: int = 1_000
    delta_ms: int = 500

    def propose(self, round_: int) -> int:
        return self.propose_ms + round_ * self.delta_ms

    def vote(self, round_: int) -> int:
        return self.vote_ms + round_ * self.delta_ms

    @classmethod
    def from_params(cls, params) -> Timeouts:
        return cls(params.timeout_propose_ms, params.timeout_vote_ms, params.timeout_delta_ms)


# --- effects ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Broadcast:
    message: ProposalMessage | Vote


@dataclasses.dataclass(frozen=True)
class ScheduleTimeout:
    height: int
    round: int
    step: int
    delay_ms: int


@dataclasses.dataclass(frozen=True)
class Decide:
    block: Block
    commit: Commit


@dataclasses.dataclass(frozen=True)
class Evidence:
    evidence: DoubleSignEvidence


Effect = Broadcast | ScheduleTimeout | Decide | Evidence


class Application(Protocol):
    """What consensus needs from the ledger."""

    def propose(self, height: int, round_: int) -> Block:
        """A new block to propose (the paper's getValue())."""

    def valid(self, block: Block) -> bool:
        """Whether ``block`` is a valid next block (the paper's valid(v))."""


Verify = Callable[[object], bool]


# --- one height -------------------------------------------------------------------------


class HeightMachine:
    """Tendermint for one height. Feed it with :meth:`start`, :meth:`on_proposal`,
    :meth:`on_vote`, :meth:`on_timeout`; each returns the effects to carry out."""

    def __init__(
        self,
        *,
        chain_id: str,
        height: int,
        validators: ValidatorSet,
        app: Application,
        identity: Identity | None,
        sign_record: SignRecord,
        timeouts: Timeouts,
        verify: Verify = is_signed_by_signer,
    ):
        self.chain_id = chain_id
        self.height = height
        self.validators = validators
        self.app = app
        self.identity = identity
        self.me = identity.public_bytes if identity else None
        self.sign_record = sign_record
        self.timeouts = timeouts
        self.verify = verify
        self.round = 0
        self.step = Step.PROPOSE
        self.locked_value: Block | None = None
        self.locked_round = -1
        self.locked_hash = NIL_HASH
        self.valid_value: Block | None = None
        self.valid_round = -1
        self.decision: Decide | None = None
        self._proposals: dict[int, tuple[Proposal, Block]] = {}
        # (round, step) → signer → block hash → vote; and → block hash → power
        self._votes: dict[tuple[int, int], dict[bytes, dict[bytes, Vote]]] = {}
        self._power: dict[tuple[int, int], dict[bytes, int]] = {}
        self._any_power: dict[tuple[int, int], int] = {}
        self._round_senders: dict[int, set[bytes]] = {}
        self._fired: set[tuple[str, int]] = set()
        self._valid: dict[bytes, bool] = {}
        self._evidence_seen: set[tuple[bytes, int, int]] = set()
        self._out: list[Effect] = []

    # --- inputs ---------------------------------------------------------------------------

    def start(self) -> list[Effect]:
        """Start round 0, or, after a restart in the middle of this height, the round after
        the last one we signed in, with the lock we had (from the sign-record)."""
        first = 0
        last = self.sign_record.last()
        if last is not None and last.height == self.height:
            first = last.round + 1
            self.locked_round, self.locked_hash = last.locked_round, last.locked_hash
        self._start_round(first)
        return self._run()

    def on_proposal(self, msg: ProposalMessage) -> list[Effect]:
        p = msg.proposal
        if p.chain_id != self.chain_id or p.height != self.height:
            return []
        if not self._round_ok(p.round) or p.round in self._proposals:
            return []
        if p.signer != self.validators.proposer(p.round) or p.block_hash != msg.block.hash:
            return []
        if p.pol_round >= p.round or p.pol_round < -1 or not self.verify(p):
            return []
        self._proposals[p.round] = (p, msg.block)
        self._note_sender(p.round, p.signer)
        return self._run()

    def on_vote(self, vote: Vote) -> list[Effect]:
        if vote.chain_id != self.chain_id or vote.height != self.height:
            return []
        if vote.step not in (VoteStep.PREVOTE, VoteStep.PRECOMMIT) or not self._round_ok(
            vote.round
        ):
            return []
        if vote.signer not in self.validators:
            return []
        mine = self._votes.setdefault((vote.round, vote.step), {}).get(vote.signer)
        if mine is not None and (vote.block_hash in mine or len(mine) >= MAX_VALUES_PER_SIGNER):
            return []
        if not self.verify(vote):
            return []
        if mine:
            self._report_double_sign(next(iter(mine.values())), vote)
        self._count(vote)
        self._note_sender(vote.round, vote.signer)
        return self._run()

    def on_timeout(self, round_: int, step: int) -> list[Effect]:
        if self.decision is not None or round_ != self.round:
            return []
        if step == Step.PROPOSE and self.step == Step.PROPOSE:  # line 57
            self._vote(VoteStep.PREVOTE, NIL_HASH)
            self.step = Step.PREVOTE
        elif step == Step.PREVOTE and self.step == Step.PREVOTE:  # line 61
            self._vote(VoteStep.PRECOMMIT, NIL_HASH)
            self.step = Step.PRECOMMIT
        elif step == Step.PRECOMMIT:  # line 65
            self._start_round(self.round + 1)
        return self._run()

    def on_finalized(self, block: Block, commit: Commit) -> list[Effect]:
        """A block of this height with a commit certificate the caller has verified
        (learned from sync, e.g. after missing the deciding round's messages)."""
        if (
            self.decision is None
            and block.height == self.height
            and commit.block_hash == block.hash
        ):
            self.decision = Decide(block, commit)
            self._out.append(self.decision)
        return self._drain()

    # --- the rules ------------------------------------------------------------------------

    def _start_round(self, round_: int) -> None:  # line 11
        self.round = round_
        self.step = Step.PROPOSE
        if self.validators.proposer(round_) == self.me:
            block = self.valid_value or self.app.propose(self.height, round_)
            self._propose(block, self.valid_round)
        else:
            delay = self.timeouts.propose(round_)
            self._out.append(ScheduleTimeout(self.height, round_, Step.PROPOSE, delay))

    def _run(self) -> list[Effect]:
        """Apply upon-rules until none fires, then hand out the effects."""
        while self.decision is None and self._apply_one_rule():
            pass
        return self._drain()

    def _apply_one_rule(self) -> bool:
        r = self.round
        proposal = self._proposals.get(r)
        if proposal is not None and self.step == Step.PROPOSE:
            p, block = proposal
            if p.pol_round == -1:  # line 22
                ok = self._is_valid(block, p.block_hash) and (
                    self.locked_round == -1 or self.locked_hash == p.block_hash
                )
                self._vote(VoteStep.PREVOTE, p.block_hash if ok else NIL_HASH)
                self.step = Step.PREVOTE
                return True
            if self._has_quorum(p.pol_round, VoteStep.PREVOTE, p.block_hash):  # line 28
                ok = self._is_valid(block, p.block_hash) and (
                    self.locked_round <= p.pol_round or self.locked_hash == p.block_hash
                )
                self._vote(VoteStep.PREVOTE, p.block_hash if ok else NIL_HASH)
                self.step = Step.PREVOTE
                return True
        if (
            self.step == Step.PREVOTE
            and ("prevote-any", r) not in self._fired
            and self._quorum_any(r, VoteStep.PREVOTE)
        ):  # line 34
            self._fired.add(("prevote-any", r))
            self._out.append(ScheduleTimeout(self.height, r, Step.PREVOTE, self.timeouts.vote(r)))
            return True
        if (
            proposal is not None
            and self.step >= Step.PREVOTE
            and ("lock", r) not in self._fired
            and self._has_quorum(r, VoteStep.PREVOTE, proposal[0].block_hash)
            and self._is_valid(proposal[1], proposal[0].block_hash)
        ):  # line 36
            self._fired.add(("lock", r))
            block = proposal[1]
            if self.step == Step.PREVOTE:
                self.locked_value, self.locked_round = block, r
                self.locked_hash = proposal[0].block_hash
                self._vote(VoteStep.PRECOMMIT, self.locked_hash)
                self.step = Step.PRECOMMIT
            self.valid_value, self.valid_round = block, r
            return True
        if self.step == Step.PREVOTE and self._has_quorum(r, VoteStep.PREVOTE, NIL_HASH):  # line 44
            self._vote(VoteStep.PRECOMMIT, NIL_HASH)
            self.step = Step.PRECOMMIT
            return True
        if ("precommit-any", r) not in self._fired and self._quorum_any(r, VoteStep.PRECOMMIT):
            self._fired.add(("precommit-any", r))  # line 47
            self._out.append(ScheduleTimeout(self.height, r, Step.PRECOMMIT, self.timeouts.vote(r)))
            return True
        for pr, (prop, block) in self._proposals.items():  # line 49
            bh = prop.block_hash
            if self._has_quorum(pr, VoteStep.PRECOMMIT, bh) and self._is_valid(block, bh):
                self._decide(pr, block, bh)
                return True
        skip = self._round_to_skip_to()  # line 55
        if skip is not None:
            self._start_round(skip)
            return True
        return False

    def _round_to_skip_to(self) -> int | None:
        for r in sorted(self._round_senders):
            if r > self.round:
                power = sum(self.validators.power_of(k) for k in self._round_senders[r])
                if self.validators.has_one_third(power):
                    return r
        return None

    def _decide(self, round_: int, block: Block, block_hash: bytes) -> None:
        votes = self._votes[(round_, VoteStep.PRECOMMIT)]
        precommits = tuple(
            by_hash[block_hash] for _, by_hash in sorted(votes.items()) if block_hash in by_hash
        )
        self.decision = Decide(block, Commit(self.height, round_, block_hash, precommits))
        self._out.append(self.decision)

    # --- helpers --------------------------------------------------------------------------

    def _round_ok(self, round_: int) -> bool:
        return round_ <= self.round + MAX_ROUNDS_AHEAD

    def _note_sender(self, round_: int, key: bytes) -> None:
        if round_ > self.round:
            self._round_senders.setdefault(round_, set()).add(key)

    def _has_quorum(self, round_: int, step: int, block_hash: bytes) -> bool:
        tally = self._power.get((round_, step))
        return tally is not None and self.validators.has_quorum(tally.get(block_hash, 0))

    def _quorum_any(self, round_: int, step: int) -> bool:
        return self.validators.has_quorum(self._any_power.get((round_, step), 0))

    def _is_valid(self, block: Block, block_hash: bytes) -> bool:
        ok = self._valid.get(block_hash)
        if ok is None:
            ok = block.height == self.height and self.app.valid(block)
            self._valid[block_hash] = ok
        return ok

    def _report_double_sign(self, a: Vote, b: Vote) -> None:
        key = (a.signer, a.round, a.step)
        if key not in self._evidence_seen:
            self._evidence_seen.add(key)
            first, second = sorted((a, b), key=lambda v: v.block_hash)
            self._out.append(Evidence(DoubleSignEvidence(first, second)))

    def _propose(self, block: Block, pol_round: int) -> None:
        if self.identity is None:
            return
        block_hash = block.hash
        try:
            self.sign_record.check_and_record(self.height, self.round, STEP_PROPOSAL, block_hash)
        except DoubleSignRefused:
            return
        p = sign(
            Proposal(self.chain_id, self.height, self.round, pol_round, block_hash), self.identity
        )
        msg = ProposalMessage(p, block)
        self._out.append(Broadcast(msg))
        self._proposals.setdefault(self.round, (p, block))

    def _vote(self, step: VoteStep, block_hash: bytes) -> None:
        if self.identity is None or self.me not in self.validators:
            return
        record_step = STEP_PREVOTE if step == VoteStep.PREVOTE else STEP_PRECOMMIT
        try:
            self.sign_record.check_and_record(self.height, self.round, record_step, block_hash)
        except DoubleSignRefused:
            return  # after a restart: we already signed this step; stay silent
        vote = sign(
            Vote(self.chain_id, self.height, self.round, int(step), block_hash), self.identity
        )
        self._out.append(Broadcast(vote))
        self._count(vote)  # our own vote, without checking our own signature

    def _count(self, vote: Vote) -> None:
        """Count a vote. As in the paper, a validator that signed two values counts toward
        each of them (its twin votes are evidence, and counting both keeps honest nodes
        that saw different twins in agreement about proofs-of-lock); its power counts
        once toward "any value"."""
        key = (vote.round, vote.step)
        by_signer = self._votes.setdefault(key, {})
        mine = by_signer.setdefault(vote.signer, {})
        power = self.validators.power_of(vote.signer)
        if not mine:
            self._any_power[key] = self._any_power.get(key, 0) + power
        mine[vote.block_hash] = vote
        tally = self._power.setdefault(key, {})
        tally[vote.block_hash] = tally.get(vote.block_hash, 0) + power

    def _drain(self) -> list[Effect]:
        out, self._out = self._out, []
        return out


# --- across heights ---------------------------------------------------------------------


class Consensus:
    """Runs one :class:`HeightMachine` after another. After a :class:`Decide`, the owner
    applies the block and calls :meth:`next_height` with the next validator set;
    messages for the next height that arrive early are kept and replayed."""

    def __init__(
        self,
        *,
        chain_id: str,
        height: int,
        validators: ValidatorSet,
        app: Application,
        identity: Identity | None,
        sign_record: SignRecord,
        timeouts: Timeouts,
        verify: Verify = is_signed_by_signer,
    ):
        self._make = lambda h, vs: HeightMachine(
            chain_id=chain_id,
            height=h,
            validators=vs,
            app=app,
            identity=identity,
            sign_record=sign_record,
            timeouts=timeouts,
            verify=verify,
        )
        self.machine = self._make(height, validators)
        self._early: list[ProposalMessage | Vote] = []

    @property
    def height(self) -> int:
        return self.machine.height

    def start(self) -> list[Effect]:
        return self.machine.start()

    def on_message(self, msg: ProposalMessage | Vote) -> list[Effect]:
        h = msg.proposal.height if isinstance(msg, ProposalMessage) else msg.height
        if h == self.machine.height + 1:
            if len(self._early) < MAX_BUFFERED:
                self._early.append(msg)
            return []
        if isinstance(msg, ProposalMessage):
            return self.machine.on_proposal(msg)
        return self.machine.on_vote(msg)

    def on_timeout(self, height: int, round_: int, step: int) -> list[Effect]:
        if height != self.machine.height:
            return []
        return self.machine.on_timeout(round_, step)

    def on_finalized(self, block: Block, commit: Commit) -> list[Effect]:
        return self.machine.on_finalized(block, commit)

    def next_height(self, validators: ValidatorSet) -> list[Effect]:
        """Move to the next height (after the owner applied the decided block)."""
        self.machine = self._make(self.machine.height + 1, validators)
        effects = self.machine.start()
        early, self._early = self._early, []
        for msg in early:
            effects += self.on_message(msg)
        return effects
