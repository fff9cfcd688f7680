"""A deterministic in-process network for consensus: simulated time, delays, drops,
partitions that heal, and Byzantine validators.

Used by the consensus tests (thousands of randomized schedules) and by
``bench/chain.py``. Everything is driven by one seeded ``random.Random``, so a failing
schedule is reproduced by its seed. The network model is partial synchrony: before the
global stabilization time (GST) messages may be dropped, delayed a lot, or cut by a
partition; from GST on, every message between honest nodes arrives within ``max_delay``.
As in the paper's gossip assumption, honest nodes relay every consensus message they
receive for their height (a gossip mesh does this), and a node that is ahead answers a
node that is behind with the finalized block and its commit certificate (block sync).
"""

from __future__ import annotations

import dataclasses
import heapq
import random
from collections.abc import Callable
from typing import Any

from aipg.wire import Identity, is_signed_by_signer, sign

from .block import Block, BlockBody, BlockHeader, Commit, ProposalMessage, Vote, VoteStep
from .block import body_hash as hash_body
from .consensus import Broadcast, Consensus, Decide, Evidence, ScheduleTimeout, Timeouts
from .signrecord import MemorySignRecord
from .types import NIL_HASH
from .validators import ValidatorSet

SIM_CHAIN = "aipg-sim-1"
EMPTY_BODY = BlockBody(None, (), (), (), ())
EMPTY_BODY_HASH = hash_body(EMPTY_BODY)


class Behaviour:
    HONEST = "honest"
    SILENT = "silent"  # never sends anything
    EQUIVOCATE = "equivocate"  # every vote also signed for another value, each to half
    CONFLICTING_PROPOSER = "conflicting-proposer"  # two blocks per proposal, and equivocates


@dataclasses.dataclass
class Scenario:
    seed: int
    n: int
    stakes: list[int]
    behaviours: list[str]
    gst_ms: int  # global stabilization time: drops and partitions end here
    drop_rate: float
    max_delay_ms: int  # after GST
    pre_gst_delay_ms: int
    partition: frozenset[int] | None  # one side of a partition lasting until GST
    heights: int  # how many heights every honest node must finalize
    chain_id: str = SIM_CHAIN


def random_scenario(seed: int, n: int) -> Scenario:
    """A random schedule: stakes, Byzantine validators with < 1/3 of the stake, drops,
    delays, maybe a partition, all healing at a random GST."""
    rng = random.Random(seed)
    stakes = [rng.choice([1, 1, 2, 3, 5]) * 10_000 for _ in range(n)]
    behaviours = [Behaviour.HONEST] * n
    total = sum(stakes)
    byz_power = 0
    for i in rng.sample(range(n), n):
        if rng.random() < 0.5 and 3 * (byz_power + stakes[i]) < total:
            byz_power += stakes[i]
            behaviours[i] = rng.choice(
                [Behaviour.SILENT, Behaviour.EQUIVOCATE, Behaviour.CONFLICTING_PROPOSER]
            )
    partition = None
    if rng.random() < 0.4:
        partition = frozenset(rng.sample(range(n), rng.randint(1, n - 1)))
    return Scenario(
        seed=seed,
        n=n,
        stakes=stakes,
        behaviours=behaviours,
        gst_ms=rng.choice([0, 500, 2_000, 5_000]),
        drop_rate=rng.choice([0.0, 0.1, 0.3]),
        max_delay_ms=rng.choice([1, 20, 80]),
        pre_gst_delay_ms=rng.choice([50, 400, 1_500]),
        partition=partition,
        heights=2,
    )


def sim_block(chain_id: str, height: int, parent: bytes, proposer: bytes, salt: int) -> Block:
    """A block with an empty body (the simulation checks consensus, not the ledger)."""
    header = BlockHeader(
        chain_id, height, 1_000 * height + salt, parent, proposer, NIL_HASH, EMPTY_BODY_HASH
    )
    return Block(header, EMPTY_BODY)


class _App:
    """A node's ledger in miniature: the chain of decided block hashes."""

    def __init__(self, chain_id: str, me: bytes, validators: ValidatorSet):
        self.chain_id = chain_id
        self.me = me
        self.parents: dict[int, bytes] = {0: b"\x00" * 32}
        self.validators = validators

    def propose(self, height: int, round_: int) -> Block:
        return sim_block(self.chain_id, height, self.parents[height - 1], self.me, round_)

    def valid(self, block: Block) -> bool:
        h = block.header
        return (
            h.parent_hash == self.parents.get(h.height - 1)
            and h.proposer in self.validators
            and h.body_hash == EMPTY_BODY_HASH
        )


