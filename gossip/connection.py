"""One authenticated connection: its state, and the tasks that serve it.

:class:`Connection` is what the host keeps about a live connection (its bounded writer
queue, pending requests and pings, identify, score-relevant counters). :class:`ConnectionIO`
holds the three tasks the host starts per connection: one **reader** decodes frames (a
bad frame costs the peer score; too many close the connection) and dispatches them, one
**writer** drains the queue, merging queued pubsub RPCs into one frame
(:mod:`.rpcbatch`), and one **pinger** keeps an idle link alive. :func:`enqueue` and
:func:`close` are the only ways frames get onto the queue.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
from collections.abc import Awaitable, Callable

import trio

from aipg.wire import Record, WireError, decode

from .config import GossipConfig
from .errors import (
    ConnectionClosed,
    DecryptError,
    PeerDisconnected,
    RequestTimeout,
    TransportError,
)
from .messages import (
    CIRCUIT_TYPES,
    FRAME_TYPES,
    Goodbye,
    Identify,
    Ping,
    Pong,
    Request,
    Response,
    Rpc,
)
from .ratelimit import TokenBucket
from .router import GossipSubRouter
from .rpcbatch import CLOSE, merge_rpcs
from .secure import SecureConnection

log = logging.getLogger("aipg.gossip")

CLOSE_GRACE = 2.0
WRITE_COALESCE = 0.002
WRITE_BUSY_WINDOW = 0.02


@dataclasses.dataclass
class PendingRequest:
    done: trio.Event = dataclasses.field(default_factory=trio.Event)
    response: Response | None = None


class Connection:
    """One live, authenticated connection and the state the host keeps about it."""

    def __init__(
        self, secure: SecureConnection, outbound: bool, queue_size: int, bucket: TokenBucket
    ):
        self.secure = secure
        self.peer = secure.remote_peer
        self.outbound = outbound
        self.send_q, self.recv_q = trio.open_memory_channel[object](queue_size)
        self.pending: dict[int, PendingRequest] = {}
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
        # Opened on demand or beyond max_peers: closed after config.transient_idle
        # without requests. ``relayed``: it runs over a circuit (gossip/relay.py).
        self.transient = False
        self.relayed = False
        self.last_used = trio.current_time()

    @property
    def ip(self) -> str | None:
        addr = self.secure.remote_addr
        if addr is None:
            return None
        return addr.value_for("ip4") or addr.value_for("ip6")


def close(conn: Connection, reason: str) -> None:
    """Say goodbye and close ``conn`` once what is queued is flushed (bounded)."""
    try:
        conn.send_q.send_nowait(Goodbye(reason=reason))
        conn.send_q.send_nowait(CLOSE)
    except (trio.WouldBlock, trio.ClosedResourceError):
        if conn.scope is not None:
            conn.scope.cancel()
        return
    if conn.scope is not None:
        conn.scope.deadline = min(conn.scope.deadline, trio.current_time() + CLOSE_GRACE)


def enqueue(conn: Connection, frame: object) -> bool:
    try:
        conn.send_q.send_nowait(frame)
        return True
    except trio.WouldBlock:
        conn.dropped += 1
        return False
    except trio.ClosedResourceError:
        return False


class ConnectionIO:
    """The reader, writer and pinger of every connection of one host.

    Frames go to ``router`` (pubsub RPCs) and ``on_request`` (requests); responses,
    pings, identify and goodbye are settled on the :class:`Connection` itself.
    """

    def __init__(
        self,
        config: GossipConfig,
        router: GossipSubRouter,
        on_request: Callable[[Connection, Request], None],
        on_circuit: Callable[[Connection, Record], Awaitable[None]] | None = None,
    ):
        self.config = config
        self.router = router
        self._on_request = on_request
        self._on_circuit = on_circuit
        self._ping_nonces = itertools.count(1)

    async def writer(self, conn: Connection) -> None:
        recv = conn.recv_q
        last_send = -1.0
        try:
            while True:
                batch = [await recv.receive()]
                # Busy (we sent moments ago): pause briefly so the frames of a burst pile
                # up and leave merged, saving most per-frame cost (syscalls, websocket
                # framing, task switches). Idle: send at once, adding no latency.
                # Only gossip waits: requests and responses are someone's round trip (a
                # streamed token, a claim, a latent fetch), and relayed frames have been
                # batched inside their circuit already (a pause would add up per hop).
                if type(batch[0]) is Rpc and (trio.current_time() - last_send < WRITE_BUSY_WINDOW):
                    await trio.sleep(WRITE_COALESCE)
                else:
                    await trio.lowlevel.cancel_shielded_checkpoint()
                while len(batch) < 512:
                    try:
                        batch.append(recv.receive_nowait())
                    except trio.WouldBlock:
                        break
                for frame in merge_rpcs(batch, self.router.known_to(conn.peer)):
                    if frame is CLOSE:
                        conn.scope.cancel()
                        return
                    await conn.secure.send(frame)
                last_send = trio.current_time()
        except (TransportError, trio.EndOfChannel, trio.ClosedResourceError):
            conn.scope.cancel()

    async def reader(self, conn: Connection) -> None:
        try:
            await self._read_frames(conn)
        finally:
            conn.identified.set()
            conn.scope.cancel()

    async def _read_frames(self, conn: Connection) -> None:
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
                    close(conn, "too many malformed frames")
                continue
            if type(frame) in CIRCUIT_TYPES:
                if self._on_circuit is not None:
                    await self._on_circuit(conn, frame)
                continue
            if self._dispatch(conn, frame):
                return

    def _dispatch(self, conn: Connection, frame: Record) -> bool:
        """Handle one frame; True when the peer said goodbye."""
        kind = type(frame)
        if kind is Rpc:
            self.router.handle_rpc(conn.peer, frame)
        elif kind is Request:
            conn.last_used = trio.current_time()
            self._on_request(conn, frame)
        elif kind is Response:
            pending = conn.pending.get(frame.request_id)
            if pending is not None and pending.response is None:
                pending.response = frame
                pending.done.set()
        elif kind is Ping:
            enqueue(conn, Pong(nonce=frame.nonce))
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

    async def pinger(self, conn: Connection) -> None:
        """Keepalive: ping only a connection that has been silent for ``ping_interval``.

        The dialer's side pings first; the listener's waits twice as long, so on an idle
        link usually one ping (and its pong) per interval crosses it, and none on a busy one.
        """
        interval = self.config.ping_interval * (1 if conn.outbound else 2)
        while True:
            await trio.sleep_until(conn.last_seen + interval)
            if not silent_since(trio.current_time(), conn.last_seen, interval):
                continue  # traffic arrived meanwhile: the peer is alive
            try:
                await self.ping(conn, self.config.ping_timeout)
            except RequestTimeout:
                log.debug("%s stopped answering pings", conn.peer)
                conn.scope.cancel()
                return

    async def ping(self, conn: Connection, timeout: float) -> float:
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


def silent_since(now: float, last_seen: float, interval: float) -> bool:
    """Whether a connection last heard from at ``last_seen`` has been silent for
    ``interval`` at ``now``. Compared with the deadline itself, as ``sleep_until`` set it:
    ``now - last_seen < interval`` can hold at the deadline through float rounding, and
    the keepalive loop then spun without ever blocking."""
    return now >= last_seen + interval
