"""The gossip host: the connection manager, and the facade over pubsub and request/response.

One :class:`GossipHost` per node. ``await nursery.start(host.run)`` listens, starts
the router's heartbeat and keeps the bootstrap peers connected; every task it starts
(listeners, one reader, writer and pinger per connection, request handlers,
validators) lives in its nursery, so cancelling that nursery or ``await host.aclose()``
closes every connection.

This module holds connection lifecycle: dialing (bootstrap redial, peer exchange),
accepting, admission (bans, ``max_peers``), Identify, and trimming after each heartbeat.
There is at most one connection per peer: when two exist (both sides dialed at once)
the one dialed by the lower peer ID wins on both sides. Each connection's reader,
writer and pinger are in :mod:`.connection`, the batching of its outbound RPCs in
:mod:`.rpcbatch`, request/response in :mod:`.reqresp`, pubsub in :mod:`.router`.
"""

from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import Awaitable, Callable

import trio

from aipg.wire import Identity, Multiaddr, PeerId, WireError, encode

from .config import PROTOCOL_VERSION, GossipConfig
from .connection import CLOSE_GRACE, Connection, ConnectionIO, close, enqueue
from .errors import (
    ConnectionClosed,
    ConnectionRefused,
    DecryptError,
    GossipError,
    HandshakeError,
    NotConnected,
    TransportError,
)
from .messages import (
    MAX_REQUEST_DATA,
    Goodbye,
    Identify,
    PeerInfo,
    PubsubMessage,
    Rpc,
)
from .pubsub import Delivered, MessageId, ValidationResult, Validator
from .ratelimit import TokenBucket
from .reach import Reach
from .reqresp import RequestHandler, RequestResponse
from .router import GossipSubRouter, Subscription
from .secure import NoiseIdentity, SecureConnection, secure_inbound, secure_outbound
from .transport import Transport

log = logging.getLogger("aipg.gossip")