class _Node:
    def __init__(
        self,
        chain_id: str,
        index: int,
        identity: Identity,
        behaviour: str,
        vset: ValidatorSet,
        verify,
    ):
        self.index = index
        self.identity = identity
        self.behaviour = behaviour
        self.app = _App(chain_id, identity.public_bytes, vset)
        self.vset = vset
        self.consensus = Consensus(
            chain_id=chain_id,
            height=1,
            validators=vset,
            app=self.app,
            identity=identity,
            sign_record=MemorySignRecord(),
            timeouts=Timeouts(300, 100, 100),
            verify=verify,
        )
        self.decided: dict[int, tuple[Block, Commit]] = {}
        self.seen: set[bytes] = set()
        self.at_height: list = []  # messages of the current height (re-sent at GST)
        self.ahead: list = []  # messages of the next height, relayed when we get there
        self.evidence: list = []
        self.synced_peers: set[tuple[int, int]] = set()


def _message_key(msg) -> bytes:
    """Identifies a message for de-duplication: its signature (Ed25519 signatures are
    deterministic, and nobody in the simulation forges one)."""
    return msg.proposal.signature if isinstance(msg, ProposalMessage) else msg.signature


def _height_of(msg) -> int:
    return msg.proposal.height if isinstance(msg, ProposalMessage) else msg.height


