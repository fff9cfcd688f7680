"""The GossipSub v1.1 router.

It keeps the pubsub state of one node: who subscribes to what, the mesh of each
topic, the fanout of topics we publish to without subscribing, the seen-cache and the
message cache, IWANT promises, GRAFT backoffs and the peer scores. It does no I/O of
its own: the host feeds it decoded RPCs (:meth:`handle_rpc`) and connection events,
and it sends through the ``send_rpc`` callback (which never blocks: a peer whose
queue is full loses gossip, and IHAVE/IWANT repairs it).

A received message goes through :meth:`_handle_message`:
seen-cache → StrictSign signature → topic validator (ACCEPT / REJECT / IGNORE, with a
timeout) → deliver to local subscribers, add to the message cache, forward to the mesh.
Only ACCEPTed messages are delivered and forwarded; REJECTs count against the sender.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import random
import time
from collections.abc import Awaitable, Callable

import trio

from aipg.wire import PeerId, WireError, decode, encode, is_signed_by_signer, sha256, sign
from aipg.wire.keys import Identity

from .cache import MessageCache, RecentIds, SeenCache
from .config import GossipSubParams, PeerScoreParams, PeerScoreThresholds
from .messages import (
    ControlGraft,
    ControlIHave,
    ControlIWant,
    ControlMessage,
    ControlPrune,
    PeerInfo,
    PubsubMessage,
    Rpc,
    SubOpts,
)
from .score import PeerScore

MessageId = bytes


class ValidationResult(enum.Enum):
    ACCEPT = "accept"
    REJECT = "reject"  # invalid: penalise the sender, never forward
    IGNORE = "ignore"  # not useful (stale, duplicate by content): drop quietly


Validator = Callable[[PeerId, PubsubMessage], Awaitable[ValidationResult]]


@dataclasses.dataclass(frozen=True)
class Delivered:
    """A validated message, as handed to a subscription."""

    topic: str
    data: bytes
    author: PeerId
    forwarder: PeerId | None  # None for our own messages
    message_id: MessageId
    message: PubsubMessage


def message_id(msg: PubsubMessage) -> MessageId:
    """Message ID = sha256 of the canonical encoding (author, seqno and signature included)."""
    return sha256(encode(msg))


class Subscription:
    """The receiving end of a topic subscription: ``async for m in sub`` or ``await sub.receive()``.

    Holds up to ``subscription_buffer`` messages; a reader that falls further behind
    loses the newest ones (counted in :attr:`dropped`). ``close()`` unsubscribes.
    """

    def __init__(self, router: GossipSubRouter, topic: str, buffer: int):
        self.topic = topic
        self._router = router
        self._send, self._receive = trio.open_memory_channel[Delivered](buffer)
        self.dropped = 0

    def _offer(self, item: Delivered) -> None:
        try:
            self._send.send_nowait(item)
        except trio.WouldBlock:
            self.dropped += 1
        except trio.ClosedResourceError:
            pass

    async def receive(self) -> Delivered:
        return await self._receive.receive()

    def __aiter__(self):
        return self

    async def __anext__(self) -> Delivered:
        try:
            return await self._receive.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise StopAsyncIteration from None

    def close(self) -> None:
        self._router._unsubscribe(self)
        self._send.close()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclasses.dataclass
class _PeerState:
    outbound: bool
    topics: set[str] = dataclasses.field(default_factory=set)
    has: RecentIds = dataclasses.field(default_factory=RecentIds)
    ihaves_this_beat: int = 0
    ids_asked_this_beat: int = 0
    iwant_served_this_beat: int = 0


@dataclasses.dataclass
class _Outgoing:
    """Control traffic collected during a heartbeat, sent as one RPC per peer."""

    graft: list[ControlGraft] = dataclasses.field(default_factory=list)
    prune: list[ControlPrune] = dataclasses.field(default_factory=list)
    ihave: list[ControlIHave] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class RouterStats:
    published: int = 0
    delivered: int = 0
    duplicates: int = 0
    rejected: int = 0
    ignored: int = 0
    graylisted_rpcs: int = 0
    iwant_served: int = 0


class GossipSubRouter:
    """See the module docstring. Owned by a :class:`~aipg.gossip.GossipHost`."""

    def __init__(
        self,
        identity: Identity,
        params: GossipSubParams,
        score_params: PeerScoreParams,
        thresholds: PeerScoreThresholds,
        *,
        send_rpc: Callable[[PeerId, Rpc], None],
        peer_exchange: Callable[[PeerId, list[PeerInfo]], None] = lambda _p, _infos: None,
        peer_info: Callable[[PeerId], PeerInfo | None] = lambda _p: None,
        seed: int | None = None,
        on_heartbeat: Callable[[], None] = lambda: None,
    ):
        self.identity = identity
        self.peer_id = identity.peer_id
        self.params = params
        self.thresholds = thresholds
        self.score = PeerScore(score_params)
        self.stats = RouterStats()
        self._send_rpc = send_rpc
        self._on_heartbeat = on_heartbeat
        self._peer_exchange = peer_exchange
        self._peer_info = peer_info
        self._rng = random.Random(seed)
        self.peers: dict[PeerId, _PeerState] = {}
        self.topic_peers: dict[str, set[PeerId]] = {}
        self.mesh: dict[str, set[PeerId]] = {}
        self.fanout: dict[str, set[PeerId]] = {}
        self._fanout_last: dict[str, float] = {}
        self._subs: dict[str, list[Subscription]] = {}
        self._validators: dict[str, tuple[Validator, float]] = {}
        self._backoff: dict[tuple[str, PeerId], float] = {}
        self._seen = SeenCache(params.seen_ttl)
        self._mcache = MessageCache(params.mcache_gossip, params.mcache_len)
        self._promises: dict[MessageId, dict[PeerId, float]] = {}
        self._pending_validations = 0
        self._heartbeats = 0
        # seqno starts at the wall clock in ns so a restarted node never reuses one
        self._seqno = time.time_ns()
        self._nursery: trio.Nursery | None = None
        self.heartbeat_done = trio.Event()  # replaced after each heartbeat (tests wait on it)

    # --- lifecycle -----------------------------------------------------------------

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Run the heartbeat and own the validation tasks until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            try:
                task_status.started()
                # A random phase, so that nodes started together do not all beat at once.
                interval = self.params.heartbeat_interval
                await trio.sleep(self._rng.uniform(0.1, 1.0) * interval)
                while True:
                    self.heartbeat()
                    await trio.sleep(interval)
            finally:
                # Closing: messages still arriving are ignored, not validated in a
                # nursery that no longer takes tasks.
                self._nursery = None

    def _now(self) -> float:
        return trio.current_time()

    # --- peers -----------------------------------------------------------------------

    def add_peer(self, peer: PeerId, *, outbound: bool, ip: str | None = None) -> None:
        """A connection to ``peer`` is up: tell it our subscriptions."""
        self.peers[peer] = _PeerState(outbound=outbound)
        self.score.add_peer(peer, ip)
        if self._subs:
            subs = tuple(SubOpts(subscribe=True, topic=t) for t in self._subs)
            self._send_rpc(peer, Rpc(subscriptions=subs, messages=(), control=None))

    def remove_peer(self, peer: PeerId) -> None:
        state = self.peers.pop(peer, None)
        if state is None:
            return
        for topic in state.topics:
            self.topic_peers.get(topic, set()).discard(peer)
            if peer in self.mesh.get(topic, ()):
                self.mesh[topic].discard(peer)
                self.score.prune(peer, topic)
            self.fanout.get(topic, set()).discard(peer)
        self.score.remove_peer(peer, self._now())

    def known_to(self, peer: PeerId) -> RecentIds | None:
        """Ids of messages ``peer`` recently sent us (so it has them); None if unknown."""
        state = self.peers.get(peer)
        return state.has if state is not None else None

    def peer_score(self, peer: PeerId) -> float:
        return self.score.score(peer)

    def is_graylisted(self, peer: PeerId) -> bool:
        return self.score.score(peer) < self.thresholds.graylist_threshold

    # --- local API ---------------------------------------------------------------------

    def set_topic_validator(self, topic: str, validator: Validator, timeout: float | None) -> None:
        self._validators[topic] = (validator, timeout or self.params.validation_timeout)

    def subscribe(self, topic: str) -> Subscription:
        sub = Subscription(self, topic, self.params.subscription_buffer)
        first = topic not in self._subs
        self._subs.setdefault(topic, []).append(sub)
        if first:
            self._announce(topic, True)
            self._join(topic)
        return sub

    def _unsubscribe(self, sub: Subscription) -> None:
        subs = self._subs.get(sub.topic)
        if not subs or sub not in subs:
            return
        subs.remove(sub)
        if not subs:
            del self._subs[sub.topic]
            self._announce(sub.topic, False)
            self._leave(sub.topic)

    def _announce(self, topic: str, subscribe: bool) -> None:
        rpc = Rpc(
            subscriptions=(SubOpts(subscribe=subscribe, topic=topic),), messages=(), control=None
        )
        for peer in self.peers:
            self._send_rpc(peer, rpc)

    def _join(self, topic: str) -> None:
        mesh = self.mesh.setdefault(topic, set())
        now = self._now()
        for peer in self.fanout.pop(topic, set()):
            if self.score.score(peer) >= 0 and len(mesh) < self.params.D:
                mesh.add(peer)
        self._fanout_last.pop(topic, None)
        candidates = [
            p
            for p in self.topic_peers.get(topic, ())
            if p not in mesh and not self._in_backoff(topic, p, now) and self.score.score(p) >= 0
        ]
        self._rng.shuffle(candidates)
        mesh.update(candidates[: max(0, self.params.D - len(mesh))])
        for peer in mesh:
            self.score.graft(peer, topic, now)
            self._send_control(peer, graft=[ControlGraft(topic=topic)])

    def _leave(self, topic: str) -> None:
        for peer in self.mesh.pop(topic, set()):
            self.score.prune(peer, topic)
            backoff = self.params.unsubscribe_backoff
            self._add_backoff(topic, peer, backoff)
            self._send_control(peer, prune=[self._make_prune(topic, peer, backoff, px=False)])

    def publish(self, topic: str, data: bytes) -> MessageId:
        """Sign and send ``data`` on ``topic``; returns the message id.

        Raises WireError when the topic or data is over the wire limits. Our own
        messages are not delivered to our own subscriptions.
        """
        self._seqno += 1
        msg = sign(PubsubMessage(topic=topic, data=data, seqno=self._seqno), self.identity)
        encoded = encode(msg)
        mid = sha256(encoded)
        now = self._now()
        self._seen.add(mid, now)
        self._mcache.put(mid, encoded, topic)
        self.stats.published += 1
        rpc = Rpc(subscriptions=(), messages=(encoded,), control=None)
        for peer in self._publish_targets(topic, now):
            self._send_rpc(peer, rpc)
        return mid

    def _publish_targets(self, topic: str, now: float) -> set[PeerId]:
        subscribed = self.topic_peers.get(topic, set())
        if self.params.flood_publish:
            threshold = self.thresholds.publish_threshold
            return {p for p in subscribed if self.score.score(p) >= threshold}
        if topic in self.mesh:
            return set(self.mesh[topic])
        fanout = self.fanout.get(topic)
        if not fanout:
            candidates = [
                p for p in subscribed if self.score.score(p) >= self.thresholds.publish_threshold
            ]
            self._rng.shuffle(candidates)
            fanout = self.fanout[topic] = set(candidates[: self.params.D])
        self._fanout_last[topic] = now
        return set(fanout)

    # --- inbound RPCs --------------------------------------------------------------

    def handle_rpc(self, peer: PeerId, rpc: Rpc) -> None:
        """Process one RPC from ``peer`` (already decoded, so structurally valid)."""
        state = self.peers.get(peer)
        if state is None:
            return
        if self.is_graylisted(peer):
            self.stats.graylisted_rpcs += 1
            return
        for sub in rpc.subscriptions:
            self._handle_subscription(peer, state, sub)
        for msg in rpc.messages:
            self._handle_message(peer, state, msg)
        if rpc.control is not None:
            self._handle_control(peer, state, rpc.control)

    def _handle_subscription(self, peer: PeerId, state: _PeerState, sub: SubOpts) -> None:
        if sub.subscribe:
            if sub.topic in state.topics:
                return
            if len(state.topics) >= self.params.max_topics_per_peer:
                self.score.add_penalty(peer)
                return
            state.topics.add(sub.topic)
            self.topic_peers.setdefault(sub.topic, set()).add(peer)
        else:
            state.topics.discard(sub.topic)
            self.topic_peers.get(sub.topic, set()).discard(peer)
            if peer in self.mesh.get(sub.topic, ()):
                self.mesh[sub.topic].discard(peer)
                self.score.prune(peer, sub.topic)
            self.fanout.get(sub.topic, set()).discard(peer)

    def _handle_message(self, peer: PeerId, state: _PeerState, encoded: bytes) -> None:
        mid = sha256(encoded)
        now = self._now()
        state.has.add(mid)
        if mid in self._seen:
            self._promises.pop(mid, None)
            self.stats.duplicates += 1
            self.score.duplicate_message(peer, mid, now)
            return
        try:
            msg = decode(encoded, PubsubMessage)
        except WireError:
            self.score.add_penalty(peer)  # not even a message: no topic to blame it on
            return
        topic = msg.topic
        if topic not in self._subs:
            return  # not ours: we neither deliver nor forward what we did not ask for
        self._promises.pop(mid, None)
        self._seen.add(mid, now)
        self.score.validate_message(mid, topic, now)
        if not is_signed_by_signer(msg):
            self._finish(peer, msg, encoded, mid, ValidationResult.REJECT)
            return
        entry = self._validators.get(topic)
        if entry is None:
            self._finish(peer, msg, encoded, mid, ValidationResult.ACCEPT)
            return
        if self._pending_validations >= self.params.max_pending_validations or not self._nursery:
            self._finish(peer, msg, encoded, mid, ValidationResult.IGNORE)
            return
        self._pending_validations += 1
        self._nursery.start_soon(self._validate, peer, msg, encoded, mid, *entry)

    async def _validate(
        self,
        peer: PeerId,
        msg: PubsubMessage,
        encoded: bytes,
        mid: MessageId,
        validator: Validator,
        timeout: float,
    ) -> None:
        result = ValidationResult.IGNORE
        try:
            with trio.move_on_after(timeout):
                outcome = await validator(peer, msg)
                if isinstance(outcome, ValidationResult):
                    result = outcome
        finally:
            self._pending_validations -= 1
        self._finish(peer, msg, encoded, mid, result)

    def _finish(
        self,
        peer: PeerId,
        msg: PubsubMessage,
        encoded: bytes,
        mid: MessageId,
        result: ValidationResult,
    ) -> None:
        now = self._now()
        if result is ValidationResult.REJECT:
            self.stats.rejected += 1
            self.score.reject_message(peer, msg.topic, mid)
            return
        if result is ValidationResult.IGNORE:
            self.stats.ignored += 1
            return
        self.score.deliver_message(peer, msg.topic, mid, now)
        self._mcache.put(mid, encoded, msg.topic)
        self._deliver_locally(peer, msg, mid)
        self._forward(peer, msg, encoded)

    def _deliver_locally(self, peer: PeerId | None, msg: PubsubMessage, mid: MessageId) -> None:
        subs = self._subs.get(msg.topic)
        if not subs:
            return
        try:
            author = PeerId.from_public_key(msg.signer)
        except WireError:
            return
        item = Delivered(msg.topic, msg.data, author, peer, mid, msg)
        self.stats.delivered += 1
        for sub in subs:
            sub._offer(item)

    def _forward(self, source: PeerId, msg: PubsubMessage, encoded: bytes) -> None:
        targets = self.mesh.get(msg.topic)
        if not targets:
            return
        rpc = Rpc(subscriptions=(), messages=(encoded,), control=None)
        author_key = msg.signer
        for peer in targets:
            if peer != source and peer.raw[6:] != author_key:
                self._send_rpc(peer, rpc)

    # --- control -------------------------------------------------------------------

    def _handle_control(self, peer: PeerId, state: _PeerState, ctl: ControlMessage) -> None:
        iwant_reply = self._handle_ihave(peer, state, ctl.ihave)
        messages = self._handle_iwant(peer, state, ctl.iwant)
        prunes = self._handle_graft(peer, ctl.graft)
        self._handle_prune(peer, ctl.prune)
        if iwant_reply or messages or prunes:
            control = None
            if iwant_reply or prunes:
                control = ControlMessage(
                    ihave=(),
                    iwant=(ControlIWant(message_ids=tuple(iwant_reply)),) if iwant_reply else (),
                    graft=(),
                    prune=tuple(prunes),
                )
            for start in range(0, max(1, len(messages)), 64):
                chunk = tuple(messages[start : start + 64])
                self._send_rpc(peer, Rpc(subscriptions=(), messages=chunk, control=control))
                control = None

    def _handle_ihave(self, peer: PeerId, state: _PeerState, ihaves) -> list[MessageId]:
        if not ihaves or self.score.score(peer) < self.thresholds.gossip_threshold:
            return []
        p = self.params
        state.ihaves_this_beat += 1
        if state.ihaves_this_beat > p.max_ihave_messages:
            return []  # over the IHAVE budget for this heartbeat
        budget = p.max_ihave_length - state.ids_asked_this_beat
        wanted: list[MessageId] = []
        for ihave in ihaves:
            if ihave.topic not in self.mesh:
                continue
            for mid in ihave.message_ids:
                if mid not in self._seen and mid not in wanted:
                    wanted.append(mid)
        if not wanted or budget <= 0:
            return []
        self._rng.shuffle(wanted)
        wanted = wanted[:budget]
        state.ids_asked_this_beat += len(wanted)
        # One promise per IHAVE batch: if that message does not come, the peer lied.
        promised = self._rng.choice(wanted)
        self._promises.setdefault(promised, {})[peer] = self._now() + p.iwant_followup_time
        return wanted

    def _handle_iwant(self, peer: PeerId, state: _PeerState, iwants) -> list[bytes]:
        if not iwants or self.score.score(peer) < self.thresholds.gossip_threshold:
            return []
        out: list[bytes] = []
        ids = [mid for iwant in iwants for mid in iwant.message_ids]
        room = self.params.max_iwant_serve - state.iwant_served_this_beat
        if len(ids) > room:
            self.score.add_penalty(peer, 0.1)  # an IWANT flood: serve the budget, no more
            ids = ids[: max(0, room)]
        state.iwant_served_this_beat += len(ids)
        for mid in ids:
            msg, count = self._mcache.get_for_peer(mid, peer)
            if msg is not None and count <= self.params.gossip_retransmission:
                out.append(msg)
        self.stats.iwant_served += len(out)
        return out

    def _handle_graft(self, peer: PeerId, grafts) -> list[ControlPrune]:
        prunes: list[ControlPrune] = []
        now = self._now()
        for graft in grafts:
            topic = graft.topic
            mesh = self.mesh.get(topic)
            if mesh is None or peer in mesh:
                continue  # not subscribed (ignore, as the spec says) or already grafted
            expiry = self._backoff.get((topic, peer))
            if expiry is not None and now < expiry:
                self.score.add_penalty(peer)
                if now < expiry - self.params.prune_backoff + self.params.graft_flood_threshold:
                    self.score.add_penalty(peer)  # GRAFT right after our PRUNE: flooding
                self._add_backoff(topic, peer, self.params.prune_backoff)
                prunes.append(self._make_prune(topic, peer, self.params.prune_backoff, px=False))
                continue
            if self.score.score(peer) < 0:
                self._add_backoff(topic, peer, self.params.prune_backoff)
                prunes.append(self._make_prune(topic, peer, self.params.prune_backoff, px=False))
                continue
            state = self.peers[peer]
            if len(mesh) >= self.params.D_hi and not state.outbound:
                self._add_backoff(topic, peer, self.params.prune_backoff)
                prunes.append(self._make_prune(topic, peer, self.params.prune_backoff, px=True))
                continue
            mesh.add(peer)
            self.score.graft(peer, topic, now)
        return prunes

    def _handle_prune(self, peer: PeerId, prunes) -> None:
        for prune in prunes:
            mesh = self.mesh.get(prune.topic)
            if mesh is not None and peer in mesh:
                mesh.discard(peer)
                self.score.prune(peer, prune.topic)
            backoff = prune.backoff or self.params.prune_backoff
            self._add_backoff(prune.topic, peer, min(backoff, 3600))
            if prune.peers and self.score.score(peer) >= self.thresholds.accept_px_threshold:
                self._peer_exchange(peer, list(prune.peers[: self.params.prune_peers]))

    def _make_prune(self, topic: str, peer: PeerId, backoff: float, *, px: bool) -> ControlPrune:
        infos: list[PeerInfo] = []
        if px:
            others = [
                p for p in self.topic_peers.get(topic, ()) if p != peer and self.score.score(p) >= 0
            ]
            self._rng.shuffle(others)
            for other in others:
                info = self._peer_info(other)
                if info is not None:
                    infos.append(info)
                if len(infos) >= self.params.prune_peers:
                    break
        return ControlPrune(topic=topic, peers=tuple(infos), backoff=math.ceil(backoff))

    def _in_backoff(self, topic: str, peer: PeerId, now: float) -> bool:
        expiry = self._backoff.get((topic, peer))
        return expiry is not None and now < expiry

    def _add_backoff(self, topic: str, peer: PeerId, seconds: float) -> None:
        expiry = self._now() + seconds
        if self._backoff.get((topic, peer), 0.0) < expiry:
            self._backoff[(topic, peer)] = expiry

    def _send_control(self, peer: PeerId, *, graft=(), prune=(), ihave=()) -> None:
        ctl = ControlMessage(ihave=tuple(ihave), iwant=(), graft=tuple(graft), prune=tuple(prune))
        self._send_rpc(peer, Rpc(subscriptions=(), messages=(), control=ctl))

    # --- heartbeat -------------------------------------------------------------------

    def heartbeat(self) -> None:
        """Maintain meshes and fanout, emit gossip, settle promises, decay scores."""
        now = self._now()
        self._heartbeats += 1
        self.score.refresh(now, self.params.seen_ttl)
        out: dict[PeerId, _Outgoing] = {}
        for topic in list(self.mesh):
            self._maintain_mesh(topic, now, out)
        self._maintain_fanout(now)
        self._emit_gossip(out)
        for peer, o in out.items():
            if peer in self.peers:
                self._send_control(peer, graft=o.graft, prune=o.prune, ihave=o.ihave)
        self._settle_promises(now)
        self._expire_backoffs(now)
        for state in self.peers.values():
            state.ihaves_this_beat = state.ids_asked_this_beat = state.iwant_served_this_beat = 0
        self._mcache.shift()
        self._seen.expire(now)
        self._on_heartbeat()
        done, self.heartbeat_done = self.heartbeat_done, trio.Event()
        done.set()

    def _maintain_mesh(self, topic: str, now: float, out: dict[PeerId, _Outgoing]) -> None:
        p = self.params
        mesh = self.mesh[topic]
        score = self.score.score

        def graft(peer: PeerId) -> None:
            mesh.add(peer)
            self.score.graft(peer, topic, now)
            out.setdefault(peer, _Outgoing()).graft.append(ControlGraft(topic=topic))

        def prune(peer: PeerId, px: bool) -> None:
            mesh.discard(peer)
            self.score.prune(peer, topic)
            self._add_backoff(topic, peer, p.prune_backoff)
            out.setdefault(peer, _Outgoing()).prune.append(
                self._make_prune(topic, peer, p.prune_backoff, px=px)
            )

        for peer in [q for q in mesh if score(q) < 0]:
            prune(peer, px=False)

        def candidates(pred=lambda _q: True) -> list[PeerId]:
            c = [
                q
                for q in self.topic_peers.get(topic, ())
                if q not in mesh
                and not self._in_backoff(topic, q, now)
                and score(q) >= 0
                and pred(q)
            ]
            self._rng.shuffle(c)
            return c

        if len(mesh) < p.D_lo:
            for peer in candidates()[: p.D - len(mesh)]:
                graft(peer)
        if len(mesh) > p.D_hi:
            self._shrink_mesh(mesh, prune)
        outbound = sum(1 for q in mesh if self.peers[q].outbound)
        if len(mesh) >= p.D_lo and outbound < p.D_out:
            for peer in candidates(lambda q: self.peers[q].outbound)[: p.D_out - outbound]:
                graft(peer)
        if self._heartbeats % p.opportunistic_graft_ticks == 0 and len(mesh) > 1:
            scores = sorted(score(q) for q in mesh)
            median = scores[len(scores) // 2]
            if median < self.thresholds.opportunistic_graft_threshold:
                better = candidates(lambda q: score(q) > median)
                for peer in better[: p.opportunistic_graft_peers]:
                    graft(peer)

    def _shrink_mesh(self, mesh: set[PeerId], prune: Callable[[PeerId, bool], None]) -> None:
        p = self.params
        by_score = sorted(mesh, key=self.score.score, reverse=True)
        keep = by_score[: p.D_score]
        rest = by_score[p.D_score :]
        self._rng.shuffle(rest)
        keep += rest[: p.D - len(keep)]
        outbound = [q for q in keep if self.peers[q].outbound]
        if len(outbound) < p.D_out:
            spare_out = [q for q in mesh if q not in keep and self.peers[q].outbound]
            for q in spare_out[: p.D_out - len(outbound)]:
                inbound = [k for k in keep[p.D_score :] if not self.peers[k].outbound]
                if inbound:
                    keep.remove(inbound[-1])
                    keep.append(q)
        for peer in [q for q in mesh if q not in keep]:
            prune(peer, True)

    def _maintain_fanout(self, now: float) -> None:
        p = self.params
        for topic in list(self.fanout):
            if now - self._fanout_last.get(topic, now) > p.fanout_ttl:
                del self.fanout[topic]
                self._fanout_last.pop(topic, None)
                continue
            peers = self.fanout[topic]
            subscribed = self.topic_peers.get(topic, set())
            for peer in [
                q
                for q in peers
                if q not in subscribed or self.score.score(q) < self.thresholds.publish_threshold
            ]:
                peers.discard(peer)
            if len(peers) < p.D:
                more = [
                    q
                    for q in subscribed
                    if q not in peers and self.score.score(q) >= self.thresholds.publish_threshold
                ]
                self._rng.shuffle(more)
                peers.update(more[: p.D - len(peers)])

    def _emit_gossip(self, out: dict[PeerId, _Outgoing]) -> None:
        p = self.params
        by_topic = self._mcache.gossip_topics()
        for topic, ids in by_topic.items():
            exclude = self.mesh.get(topic) or self.fanout.get(topic)
            if exclude is None:
                continue
            ids = ids[-p.max_ihave_length :]
            candidates = [
                q
                for q in self.topic_peers.get(topic, ())
                if q not in exclude and self.score.score(q) >= self.thresholds.gossip_threshold
            ]
            count = max(p.D_lazy, int(p.gossip_factor * len(candidates)))
            self._rng.shuffle(candidates)
            ihave = ControlIHave(topic=topic, message_ids=tuple(ids))
            for peer in candidates[:count]:
                out.setdefault(peer, _Outgoing()).ihave.append(ihave)

    def _settle_promises(self, now: float) -> None:
        broken: dict[PeerId, int] = {}
        for mid in list(self._promises):
            peers = self._promises[mid]
            for peer, deadline in list(peers.items()):
                if deadline < now:
                    del peers[peer]
                    broken[peer] = broken.get(peer, 0) + 1
            if not peers:
                del self._promises[mid]
        for peer, n in broken.items():
            self.score.add_penalty(peer, n)

    def _expire_backoffs(self, now: float) -> None:
        if self._heartbeats % 15:
            return
        for key in [k for k, exp in self._backoff.items() if exp < now]:
            del self._backoff[key]

    # --- introspection ---------------------------------------------------------------

    def mesh_peers(self, topic: str) -> set[PeerId]:
        return set(self.mesh.get(topic, ()))

    def subscribed_topics(self) -> list[str]:
        return list(self._subs)
