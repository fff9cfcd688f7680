"""The gossip host: connection manager, request/response, and the GossipSub router.

One :class:`GossipHost` per node. ``await nursery.start(host.run)`` listens, starts
the router's heartbeat and keeps the bootstrap peers connected; every task it starts
(listeners, one reader, writer and pinger per connection, request handlers,
validators) lives in its nursery, so cancelling that nursery or ``await host.aclose()``
closes every connection.

Per connection: the Noise handshake authenticates the peer; then one **reader** task
decodes frames (a bad frame costs the peer score; too many close the connection) and
dispatches them, and one **writer** task drains a bounded queue, merging queued pubsub
RPCs into one frame. There is at most one connection per peer: when two exist (both
sides dialed at once) the one dialed by the lower peer ID wins on both sides.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import random
from collections.abc import Awaitable, Callable

import msgpack
import trio

from aipg.wire import Identity, Multiaddr, PeerId, Record, WireError, decode, encode, sha256

# The writer encodes merged RPCs itself, without building and re-validating an Rpc
# record per frame; the codec's record-to-array step keeps its bytes exactly encode()'s.
from aipg.wire.codec import _to_wire

from .config import PROTOCOL_VERSION, GossipConfig
from .errors import (
    ConnectionClosed,
    ConnectionRefused,
    DecryptError,
    GossipError,
    HandshakeError,
    NoHandler,
    NotConnected,
    PeerDisconnected,
    RateLimited,
    RemoteError,
    RequestTimeout,
    RequestTooLarge,
    TransportError,
)
from .messages import (
    FRAME_TYPES,
    MAX_REQUEST_DATA,
    MAX_RPC_MESSAGES,
    ControlMessage,
    Goodbye,
    Identify,
    PeerInfo,
    Ping,
    Pong,
    PubsubMessage,
    Request,
    Response,
    Rpc,
)
from .ratelimit import TokenBucket
from .router import (
    Delivered,
    GossipSubRouter,
    MessageId,
    Subscription,
    ValidationResult,
    Validator,
)
from .secure import NoiseIdentity, SecureConnection, secure_inbound, secure_outbound
from .transport import Transport

log = logging.getLogger("aipg.gossip")

RequestHandler = Callable[[PeerId, bytes], Awaitable[bytes]]

STATUS_OK = 0
STATUS_NO_HANDLER = 1
STATUS_TOO_LARGE = 2
STATUS_RATE_LIMITED = 3
STATUS_ERROR = 4
_STATUS_ERRORS = {
    STATUS_NO_HANDLER: (NoHandler, "the peer has no handler for {p!r}"),
    STATUS_TOO_LARGE: (RequestTooLarge, "the request is over the peer's size limit for {p!r}"),
    STATUS_RATE_LIMITED: (RateLimited, "the peer rate-limited our {p!r} requests"),
    STATUS_ERROR: (RemoteError, "the peer's {p!r} handler failed or timed out"),
}
_CLOSE = object()  # writer-queue sentinel: flush what is queued, then close
CLOSE_GRACE = 2.0
WRITE_COALESCE = 0.002
WRITE_BUSY_WINDOW = 0.02
# Merged RPCs stay well under the frame limit.
_MERGE_BYTES = 1 << 20


@dataclasses.dataclass
class _Handler:
    fn: RequestHandler
    max_request_size: int
    max_response_size: int


@dataclasses.dataclass
class _Pending:
    done: trio.Event = dataclasses.field(default_factory=trio.Event)
    response: Response | None = None


class _Conn:
    """One live, authenticated connection and the state the host keeps about it."""

    def __init__(
        self, secure: SecureConnection, outbound: bool, queue_size: int, bucket: TokenBucket
    ):
        self.secure = secure
        self.peer = secure.remote_peer
        self.outbound = outbound
        self.send_q, self.recv_q = trio.open_memory_channel[object](queue_size)
        self.pending: dict[int, _Pending] = {}
        self.pongs: dict[int, trio.Event] = {}
        self.identify: Identify | None = None
        self.goodbye: str | None = None
        self.bad_frames = 0
        self.inflight = 0
        self.bucket = bucket
        self.closed = trio.Event()
        self.identified = trio.Event()  # set on Identify, or when the connection ends
        self.last_seen = trio.current_time()  # when the last frame arrived (keepalive)
        self.scope: trio.CancelScope | None = None
        self.nursery: trio.Nursery | None = None
        self.dropped = 0

    @property
    def ip(self) -> str | None:
        addr = self.secure.remote_addr
        if addr is None:
            return None
        return addr.value_for("ip4") or addr.value_for("ip6")


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
        self._rng = random.Random(self.config.seed)
        self._conns: dict[PeerId, _Conn] = {}
        self._dialing: dict[PeerId, trio.Event] = {}
        self._banned: dict[PeerId, float] = {}
        self._handlers: dict[str, _Handler] = {}
        self._request_ids = itertools.count(1)
        self._pending_handshakes = 0
        self._ping_nonces = itertools.count(1)
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
                for addr in self.config.bootstrap:
                    nursery.start_soon(self._keep_connected, addr)
                task_status.started()
        finally:
            self._nursery = None
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
    ) -> None:
        """Serve ``protocol``: ``await handler(peer, request) -> response``.

        Requests over ``max_request_size`` are refused (and cost the sender score);
        a handler that raises or exceeds ``config.handler_timeout`` answers an error.
        """
        if not 0 < max_request_size <= MAX_REQUEST_DATA:
            raise ValueError(f"max_request_size must be in 1..{MAX_REQUEST_DATA}")
        self._handlers[protocol] = _Handler(handler, max_request_size, max_response_size)

    async def request(
        self, peer: PeerId, protocol: str, data: bytes, timeout: float | None = None
    ) -> bytes:
        """Send a request and wait for its response.

        Raises a :class:`RequestError` subclass: NotConnected, RequestTimeout,
        RequestTooLarge, NoHandler, RateLimited, RemoteError or PeerDisconnected.
        """
        conn = self._conns.get(peer)
        if conn is None:
            raise NotConnected(f"not connected to {peer}")
        if len(data) > MAX_REQUEST_DATA:
            raise RequestTooLarge(f"request of {len(data)} bytes is over {MAX_REQUEST_DATA}")
        rid = next(self._request_ids)
        pending = conn.pending[rid] = _Pending()
        timeout = self.config.request_timeout if timeout is None else timeout
        try:
            with trio.fail_after(timeout):
                await conn.send_q.send(Request(request_id=rid, protocol=protocol, data=data))
                await pending.done.wait()
        except trio.TooSlowError:
            raise RequestTimeout(
                f"{protocol!r} request to {peer} timed out after {timeout}s"
            ) from None
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise PeerDisconnected(f"connection to {peer} closed") from None
        finally:
            conn.pending.pop(rid, None)
        resp = pending.response
        if resp is None:
            raise PeerDisconnected(f"connection to {peer} closed before the {protocol!r} response")
        if resp.status == STATUS_OK:
            return resp.data
        err, text = _STATUS_ERRORS.get(resp.status, (RemoteError, "unknown status for {p!r}"))
        raise err(text.format(p=protocol))

    async def ping(self, peer: PeerId, timeout: float = 10.0) -> float:
        """Round-trip time to ``peer`` in seconds; raises NotConnected or RequestTimeout."""
        conn = self._conns.get(peer)
        if conn is None:
            raise NotConnected(f"not connected to {peer}")
        return await self._ping(conn, timeout)

    # --- dialing -----------------------------------------------------------------------

    async def connect(self, addr: Multiaddr) -> PeerId:
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
        if len(self._conns) >= self.config.max_peers:
            raise ConnectionRefused(f"at max peers ({self.config.max_peers})")
        done = trio.Event()
        if expected is not None:
            self._dialing[expected] = done
        try:
            return await self._dial(addr, expected)
        finally:
            done.set()
            if expected is not None and self._dialing.get(expected) is done:
                del self._dialing[expected]

    async def _dial(self, addr: Multiaddr, expected: PeerId | None) -> PeerId:
        try:
            with trio.fail_after(self.config.dial_timeout):
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
        except (HandshakeError, TransportError):
            await raw.aclose()
            raise
        if secure.remote_peer == self.peer_id:
            await raw.aclose()
            raise HandshakeError("the address belongs to ourselves")
        conn = self._new_conn(secure, outbound=True)
        try:
            await self._nursery.start(self._run_connection, conn)
        except ConnectionRefused:
            if self._conns.get(secure.remote_peer) in (None, conn):
                raise
            # a refused duplicate is no failure: we are connected through the other one
        return secure.remote_peer

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
            if conn is not None:
                await conn.closed.wait()
                if conn.goodbye is None:
                    continue  # an unexpected drop: redial at once, then back off
            jitter = 1 + self._rng.uniform(-cfg.redial_jitter, cfg.redial_jitter)
            await trio.sleep(delay * jitter)
            delay = min(cfg.redial_backoff_max, delay * 2)

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
        try:
            await self._run_connection(self._new_conn(secure, outbound=False))
        except ConnectionRefused as e:
            log.debug("inbound connection refused: %s", e)

    def _new_conn(self, secure: SecureConnection, *, outbound: bool) -> _Conn:
        bucket = TokenBucket(self.config.request_rate, self.config.request_burst)
        return _Conn(secure, outbound, self.config.outbound_queue, bucket)

    def _admission(self, conn: _Conn) -> str | None:
        """Why ``conn`` may not join (banned, full), or None."""
        try:
            self._check_not_banned(conn.peer)
        except ConnectionRefused:
            return "banned"
        if conn.peer not in self._conns and len(self._conns) >= self.config.max_peers:
            return "too many peers"
        return None

    def _register(self, conn: _Conn) -> bool:
        """Make ``conn`` the peer's connection, or refuse it as the duplicate."""
        existing = self._conns.get(conn.peer)
        if existing is not None:
            if self._initiator(existing) <= self._initiator(conn):
                return False
            self._conns[conn.peer] = conn  # the new one wins the tie-break
            self.router.remove_peer(conn.peer)
            self._close(existing, "duplicate connection")
        self._conns[conn.peer] = conn
        self.router.add_peer(conn.peer, outbound=conn.outbound, ip=conn.ip)
        return True

    def _initiator(self, conn: _Conn) -> bytes:
        return (self.peer_id if conn.outbound else conn.peer).raw

    # --- one connection ------------------------------------------------------------------

    async def _run_connection(self, conn: _Conn, *, task_status=trio.TASK_STATUS_IGNORED):
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
                nursery.start_soon(self._writer, conn)
                nursery.start_soon(self._pinger, conn)
                nursery.start_soon(self._reader, conn)
                self._enqueue(conn, self._identify_for(conn))
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
            conn.send_q.close()
            conn.closed.set()
            for pending in conn.pending.values():
                pending.done.set()
            with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_GRACE):
                await conn.secure.aclose()

    async def _refuse(self, conn: _Conn, reason: str) -> None:
        with trio.move_on_after(CLOSE_GRACE):
            with contextlib.suppress(TransportError, ConnectionClosed):
                await conn.secure.send(encode(Goodbye(reason=reason)))

    def _identify_for(self, conn: _Conn) -> Identify:
        observed = str(conn.secure.remote_addr) if conn.secure.remote_addr else ""
        return Identify(
            protocol_version=PROTOCOL_VERSION,
            agent_version=self.config.agent_version[:128],
            listen_addrs=tuple(str(a.without_peer_id()) for a in self.listen_addrs[:16]),
            observed_addr=observed[:256],
            protocols=tuple(sorted(self._handlers))[:64],
        )

    def _close(self, conn: _Conn, reason: str) -> None:
        """Say goodbye and close ``conn`` once what is queued is flushed (bounded)."""
        try:
            conn.send_q.send_nowait(Goodbye(reason=reason))
            conn.send_q.send_nowait(_CLOSE)
        except (trio.WouldBlock, trio.ClosedResourceError):
            if conn.scope is not None:
                conn.scope.cancel()
            return
        if conn.scope is not None:
            conn.scope.deadline = min(conn.scope.deadline, trio.current_time() + CLOSE_GRACE)

    def _enqueue(self, conn: _Conn, frame: object) -> bool:
        try:
            conn.send_q.send_nowait(frame)
            return True
        except trio.WouldBlock:
            conn.dropped += 1
            return False
        except trio.ClosedResourceError:
            return False

    def _send_rpc(self, peer: PeerId, rpc: Rpc) -> None:
        conn = self._conns.get(peer)
        if conn is not None:
            self._enqueue(conn, rpc)

    async def _writer(self, conn: _Conn) -> None:
        recv = conn.recv_q
        last_send = -1.0
        try:
            while True:
                batch = [await recv.receive()]
                # Busy (we sent moments ago): pause briefly so the frames of a burst pile
                # up and leave merged, saving most per-frame cost (syscalls, websocket
                # framing, task switches). Idle: send at once, adding no latency.
                if trio.current_time() - last_send < WRITE_BUSY_WINDOW:
                    await trio.sleep(WRITE_COALESCE)
                else:
                    await trio.lowlevel.cancel_shielded_checkpoint()
                while len(batch) < 512:
                    try:
                        batch.append(recv.receive_nowait())
                    except trio.WouldBlock:
                        break
                for frame in _merge(batch, self.router.known_to(conn.peer)):
                    if frame is _CLOSE:
                        conn.scope.cancel()
                        return
                    await conn.secure.send(frame)
                last_send = trio.current_time()
        except (TransportError, trio.EndOfChannel, trio.ClosedResourceError):
            conn.scope.cancel()

    async def _reader(self, conn: _Conn) -> None:
        try:
            await self._read_frames(conn)
        finally:
            conn.identified.set()
            conn.scope.cancel()

    async def _read_frames(self, conn: _Conn) -> None:
        while True:
            try:
                data = await conn.secure.receive()
            except ConnectionClosed:
                return
            except (TransportError, DecryptError) as e:
                log.debug("connection to %s broke: %s", conn.peer, e)
                self.router.score.add_penalty(conn.peer)
                return
            conn.last_seen = trio.current_time()
            try:
                frame = decode(data, FRAME_TYPES)
            except WireError as e:
                conn.bad_frames += 1
                self.router.score.add_penalty(conn.peer)
                log.debug("bad frame from %s: %s", conn.peer, e)
                if conn.bad_frames > self.config.max_bad_frames:
                    self._close(conn, "too many malformed frames")
                continue
            if self._dispatch(conn, frame):
                return

    def _dispatch(self, conn: _Conn, frame: Record) -> bool:
        """Handle one frame; True when the peer said goodbye."""
        kind = type(frame)
        if kind is Rpc:
            self.router.handle_rpc(conn.peer, frame)
        elif kind is Request:
            self._on_request(conn, frame)
        elif kind is Response:
            pending = conn.pending.get(frame.request_id)
            if pending is not None and pending.response is None:
                pending.response = frame
                pending.done.set()
        elif kind is Ping:
            self._enqueue(conn, Pong(nonce=frame.nonce))
        elif kind is Pong:
            event = conn.pongs.pop(frame.nonce, None)
            if event is not None:
                event.set()
        elif kind is Identify:
            conn.identify = frame
            conn.identified.set()
        elif kind is Goodbye:
            conn.goodbye = frame.reason
            return True
        return False

    async def _pinger(self, conn: _Conn) -> None:
        """Keepalive: ping only a connection that has been silent for ``ping_interval``.

        The dialer's side pings first; the listener's waits twice as long, so on an idle
        link usually one ping (and its pong) per interval crosses it, and none on a busy one.
        """
        interval = self.config.ping_interval * (1 if conn.outbound else 2)
        while True:
            await trio.sleep_until(conn.last_seen + interval)
            if trio.current_time() - conn.last_seen < interval:
                continue  # traffic arrived meanwhile: the peer is alive
            try:
                await self._ping(conn, self.config.ping_timeout)
            except RequestTimeout:
                log.debug("%s stopped answering pings", conn.peer)
                conn.scope.cancel()
                return

    async def _ping(self, conn: _Conn, timeout: float) -> float:
        nonce = next(self._ping_nonces)
        event = conn.pongs[nonce] = trio.Event()
        start = trio.current_time()
        try:
            with trio.fail_after(timeout):
                await conn.send_q.send(Ping(nonce=nonce))
                await event.wait()
        except trio.TooSlowError:
            raise RequestTimeout(f"no pong from {conn.peer} within {timeout}s") from None
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise PeerDisconnected(f"connection to {conn.peer} closed") from None
        finally:
            conn.pongs.pop(nonce, None)
        if conn.closed.is_set():
            raise PeerDisconnected(f"connection to {conn.peer} closed")
        return trio.current_time() - start

    # --- serving requests ------------------------------------------------------------------

    def _on_request(self, conn: _Conn, req: Request) -> None:
        handler = self._handlers.get(req.protocol)
        status = None
        if handler is None:
            status = STATUS_NO_HANDLER
        elif len(req.data) > handler.max_request_size:
            status = STATUS_TOO_LARGE
            self.router.score.add_penalty(conn.peer, 0.5)
        elif (
            conn.inflight >= self.config.max_concurrent_requests_per_peer
            or not conn.bucket.try_take()
        ):
            status = STATUS_RATE_LIMITED
        if status is not None:
            self._enqueue(conn, Response(request_id=req.request_id, status=status, data=b""))
            return
        conn.inflight += 1
        conn.nursery.start_soon(self._serve_request, conn, handler, req)

    async def _serve_request(self, conn: _Conn, handler: _Handler, req: Request) -> None:
        status, data = STATUS_ERROR, b""
        try:
            with trio.move_on_after(self.config.handler_timeout):
                result = await handler.fn(conn.peer, req.data)
                if not isinstance(result, bytes):
                    log.error("%r handler returned %s, not bytes", req.protocol, type(result))
                elif len(result) > handler.max_response_size:
                    log.error(
                        "%r handler's response of %d bytes is over its limit",
                        req.protocol,
                        len(result),
                    )
                else:
                    status, data = STATUS_OK, result
        except Exception:  # the handler is application code: its bug must not kill the host
            log.exception("%r handler failed serving %s", req.protocol, conn.peer)
        finally:
            conn.inflight -= 1
        with contextlib.suppress(trio.ClosedResourceError, trio.BrokenResourceError):
            await conn.send_q.send(Response(request_id=req.request_id, status=status, data=data))

    # --- maintenance -------------------------------------------------------------------

    def _maintenance(self) -> None:
        """After each router heartbeat: drop graylisted peers, trim above the high watermark."""
        self._disconnect_graylisted()
        self._trim_connections()

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
                self._close(conn, "graylisted")

    def _trim_connections(self) -> None:
        cfg = self.config
        if len(self._conns) <= cfg.high_water:
            return
        in_mesh = set().union(*self.router.mesh.values()) if self.router.mesh else set()
        ranked = sorted(
            self._conns, key=lambda p: (p in in_mesh, self.router.peer_score(p), self._rng.random())
        )
        for peer in ranked[: len(self._conns) - cfg.low_water]:
            self._close(self._conns[peer], "trimming connections")