class Simulation:
    """Runs one :class:`Scenario`. :meth:`run` returns when every honest node finalized
    ``heights`` blocks or the time limit passed; then check ``decisions``."""

    def __init__(
        self, scenario: Scenario, identities: list[Identity] | None = None, *, relay: bool = True
    ):
        self.sc = scenario
        self.rng = random.Random(scenario.seed * 7919 + 1)
        self.identities = identities or [
            Identity.from_seed((i + 1).to_bytes(32, "big")) for i in range(scenario.n)
        ]
        self.vset = ValidatorSet.new(
            {
                ident.public_bytes: s
                for ident, s in zip(self.identities, scenario.stakes, strict=True)
            }
        )
        self._verified: dict[int, tuple[object, bool]] = {}
        self.nodes = [
            _Node(
                scenario.chain_id,
                i,
                self.identities[i],
                scenario.behaviours[i],
                self.vset,
                self._verify,
            )
            for i in range(scenario.n)
        ]
        self.honest = [n for n in self.nodes if n.behaviour == Behaviour.HONEST]
        self.relay = relay
        self.now = 0
        # (time, sequence, a delivery (dst, src, message) or a callable)
        self._queue: list[tuple[int, int, Any]] = []
        self._seq = 0
        self.deliveries = 0
        self.finished = 0  # honest nodes that finalized every height

    # --- the event loop -------------------------------------------------------------------

    def _at(self, when: int, action: Callable[[], None]) -> None:
        self._seq += 1
        heapq.heappush(self._queue, (when, self._seq, action))

    def run(self, time_limit_ms: int = 600_000) -> bool:
        """True when every honest node finalized every height in time."""
        for node in self.nodes:
            if node.behaviour != Behaviour.SILENT:
                self._effects(node, node.consensus.start())
        if self.relay:
            self._at(self.sc.gst_ms, self._flush_at_gst)
        while self._queue:
            when, _, action = heapq.heappop(self._queue)
            if when > time_limit_ms:
                return False
            self.now = when
            if type(action) is tuple:
                self._deliver(*action)
            else:
                action()
            if self.finished == len(self.honest):
                return True
        return all(len(n.decided) >= self.sc.heights for n in self.honest)

    def _verify(self, rec) -> bool:
        # Every node checks every signature, but the same message object reaches all of
        # them: memoize by object (kept alive in the cache, so its id is never reused).
        hit = self._verified.get(id(rec))
        if hit is None:
            hit = self._verified[id(rec)] = (rec, is_signed_by_signer(rec))
        return hit[1]

    # --- sending --------------------------------------------------------------------------

    def _link_up(self, a: int, b: int) -> bool:
        if self.now >= self.sc.gst_ms:
            return True
        p = self.sc.partition
        if p is not None and ((a in p) != (b in p)):
            return False
        return self.rng.random() >= self.sc.drop_rate

    def _delay(self) -> int:
        bound = self.sc.max_delay_ms if self.now >= self.sc.gst_ms else self.sc.pre_gst_delay_ms
        return int(self.rng.random() * (bound + 1))

    def _send(self, src: _Node, dst: _Node, msg) -> None:
        if dst is src or not self._link_up(src.index, dst.index):
            return
        self._seq += 1
        heapq.heappush(self._queue, (self.now + self._delay(), self._seq, (dst, src, msg)))

    def _broadcast(self, src: _Node, msg, targets=None) -> None:
        for dst in targets if targets is not None else self.nodes:
            self._send(src, dst, msg)

    # --- receiving ------------------------------------------------------------------------

    def _deliver(self, node: _Node, src: _Node, msg) -> None:
        self.deliveries += 1
        if node.behaviour == Behaviour.SILENT:
            return
        if hasattr(msg, "commit") and isinstance(msg, _Finalized):
            self._on_finalized(node, msg)
            return
        h = _height_of(msg)
        if h in node.decided and node.behaviour == Behaviour.HONEST:
            self._serve_sync(node, src, h)  # the sender is behind: send it what it misses
            return
        key = _message_key(msg)
        if key in node.seen:
            return
        node.seen.add(key)
        if node.behaviour == Behaviour.HONEST and self.relay:
            if h == node.consensus.height:
                node.at_height.append(msg)
                if self.now >= self.sc.gst_ms:
                    self._broadcast(node, msg)
            elif h == node.consensus.height + 1:
                node.ahead.append(msg)  # relayed once we get there
        self._effects(node, node.consensus.on_message(msg))

    def _serve_sync(self, node: _Node, peer: _Node, height: int) -> None:
        if (peer.index, height) in node.synced_peers:
            return
        if self.now >= self.sc.gst_ms:  # before GST the answer may be lost: answer again
            node.synced_peers.add((peer.index, height))
        block, commit = node.decided[height]
        self._send(node, peer, _Finalized(block, commit))

    def _on_finalized(self, node: _Node, msg: _Finalized) -> None:
        if msg.block.height == node.consensus.height:
            self._effects(node, node.consensus.on_finalized(msg.block, msg.commit))

    def _flush_at_gst(self) -> None:
        for node in self.honest:
            for msg in node.at_height:
                self._broadcast(node, msg)

    # --- effects --------------------------------------------------------------------------

    def _effects(self, node: _Node, effects) -> None:
        for e in effects:
            if isinstance(e, Broadcast):
                self._send_own(node, e.message)
            elif isinstance(e, ScheduleTimeout):
                h, r, step = e.height, e.round, e.step
                self._at(
                    self.now + e.delay_ms,
                    lambda node=node, h=h, r=r, step=step: self._effects(
                        node, node.consensus.on_timeout(h, r, step)
                    ),
                )
            elif isinstance(e, Decide):
                self._decide(node, e)
            elif isinstance(e, Evidence):
                node.evidence.append(e.evidence)

    def _send_own(self, node: _Node, msg) -> None:
        if node.behaviour == Behaviour.HONEST:
            node.seen.add(_message_key(msg))
            node.at_height.append(msg)
            self._broadcast(node, msg)
            return
        if node.behaviour == Behaviour.SILENT:
            return
        # Byzantine: one version to half the network, a conflicting one to the other half.
        others = [n for n in self.nodes if n is not node]
        self.rng.shuffle(others)
        half = len(others) // 2
        twin = self._conflicting(node, msg)
        self._broadcast(node, msg, others[:half])
        self._broadcast(node, twin if twin is not None else msg, others[half:])

    def _conflicting(self, node: _Node, msg):
        if isinstance(msg, Vote):
            other = NIL_HASH if msg.block_hash != NIL_HASH else self.rng.randbytes(32)
            return sign(msg.replace(block_hash=other), node.identity)
        if node.behaviour == Behaviour.CONFLICTING_PROPOSER:
            p = msg.proposal
            parent = msg.block.header.parent_hash
            block = sim_block(
                p.chain_id, p.height, parent, node.identity.public_bytes, 777 + p.round
            )
            prop = sign(p.replace(block_hash=block.hash), node.identity)
            return ProposalMessage(prop, block)
        return None

    def _decide(self, node: _Node, d: Decide) -> None:
        h = d.block.height
        node.decided[h] = (d.block, d.commit)
        if node.behaviour == Behaviour.HONEST and len(node.decided) == self.sc.heights:
            self.finished += 1
        node.app.parents[h] = d.block.hash
        node.at_height, node.ahead = node.ahead, []
        if self.relay and self.now >= self.sc.gst_ms and node.behaviour == Behaviour.HONEST:
            for msg in node.at_height:
                self._broadcast(node, msg)
        node.vset = node.vset.advanced(1)
        node.app.validators = node.vset
        if len(node.decided) < self.sc.heights or node.behaviour != Behaviour.HONEST:
            self._effects(node, node.consensus.next_height(node.vset))

    # --- results --------------------------------------------------------------------------

    def conflicting_decisions(self) -> list[int]:
        """Heights at which two honest nodes finalized different blocks (must be empty)."""
        bad = []
        heights = {h for n in self.honest for h in n.decided}
        for h in sorted(heights):
            hashes = {n.decided[h][0].hash for n in self.honest if h in n.decided}
            if len(hashes) > 1:
                bad.append(h)
        return bad


@dataclasses.dataclass(frozen=True)
class _Finalized:
    block: Block
    commit: Commit


__all__ = [
    "Behaviour",
    "Scenario",
    "Simulation",
    "VoteStep",
    "random_scenario",
    "sim_block",
]