class GossipHost:
    """A node's network endpoint. See the package docstring for the public API."""

    def __init__(
        self, identity: Identity, config: GossipConfig | None = None, *, transport: Transport
    ):
        self.identity = identity
        self.peer_id = identity.peer_id
        self._noise = NoiseIdentity(identity)
        self.config = config or GossipConfig()
        self.transport = transport
        self.router = GossipSubRouter(
            identity,
            self.config.gossipsub,
            self.config.score,
            self.config.thresholds,
            send_rpc=self._send_rpc,
            peer_exchange=self._on_peer_exchange,
            peer_info=self._peer_info,
            seed=self.config.seed,
            on_heartbeat=self._maintenance,
        )
        self._requests = RequestResponse(self.config, self.router.score)
        self._conns: dict[PeerId, Connection] = {}
        self.reach = Reach(self)
        self._io = ConnectionIO(
            self.config, self.router, self._requests.on_request, self.reach.hub.on_frame
        )
        self._rng = random.Random(self.config.seed)
        self._dialing: dict[PeerId, trio.Event] = {}
        self._banned: dict[PeerId, float] = {}
        self._pending_handshakes = 0
        self._transient_dials = 0
        self.relayed_connections = 0  # circuits we dialed or accepted (tests, metrics)
        # peers whose connections are kept open however idle (a validator's fellow
        # validators: consensus gossip flows only among them, D102)
        self.kept_peers: frozenset[PeerId] = frozenset()
        self._transient_freed = trio.Event()  # replaced each time a transient slot frees
        self._nursery: trio.Nursery | None = None
        self._stopped = trio.Event()
        self.listen_addrs: list[Multiaddr] = []
        self.peer_connected = trio.Event()  # replaced after each new connection (tests)

    # --- lifecycle -------------------------------------------------------------------

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Listen, start the router, keep bootstrap peers connected; until cancelled."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                for addr in self.config.listen:
                    bound = await self.transport.listen(nursery, addr, self._handle_inbound)
                    self.listen_addrs += [a.with_peer_id(self.peer_id) for a in bound]
                await nursery.start(self.router.run)
                self.reach.register()
                for addr in self.config.bootstrap:
                    nursery.start_soon(self._keep_connected, addr)
                nursery.start_soon(self.reach.run)
                task_status.started()
        finally:
            self._nursery = None
            if self.reach.addrbook.dirty:
                self.reach._save()
            self._stopped.set()

    async def aclose(self) -> None:
        """Close every connection and stop every task of this host."""
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()
            await self._stopped.wait()

    def connected_peers(self) -> list[PeerId]:
        return list(self._conns)

    def is_connected(self, peer: PeerId) -> bool:
        return peer in self._conns

    def is_relayed(self, peer: PeerId) -> bool:
        """Whether our connection to ``peer`` runs over a circuit (False: none, or direct)."""
        conn = self._conns.get(peer)
        return conn is not None and conn.relayed

    def peer_identify(self, peer: PeerId) -> Identify | None:
        conn = self._conns.get(peer)
        return conn.identify if conn else None

    # --- pubsub API ------------------------------------------------------------------

    def subscribe(self, topic: str) -> Subscription:
        """Join ``topic``; the returned subscription yields :class:`Delivered` messages."""
        return self.router.subscribe(topic)

    async def publish(self, topic: str, data: bytes) -> MessageId:
        """Sign and publish ``data``; returns its message id (sha256 of the message)."""
        mid = self.router.publish(topic, data)
        await trio.lowlevel.checkpoint()
        return mid

    def set_topic_validator(
        self,
        topic: str,
        validator: Callable[[PeerId, PubsubMessage], Awaitable[ValidationResult]],
        *,
        timeout: float | None = None,
    ) -> None:
        """Run ``validator(forwarder, message)`` on every new message of ``topic``.

        Only ACCEPT delivers and forwards; REJECT penalises the forwarder; IGNORE, a
        timeout or an exception in the validator drops the message quietly.
        """
        self.router.set_topic_validator(topic, _guarded_validator(validator), timeout)

    def peer_score(self, peer: PeerId) -> float:
        return self.router.peer_score(peer)

    # --- request/response API ------------------------------------------------------------

    def set_request_handler(
        self,
        protocol: str,
        handler: RequestHandler,
        *,
        max_request_size: int = 1 << 20,
        max_response_size: int = MAX_REQUEST_DATA,
        priority=None,
    ) -> None:
        """Serve ``protocol``: ``await handler(peer, request) -> response``.

        Requests over ``max_request_size`` are refused (and cost the sender score);
        a handler that raises or exceeds ``config.handler_timeout`` answers an error.
        ``priority(request) -> int`` (0 high, above 0 low): low-priority requests only
        take a peer's budget above the reserve its high-priority ones keep (reqresp).
        """
        self._requests.set_handler(protocol, handler, max_request_size, max_response_size, priority)

    async def request(
        self, peer: PeerId, protocol: str, data: bytes, timeout: float | None = None
    ) -> bytes:
        """Send a request and wait for its response.

        A peer we are not connected to is dialed on demand: from its record in the
        address book, else after a DHT lookup, directly or through its relays; the
        connection is transient (closed when idle). Raises a :class:`RequestError`
        subclass: NotConnected (no address of the peer works), RequestTimeout,
        RequestTooLarge, NoHandler, RateLimited, RemoteError or PeerDisconnected.
        """
        return await self._request(peer, protocol, data, timeout)

    async def _request(
        self, peer: PeerId, protocol: str, data: bytes, timeout: float | None, *, lookup=True
    ) -> bytes:
        conn = self._conns.get(peer)
        if conn is None:
            if self._nursery is None:
                raise NotConnected(f"not connected to {peer} (the host is not running)")
            conn = await self.reach.connection_to(peer, lookup=lookup)
        conn.last_used = trio.current_time()
        try:
            return await self._requests.request(conn, protocol, data, timeout)
        finally:
            conn.last_used = trio.current_time()
            if conn.transient:
                self._free_transient_slot()

    async def ensure_connection(self, peer: PeerId) -> bool:
        """Connect to ``peer`` if we are not (dialed on demand, as a request would, but
        a failure backs nothing off: requests to the peer are not refused because of
        this attempt); whether we are connected now. The connection is transient, and
        closes when idle unless ``kept_peers`` holds the peer."""
        if peer in self._conns:
            return True
        if self._nursery is None or self.reach.addrbook.backoff_left(peer) > 0:
            return False
        try:
            await self.reach.connection_to(peer, backoff=False)
        except (GossipError, WireError):
            return False
        return peer in self._conns

    async def reverse(self, peer: PeerId) -> bool:
        """Replace our circuit to ``peer`` with a direct connection we dial to it
        (connection reversal: we are behind NAT, it is not, so it could only reach us
        through a relay, while we can dial it). The direct one outranks the circuit at
        both ends (:meth:`_rank`), which then closes once its queued frames are sent. For
        kept links (the validators' overlay, D109): a request in flight on the circuit
        when it closes fails. Whether we are now connected directly."""
        conn = self._conns.get(peer)
        if conn is None or not conn.relayed or self._nursery is None:
            return conn is not None and not conn.relayed
        record = self.reach.addrbook.get(peer)
        direct = [a for a in record.multiaddrs() if not a.is_relayed] if record else []
        for addr in direct[:3]:
            with contextlib.suppress(GossipError, WireError):
                await self._dial(addr, peer, conn.transient)
            now = self._conns.get(peer)
            if now is not None and not now.relayed:
                return True
        return False

    def peer_record(self, peer: PeerId):
        """The freshest signed record we hold of ``peer`` (None if none)."""
        return self.reach.addrbook.get(peer)

    async def find_peer(self, peer: PeerId):
        """Look ``peer`` up in the DHT: (its record or None, lookup rounds)."""
        return await self.reach.dht.find_peer(peer)

    async def ping(self, peer: PeerId, timeout: float = 10.0) -> float:
        """Round-trip time to ``peer`` in seconds; raises NotConnected or RequestTimeout."""
        conn = self._conns.get(peer)
        if conn is None:
            raise NotConnected(f"not connected to {peer}")
        return await self._io.ping(conn, timeout)

    # --- dialing -----------------------------------------------------------------------

    async def connect(self, addr: Multiaddr, *, transient: bool = False) -> PeerId:
        """Dial ``addr`` (with ``/p2p/<id>`` to authenticate who answers) and return its peer ID.

        Raises TransportError (unreachable), HandshakeError (PeerIdMismatch when
        someone else answered), or ConnectionRefused (banned, ourselves, max peers).
        """
        if self._nursery is None:
            raise ConnectionRefused("the host is not running")
        expected = addr.peer_id
        if expected == self.peer_id:
            raise ConnectionRefused("refusing to dial ourselves")
        if expected is not None:
            if expected in self._conns:
                return expected
            self._check_not_banned(expected)
            if expected in self._dialing:
                await self._dialing[expected].wait()
                if expected in self._conns:
                    return expected
        if not transient and self._regular_count() >= self.config.max_peers:
            raise ConnectionRefused(f"at max peers ({self.config.max_peers})")
        if transient:
            await self._make_room_for_transient()
            self._transient_dials += 1
        done = trio.Event()
        if expected is not None:
            self._dialing[expected] = done
        try:
            return await self._dial(addr, expected, transient)
        finally:
            if transient:
                self._transient_dials -= 1
                self._free_transient_slot()
            done.set()
            if expected is not None and self._dialing.get(expected) is done:
                del self._dialing[expected]

    async def _connect_transient(self, addr: Multiaddr) -> PeerId:
        return await self.connect(addr, transient=True)

    async def _dial(self, addr: Multiaddr, expected: PeerId | None, transient: bool) -> PeerId:
        relayed = addr.is_relayed
        try:
            with trio.fail_after(self.config.dial_timeout):
                if relayed:
                    raw = await self.reach.dial_relayed(addr)
                else:
                    raw = await self.transport.dial(self._nursery, addr)
        except trio.TooSlowError:
            raise TransportError(f"dial {addr}: timed out") from None
        try:
            secure = await secure_outbound(
                raw,
                self._noise,
                expected,
                max_message_size=self.config.max_message_size,
                timeout=self.config.handshake_timeout,
            )
        except (HandshakeError, TransportError, DecryptError) as e:
            await raw.aclose()
            if relayed and raw.close_reason is None:  # the relay broke the handshake
                self.reach.addrbook.relay_misbehaved(raw.relay, self.config.ban_duration)
            if isinstance(e, DecryptError):
                raise HandshakeError(f"relayed handshake failed: {e}") from None
            raise
        if secure.remote_peer == self.peer_id:
            await raw.aclose()
            raise HandshakeError("the address belongs to ourselves")
        conn = self._new_conn(secure, outbound=True)
        conn.transient = transient
        conn.relayed = relayed
        self.relayed_connections += relayed
        try:
            await self._nursery.start(self._run_connection, conn)
        except ConnectionRefused:
            if relayed and conn.identify is None and conn.goodbye is None:
                # handshake done, then nothing intelligible: the relay drops or corrupts
                self.reach.addrbook.relay_misbehaved(raw.relay, self.config.ban_duration)
            if self._conns.get(secure.remote_peer) in (None, conn):
                raise
            # a refused duplicate is no failure: we are connected through the other one
        return secure.remote_peer

    def _regular_count(self) -> int:
        return sum(1 for c in self._conns.values() if not c.transient and not self._reserved(c))

    def _transients(self) -> list[Connection]:
        return [c for c in self._conns.values() if c.transient and not self._reserved(c)]

    def _reserved(self, conn: Connection) -> bool:
        """A client holding a relay reservation on us: bounded by the relay's own
        limit (max_reservations), outside both max_peers and max_transient."""
        return conn.peer in self.reach.hub.reservations

    async def _make_room_for_transient(self) -> None:
        """At max_transient, close the least recently used idle transient connection;
        when every one is busy, wait (up to dial_timeout) until one is done."""
        with trio.move_on_after(self.config.dial_timeout):
            while True:
                transient = self._transients()
                if len(transient) + self._transient_dials < self.config.max_transient:
                    return
                idle = [c for c in transient if self._idle(c)]
                if idle:
                    victim = min(idle, key=lambda c: c.last_used)
                    self._drop(victim, "making room for another transient connection")
                    return
                await self._transient_freed.wait()
        raise ConnectionRefused(f"at max transient connections ({self.config.max_transient})")

    def _idle(self, conn: Connection) -> bool:
        return (
            not conn.pending
            and not conn.inflight
            and conn.peer not in self.kept_peers
            and not self._carries(conn)
        )

    def _free_transient_slot(self) -> None:
        old, self._transient_freed = self._transient_freed, trio.Event()
        old.set()

    def _carries(self, conn: Connection) -> bool:
        hub = self.reach.hub
        return (
            conn.peer in hub.reserved_on  # our relay
            or conn.peer in hub.reservations  # a client reserved on us
            or any(k[0] is conn for k in hub._hops)
            or any(k[0] is conn for k in hub._ends)
        )

    def _drop(self, conn: Connection, reason: str) -> None:
        """Close ``conn`` and forget it at once (its tasks finish within the grace)."""
        if self._conns.get(conn.peer) is conn:
            del self._conns[conn.peer]
            self.router.remove_peer(conn.peer)
        close(conn, reason)

    def _accept_relayed(self, raw) -> None:
        """A relay opened a circuit to us: handshake on it like any inbound connection."""
        if self._nursery is not None:
            self._nursery.start_soon(self._handle_inbound, raw)

    def _check_not_banned(self, peer: PeerId) -> None:
        until = self._banned.get(peer)
        if until is not None:
            if trio.current_time() < until:
                raise ConnectionRefused(f"{peer} is banned (graylisted) for now")
            del self._banned[peer]

    async def _keep_connected(self, addr: Multiaddr) -> None:
        """Dial ``addr`` and redial whenever the connection drops, with backoff and jitter."""
        cfg = self.config
        delay = cfg.redial_backoff_base
        while True:
            peer = addr.peer_id
            conn = self._conns.get(peer) if peer else None
            if conn is None:
                try:
                    peer = await self.connect(addr)
                    delay = cfg.redial_backoff_base
                    conn = self._conns.get(peer)
                except (GossipError, WireError) as e:
                    log.debug("dial %s failed: %s", addr, e)
                    if isinstance(e, TransportError):  # nobody there (any more)
                        conn = await self._redial_elsewhere(addr)
            if conn is not None:
                await conn.closed.wait()
                if conn.goodbye is None:
                    continue  # an unexpected drop: redial at once, then back off
            jitter = 1 + self._rng.uniform(-cfg.redial_jitter, cfg.redial_jitter)
            await trio.sleep(delay * jitter)
            delay = min(cfg.redial_backoff_max, delay * 2)

    async def _redial_elsewhere(self, addr: Multiaddr) -> Connection | None:
        """``addr`` failed: the peer may be back on other addresses; look it up by ID."""
        peer = addr.peer_id
        if peer is None or self.reach.addrbook.backoff_left(peer) > 0:
            return None
        for other in await self.reach.fresh_addrs(peer, addr):
            try:
                await self.connect(other)
                return self._conns.get(peer)
            except (GossipError, WireError) as e:
                log.debug("dial %s failed: %s", other, e)
        return None

    def _on_peer_exchange(self, _pruner: PeerId, infos: list[PeerInfo]) -> None:
        """Dial peers learned from a PRUNE, while we are below the low watermark."""
        if self._nursery is None:
            return
        room = self.config.low_water - len(self._conns) - len(self._dialing)
        for info in infos[: max(0, room)]:
            try:
                peer = PeerId(info.peer_id)
                addrs = [Multiaddr.parse(a).with_peer_id(peer) for a in info.addrs]
            except WireError:
                continue
            if peer == self.peer_id or peer in self._conns or peer in self._dialing or not addrs:
                continue
            self._nursery.start_soon(self._try_connect, addrs[0])

    async def _try_connect(self, addr: Multiaddr) -> None:
        try:
            await self.connect(addr)
        except (GossipError, WireError) as e:
            log.debug("peer-exchange dial %s failed: %s", addr, e)

    def _peer_info(self, peer: PeerId) -> PeerInfo | None:
        conn = self._conns.get(peer)
        if conn is None or conn.identify is None:
            return None
        return PeerInfo(peer_id=peer.raw, addrs=conn.identify.listen_addrs[:8])

    # --- accepting -----------------------------------------------------------------------

    async def _handle_inbound(self, raw) -> None:
        if self._pending_handshakes >= self.config.max_pending_handshakes:
            return  # a flood of half-open connections: drop them before any crypto
        self._pending_handshakes += 1
        try:
            secure = await secure_inbound(
                raw,
                self._noise,
                max_message_size=self.config.max_message_size,
                timeout=self.config.handshake_timeout,
            )
        except (HandshakeError, TransportError, DecryptError) as e:
            log.debug("inbound handshake failed: %s", e)
            return
        finally:
            self._pending_handshakes -= 1
        conn = self._new_conn(secure, outbound=False)
        conn.relayed = getattr(raw, "relay", None) is not None
        self.relayed_connections += conn.relayed
        try:
            await self._run_connection(conn)
        except ConnectionRefused as e:
            log.debug("inbound connection refused: %s", e)

    def _new_conn(self, secure: SecureConnection, *, outbound: bool) -> Connection:
        bucket = TokenBucket(self.config.request_rate, self.config.request_burst)
        return Connection(secure, outbound, self.config.outbound_queue, bucket)

    def _admission(self, conn: Connection) -> str | None:
        """Why ``conn`` may not join (banned, full), or None."""
        try:
            self._check_not_banned(conn.peer)
        except ConnectionRefused:
            return "banned"
        if conn.peer not in self._conns and self._regular_count() >= self.config.max_peers:
            if conn.outbound and conn.transient:
                return None  # checked (and room made) before dialing
            if conn.outbound:
                return "too many peers"
            transient = self._transients()
            if len(transient) + self._transient_dials >= self.config.max_transient:
                idle = [c for c in transient if self._idle(c)]
                if not idle:
                    return "too many peers"
                # the least recently used idle one makes room for the newcomer
                self._drop(min(idle, key=lambda c: c.last_used), "making room")
            conn.transient = True  # admitted beyond max_peers: closed when idle
        return None

    def _register(self, conn: Connection) -> bool:
        """Make ``conn`` the peer's connection, or refuse it as the duplicate."""
        existing = self._conns.get(conn.peer)
        if existing is not None:
            if self._rank(existing) <= self._rank(conn):
                return False
            # The new one wins the tie-break. It was admitted without the caps (the peer
            # was connected), so it takes the old one's place: a regular one replacing a
            # transient one while max_peers is full stays transient (the dialer checked
            # max_peers before its dial began, when the old one was not there yet).
            if (
                existing.transient
                and not conn.transient
                and self._regular_count() >= self.config.max_peers
            ):
                conn.transient = True
            self._conns[conn.peer] = conn
            self.router.remove_peer(conn.peer)
            close(existing, "duplicate connection")
        self._conns[conn.peer] = conn
        self.router.add_peer(conn.peer, outbound=conn.outbound, ip=conn.ip)
        return True

    def _rank(self, conn: Connection) -> tuple[bool, bytes]:
        """Of two connections to one peer, the lower rank stays, the same at both ends: a
        direct one over a circuit (a NATed peer that dialed us while we reached it
        through a relay: its traffic should not go on through the relay), then the one
        whose dialer has the lower peer ID."""
        return conn.relayed, (self.peer_id if conn.outbound else conn.peer).raw

    # --- one connection ------------------------------------------------------------------

    async def _run_connection(self, conn: Connection, *, task_status=trio.TASK_STATUS_IGNORED):
        """Serve ``conn`` until it closes. Reports ``started()`` once the peer has
        identified itself; raises ConnectionRefused instead (before ``started``) when
        either side refuses the connection or it closes during setup."""
        refusal = self._admission(conn)
        if refusal is None and not self._register(conn):
            refusal = "duplicate connection"
        try:
            if refusal is not None:
                await self._refuse(conn, refusal)
                if refusal == "duplicate connection":  # connected through the other one
                    task_status.started()
                    return
                raise ConnectionRefused(f"{conn.peer}: {refusal}")
            reported = False
            async with trio.open_nursery() as nursery:
                conn.nursery, conn.scope = nursery, nursery.cancel_scope
                nursery.start_soon(self._io.writer, conn)
                nursery.start_soon(self._io.pinger, conn)
                nursery.start_soon(self._io.reader, conn)
                enqueue(conn, self._identify_for(conn))
                old, self.peer_connected = self.peer_connected, trio.Event()
                old.set()
                # The dialer returns once the peer has identified itself, or raises with
                # the reason it said goodbye instead (banned, too many peers).
                with trio.move_on_after(self.config.handshake_timeout):
                    await conn.identified.wait()
                if conn.identify:
                    task_status.started()
                    reported = True
                else:
                    nursery.cancel_scope.cancel()
            if not reported:
                reason = conn.goodbye or "no identify from the peer"
                raise ConnectionRefused(f"{conn.peer}: {reason}")
        finally:
            if self._conns.get(conn.peer) is conn:
                del self._conns[conn.peer]
                self.router.remove_peer(conn.peer)
            self.reach.hub.on_connection_closed(conn)
            if conn.transient:
                self._free_transient_slot()
            if conn.peer in self.reach.hub.reserved_on:
                del self.reach.hub.reserved_on[conn.peer]
                self.reach.changed()  # a relay went away: reserve elsewhere, republish
            conn.send_q.close()
            conn.closed.set()
            for pending in conn.pending.values():
                pending.done.set()
            with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_GRACE):
                await conn.secure.aclose()

    async def _refuse(self, conn: Connection, reason: str) -> None:
        with trio.move_on_after(CLOSE_GRACE):
            with contextlib.suppress(TransportError, ConnectionClosed):
                await conn.secure.send(encode(Goodbye(reason=reason)))

    def _identify_for(self, conn: Connection) -> Identify:
        observed = str(conn.secure.remote_addr) if conn.secure.remote_addr else ""
        return Identify(
            protocol_version=PROTOCOL_VERSION,
            agent_version=self.config.agent_version[:128],
            listen_addrs=tuple(str(a.without_peer_id()) for a in self.listen_addrs[:16]),
            observed_addr=observed[:256],
            protocols=tuple(self._requests.protocols())[:64],
        )

    def _send_rpc(self, peer: PeerId, rpc: Rpc) -> None:
        conn = self._conns.get(peer)
        if conn is not None:
            enqueue(conn, rpc)

    # --- maintenance -------------------------------------------------------------------

    def _maintenance(self) -> None:
        """After each router heartbeat: drop graylisted peers, trim above the high watermark."""
        self._disconnect_graylisted()
        self._trim_connections()
        self._close_idle_transient()
        self.reach.hub.sweep()

    def _close_idle_transient(self) -> None:
        now = trio.current_time()
        for conn in list(self._conns.values()):
            if (
                conn.transient
                and now - conn.last_used > self.config.transient_idle
                and self._idle(conn)
            ):
                self._drop(conn, "idle transient connection")

    def _disconnect_graylisted(self) -> None:
        now = trio.current_time()
        for peer, conn in list(self._conns.items()):
            if self.router.is_graylisted(peer):
                log.info(
                    "disconnecting %s: score %.1f is below the graylist threshold",
                    peer,
                    self.router.peer_score(peer),
                )
                self._banned[peer] = now + self.config.ban_duration
                close(conn, "graylisted")

    def _trim_connections(self) -> None:
        cfg = self.config
        regular = [
            p
            for p, c in self._conns.items()
            if not c.transient and not self._carries(c) and p not in self.kept_peers
        ]
        if len(regular) <= cfg.high_water:
            return
        in_mesh = set().union(*self.router.mesh.values()) if self.router.mesh else set()
        ranked = sorted(
            regular, key=lambda p: (p in in_mesh, self.router.peer_score(p), self._rng.random())
        )
        for peer in ranked[: len(regular) - cfg.low_water]:
            close(self._conns[peer], "trimming connections")


def _guarded_validator(validator: Validator) -> Validator:
    async def guarded(peer: PeerId, msg: PubsubMessage) -> ValidationResult:
        try:
            return await validator(peer, msg)
        except Exception:  # application code: a bug there drops the message, not the node
            log.exception("topic validator for %r failed", msg.topic)
            return ValidationResult.IGNORE

    return guarded


__all__ = ["Delivered", "GossipHost", "RequestHandler"]