def _merge(batch: list[object], known=None) -> list[object]:
    """Encode ``batch``: consecutive pubsub RPCs become as few frames as the limits allow.

    Messages whose id is in ``known`` (the peer sent them to us meanwhile) are left out.
    Returns encoded frames, and the ``_CLOSE`` sentinel where it was queued.
    """
    out: list[object] = []
    acc = _RpcAccumulator(known)
    for item in batch:
        if type(item) is not Rpc:
            out += acc.flush()
            out.append(item if item is _CLOSE or type(item) is bytes else encode(item))
            continue
        if not acc.fits(item):
            out += acc.flush()
        acc.add(item)
    out += acc.flush()
    return out


class _RpcAccumulator:
    """Merges RPCs and encodes the result exactly as ``encode(Rpc(...))`` would."""

    __slots__ = ("graft", "ihave", "iwant", "known", "msgs", "prune", "size", "subs")

    def __init__(self, known=None) -> None:
        self.known = known
        self.subs: list = []
        self.msgs: list[bytes] = []
        self.ihave: list = []
        self.iwant: list = []
        self.graft: list = []
        self.prune: list = []
        self.size = 0

    @staticmethod
    def _weight(rpc: Rpc) -> int:
        size = sum(map(len, rpc.messages))
        ctl = rpc.control
        if ctl is not None and (ctl.ihave or ctl.iwant):
            ids = sum(len(c.message_ids) for c in ctl.ihave)
            ids += sum(len(c.message_ids) for c in ctl.iwant)
            size += ids * 34
        return size

    def fits(self, rpc: Rpc) -> bool:
        ctl = rpc.control
        if len(self.msgs) + len(rpc.messages) > MAX_RPC_MESSAGES:
            return False
        if (
            self.size + self._weight(rpc) > _MERGE_BYTES
            or len(self.subs) + len(rpc.subscriptions) > 256
        ):
            return False
        return ctl is None or (
            len(self.ihave) + len(ctl.ihave) <= 64
            and len(self.iwant) + len(ctl.iwant) <= 64
            and len(self.graft) + len(ctl.graft) <= 256
            and len(self.prune) + len(ctl.prune) <= 256
        )

    def add(self, rpc: Rpc) -> None:
        self.subs += rpc.subscriptions
        known = self.known
        if known is None or not rpc.messages:
            self.msgs += rpc.messages
        else:
            self.msgs += [m for m in rpc.messages if sha256(m) not in known]
        self.size += self._weight(rpc)
        ctl = rpc.control
        if ctl is not None:
            self.ihave += ctl.ihave
            self.iwant += ctl.iwant
            self.graft += ctl.graft
            self.prune += ctl.prune

    def flush(self) -> list[bytes]:
        if not (self.subs or self.msgs or self.ihave or self.iwant or self.graft or self.prune):
            return []
        control = None
        if self.ihave or self.iwant or self.graft or self.prune:
            control = [
                ControlMessage.__wire_tag__,
                ControlMessage.__wire_version__,
                [_to_wire(x) for x in self.ihave],
                [_to_wire(x) for x in self.iwant],
                [_to_wire(x) for x in self.graft],
                [_to_wire(x) for x in self.prune],
            ]
        wire = [
            Rpc.__wire_tag__,
            Rpc.__wire_version__,
            [_to_wire(x) for x in self.subs],
            self.msgs,
            control,
        ]
        frame = msgpack.packb(wire, use_bin_type=True)
        self.__init__(self.known)
        return [frame]


def _guarded_validator(validator: Validator) -> Validator:
    async def guarded(peer: PeerId, msg: PubsubMessage) -> ValidationResult:
        try:
            return await validator(peer, msg)
        except Exception:  # application code: a bug there drops the message, not the node
            log.exception("topic validator for %r failed", msg.topic)
            return ValidationResult.IGNORE

    return guarded


__all__ = ["Delivered", "GossipHost", "RequestHandler"]
