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

This module holds subscriptions, publishing, that message path, and the heartbeat as a
list of steps. Its two parts share its state: :mod:`.mesh` (joining and leaving,
GRAFT/PRUNE and backoffs, mesh and fanout upkeep, publish targets) and :mod:`.ihave`
(IHAVE/IWANT and the promises). The types they share are in :mod:`.pubsub`.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

import trio

from aipg.wire import PeerId, WireError, decode, encode, is_signed_by_signer, sha256, sign
from aipg.wire.keys import Identity

from .cache import MessageCache, RecentIds, SeenCache
from .config import GossipSubParams, PeerScoreParams, PeerScoreThresholds
from .ihave import Gossip
from .mesh import MeshMaintainer
from .messages import (
    ControlIWant,
    ControlMessage,
    PeerInfo,
    PubsubMessage,
    Rpc,
    SubOpts,
)
from .pubsub import (
    Delivered,
    MessageId,
    Outgoing,
    PeerState,
    RouterStats,
    ValidationResult,
    Validator,
)
from .score import PeerScore


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
        self._rng = random.Random(seed)
        self.peers: dict[PeerId, PeerState] = {}
        self.topic_peers: dict[str, set[PeerId]] = {}
        self.mesh: dict[str, set[PeerId]] = {}
        self.fanout: dict[str, set[PeerId]] = {}
        self._subs: dict[str, list[Subscription]] = {}
        self._validators: dict[str, tuple[Validator, float]] = {}
        self._seen = SeenCache(params.seen_ttl)
        self._mcache = MessageCache(params.mcache_gossip, params.mcache_len)
        self._pending_validations = 0
        self._heartbeats = 0
        # seqno starts at the wall clock in ns so a restarted node never reuses one
        self._seqno = time.time_ns()
        self._nursery: trio.Nursery | None = None
        self.heartbeat_done = trio.Event()  # replaced after each heartbeat (tests wait on it)
        self._maintainer = MeshMaintainer(
            params,
            thresholds,
            self.score,
            self._rng,
            peers=self.peers,
            topic_peers=self.topic_peers,
            mesh=self.mesh,
            fanout=self.fanout,
            now=self._now,
            send_control=self._send_control,
            peer_info=peer_info,
            peer_exchange=peer_exchange,
        )
        self._gossip = Gossip(
            params,
            thresholds,
            self.score,
            self._rng,
            topic_peers=self.topic_peers,
            mesh=self.mesh,
            fanout=self.fanout,
            seen=self._seen,
            mcache=self._mcache,
            stats=self.stats,
            now=self._now,
        )

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
        self.peers[peer] = PeerState(outbound=outbound)
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
            self._maintainer.join(topic)
        return sub

    def _unsubscribe(self, sub: Subscription) -> None:
        subs = self._subs.get(sub.topic)
        if not subs or sub not in subs:
            return
        subs.remove(sub)
        if not subs:
            del self._subs[sub.topic]
            self._announce(sub.topic, False)
            self._maintainer.leave(sub.topic)

    def _announce(self, topic: str, subscribe: bool) -> None:
        rpc = Rpc(
            subscriptions=(SubOpts(subscribe=subscribe, topic=topic),), messages=(), control=None
        )
        for peer in self.peers:
            self._send_rpc(peer, rpc)

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
        for peer in self._maintainer.publish_targets(topic, now):
            self._send_rpc(peer, rpc)
        return mid

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

    def _handle_subscription(self, peer: PeerId, state: PeerState, sub: SubOpts) -> None:
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

    def _handle_message(self, peer: PeerId, state: PeerState, encoded: bytes) -> None:
        mid = sha256(encoded)
        now = self._now()
        state.has.add(mid)
        if mid in self._seen:
            self._gossip.kept(mid)
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
        self._gossip.kept(mid)
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

    def _handle_control(self, peer: PeerId, state: PeerState, ctl: ControlMessage) -> None:
        iwant_reply = self._gossip.handle_ihave(peer, state, ctl.ihave)
        messages = self._gossip.handle_iwant(peer, state, ctl.iwant)
        prunes = self._maintainer.handle_graft(peer, ctl.graft)
        self._maintainer.handle_prune(peer, ctl.prune)
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

    def _send_control(self, peer: PeerId, *, graft=(), prune=(), ihave=()) -> None:
        ctl = ControlMessage(ihave=tuple(ihave), iwant=(), graft=tuple(graft), prune=tuple(prune))
        self._send_rpc(peer, Rpc(subscriptions=(), messages=(), control=ctl))

    # --- heartbeat -------------------------------------------------------------------

    def heartbeat(self) -> None:
        """Maintain meshes and fanout, emit gossip, settle promises, decay scores."""
        now = self._now()
        self._heartbeats += 1
        self.score.refresh(now, self.params.seen_ttl)
        out: dict[PeerId, Outgoing] = {}
        for topic in list(self.mesh):
            self._maintainer.maintain_mesh(topic, now, out, self._heartbeats)
        self._maintainer.maintain_fanout(now)
        self._gossip.emit_gossip(out)
        for peer, o in out.items():
            if peer in self.peers:
                self._send_control(peer, graft=o.graft, prune=o.prune, ihave=o.ihave)
        self._gossip.settle_promises(now)
        self._maintainer.expire_backoffs(now, self._heartbeats)
        for state in self.peers.values():
            state.ihaves_this_beat = state.ids_asked_this_beat = state.iwant_served_this_beat = 0
        self._mcache.shift()
        self._seen.expire(now)
        self._on_heartbeat()
        done, self.heartbeat_done = self.heartbeat_done, trio.Event()
        done.set()

    # --- introspection ---------------------------------------------------------------

    def mesh_peers(self, topic: str) -> set[PeerId]:
        return set(self.mesh.get(topic, ()))

    def subscribed_topics(self) -> list[str]:
        return list(self._subs)
