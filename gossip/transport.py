"""Frame transports: trio-websocket on the network, trio channels in memory.

A transport moves whole binary frames between two endpoints; it knows nothing of
encryption or peers (the secure channel runs on top of it). Both implementations give
the same interface:

* ``await transport.listen(nursery, addr, handler) -> list[Multiaddr]``: start
  accepting in ``nursery``; each inbound connection runs ``await handler(conn)`` in its
  own task and is closed when the handler returns.
* ``await transport.dial(nursery, addr) -> FrameConnection``: a connected frame
  pipe; background work (the websocket reader) runs in ``nursery`` until it closes.

A frame over ``max_frame_size`` is refused on send and closes the connection on
receive (websocket close code 1009), so one hostile peer can never make us buffer
more than that.
"""

from __future__ import annotations

import abc
import contextlib
import itertools
from collections.abc import Awaitable, Callable
from typing import Protocol

import trio
import trio_websocket

from aipg.wire import Multiaddr, WireError

from .errors import ConnectionClosed, TransportError

DEFAULT_MAX_FRAME_SIZE = 4 << 20
# Frames a connection may have queued in each direction before a sender waits.
FRAME_QUEUE_SIZE = 64
# A websocket endpoint that never completes its opening handshake is dropped.
WS_CONNECT_TIMEOUT = 10.0
WS_DISCONNECT_TIMEOUT = 2.0
WS_RECEIVE_BUFFER = 1 << 16
WS_RESOURCE = "/aipg/1"


class FrameConnection(Protocol):
    """A bidirectional pipe of binary frames. Owned by whoever dialed or accepted it."""

    remote_addr: Multiaddr | None

    async def send_frame(self, frame: bytes) -> None:
        """Send one frame; raises ConnectionClosed or TransportError."""

    async def receive_frame(self) -> bytes:
        """The next frame; raises ConnectionClosed when the peer is gone."""

    async def aclose(self) -> None:
        """Close; idempotent, never raises."""


Handler = Callable[[FrameConnection], Awaitable[None]]


class Transport(abc.ABC):
    """Listens and dials; see the module docstring."""

    max_frame_size: int

    @abc.abstractmethod
    async def listen(
        self, nursery: trio.Nursery, addr: Multiaddr, handler: Handler
    ) -> list[Multiaddr]: ...

    @abc.abstractmethod
    async def dial(self, nursery: trio.Nursery, addr: Multiaddr) -> FrameConnection: ...


# --- websockets --------------------------------------------------------------------


class WebsocketConnection:
    """A trio-websocket connection carrying binary frames only."""

    def __init__(self, ws: trio_websocket.WebSocketConnection, remote_addr: Multiaddr | None):
        self._ws = ws
        self.remote_addr = remote_addr

    async def send_frame(self, frame: bytes) -> None:
        try:
            await self._ws.send_message(frame)
        except trio_websocket.ConnectionClosed as e:
            raise ConnectionClosed(f"websocket closed: {e.reason}") from None
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as e:
            raise ConnectionClosed(f"websocket broken: {e!r}") from None

    async def receive_frame(self) -> bytes:
        try:
            msg = await self._ws.get_message()
        except trio_websocket.ConnectionClosed as e:
            raise ConnectionClosed(f"websocket closed: {e.reason}") from None
        if not isinstance(msg, bytes):
            await self.aclose()
            raise TransportError("text frame on a binary-only connection")
        return msg

    async def aclose(self) -> None:
        with trio.move_on_after(WS_DISCONNECT_TIMEOUT) as scope:
            scope.shield = True
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                await self._ws.aclose()


def _peer_multiaddr(ws: trio_websocket.WebSocketConnection) -> Multiaddr | None:
    remote = ws.remote
    host = getattr(remote, "address", None)
    port = getattr(remote, "port", None)
    if host is None or port is None:
        return None
    try:
        return Multiaddr.websocket(str(host), int(port))
    except WireError:
        return None


class WebsocketTransport(Transport):
    """``/ip4/HOST/tcp/PORT/ws`` over trio-websocket (no TLS: Noise secures the channel)."""

    def __init__(self, *, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE):
        self.max_frame_size = max_frame_size

    async def listen(
        self, nursery: trio.Nursery, addr: Multiaddr, handler: Handler
    ) -> list[Multiaddr]:
        host, port, tls = addr.websocket_target()
        if tls:
            raise TransportError("/wss is not supported: Noise already encrypts the channel")

        async def on_request(request: trio_websocket.WebSocketRequest) -> None:
            try:
                ws = await request.accept()
            except (trio_websocket.ConnectionClosed, trio.BrokenResourceError, OSError):
                return
            conn = WebsocketConnection(ws, _peer_multiaddr(ws))
            try:
                await handler(conn)
            finally:
                await conn.aclose()

        server = await nursery.start(
            lambda task_status: trio_websocket.serve_websocket(
                on_request,
                host,
                port,
                None,
                handler_nursery=nursery,
                message_queue_size=FRAME_QUEUE_SIZE,
                max_message_size=self.max_frame_size,
                receive_buffer_size=WS_RECEIVE_BUFFER,
                connect_timeout=WS_CONNECT_TIMEOUT,
                disconnect_timeout=WS_DISCONNECT_TIMEOUT,
                task_status=task_status,
            )
        )
        return [Multiaddr.websocket(host, server.port)]

    async def dial(self, nursery: trio.Nursery, addr: Multiaddr) -> FrameConnection:
        host, port, tls = addr.websocket_target()
        if tls:
            raise TransportError("/wss is not supported: Noise already encrypts the channel")
        try:
            with trio.fail_after(WS_CONNECT_TIMEOUT):
                ws = await trio_websocket.connect_websocket(
                    nursery,
                    host,
                    port,
                    WS_RESOURCE,
                    use_ssl=False,
                    message_queue_size=FRAME_QUEUE_SIZE,
                    max_message_size=self.max_frame_size,
                    receive_buffer_size=WS_RECEIVE_BUFFER,
                )
        except trio.TooSlowError:
            raise TransportError(f"dial {addr}: timed out") from None
        except (OSError, trio_websocket.HandshakeError, trio.BrokenResourceError) as e:
            raise TransportError(f"dial {addr}: {e}") from None
        return WebsocketConnection(ws, addr.without_peer_id())


# --- in memory ---------------------------------------------------------------------


class MemoryConnection:
    """One end of an in-memory frame pipe (a pair of bounded trio channels)."""

    def __init__(
        self,
        send: trio.MemorySendChannel[bytes],
        receive: trio.MemoryReceiveChannel[bytes],
        max_frame_size: int,
        remote_addr: Multiaddr | None,
    ):
        self._send = send
        self._receive = receive
        self._max = max_frame_size
        self.remote_addr = remote_addr

    async def send_frame(self, frame: bytes) -> None:
        if len(frame) > self._max:
            await self.aclose()
            raise TransportError(f"frame of {len(frame)} bytes is over {self._max}")
        try:
            await self._send.send(bytes(frame))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise ConnectionClosed("memory connection closed") from None

    async def receive_frame(self) -> bytes:
        try:
            frame = await self._receive.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError, trio.BrokenResourceError):
            raise ConnectionClosed("memory connection closed") from None
        if len(frame) > self._max:
            await self.aclose()
            raise TransportError(f"frame of {len(frame)} bytes is over {self._max}")
        return frame

    async def aclose(self) -> None:
        await self._send.aclose()
        await self._receive.aclose()


class MemoryNetwork:
    """A registry of in-memory listeners, shared by every MemoryTransport of one test."""

    def __init__(self) -> None:
        self._listeners: dict[str, tuple[trio.Nursery, Handler, int]] = {}
        self._ports = itertools.count(10000)
        self._behind_nat: set[str] = set()
        self.partitioned: set[str] = set()  # listeners no one can reach (a cut link)

    def _key(self, addr: Multiaddr) -> str:
        return str(addr.without_peer_id())

    def bind(
        self,
        addr: Multiaddr,
        nursery: trio.Nursery,
        handler: Handler,
        max_frame: int,
        nat: bool = False,
    ):
        host, port, _ = addr.websocket_target()
        if port == 0:
            port = next(self._ports)
            while self._key(Multiaddr.websocket(host, port)) in self._listeners:
                port = next(self._ports)
        bound = Multiaddr.websocket(host, port)
        if self._key(bound) in self._listeners:
            raise TransportError(f"{bound} is already in use")
        self._listeners[self._key(bound)] = (nursery, handler, max_frame)
        if nat:
            self._behind_nat.add(self._key(bound))
        return bound

    def unbind(self, addr: Multiaddr) -> None:
        self._listeners.pop(self._key(addr), None)
        self._behind_nat.discard(self._key(addr))

    def connect(self, addr: Multiaddr, max_frame: int) -> MemoryConnection:
        entry = self._listeners.get(self._key(addr))
        if entry is None:
            raise TransportError(f"dial {addr}: connection refused (nobody listens there)")
        if self._key(addr) in self._behind_nat:
            raise TransportError(f"dial {addr}: no route (the listener is behind a NAT)")
        if self._key(addr) in self.partitioned:
            raise TransportError(f"dial {addr}: timed out (partitioned)")
        nursery, handler, server_max = entry
        a_send, b_receive = trio.open_memory_channel[bytes](FRAME_QUEUE_SIZE)
        b_send, a_receive = trio.open_memory_channel[bytes](FRAME_QUEUE_SIZE)
        client = MemoryConnection(a_send, a_receive, max_frame, addr.without_peer_id())
        server = MemoryConnection(b_send, b_receive, server_max, None)

        async def serve() -> None:
            try:
                await handler(server)
            finally:
                await server.aclose()

        try:
            nursery.start_soon(serve)
        except RuntimeError:  # the listener's nursery is closing
            raise TransportError(f"dial {addr}: connection refused (listener closed)") from None
        return client


class MemoryTransport(Transport):
    """The transport interface over a :class:`MemoryNetwork`; no sockets at all.

    ``nat=True`` simulates a node behind a NAT: it dials out freely, but nobody can dial
    the addresses it listens on.
    """

    def __init__(
        self,
        network: MemoryNetwork,
        *,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        nat: bool = False,
    ):
        self.network = network
        self.max_frame_size = max_frame_size
        self.nat = nat

    async def listen(
        self, nursery: trio.Nursery, addr: Multiaddr, handler: Handler
    ) -> list[Multiaddr]:
        bound = self.network.bind(addr, nursery, handler, self.max_frame_size, self.nat)

        async def unbind_on_exit() -> None:
            try:
                await trio.sleep_forever()
            finally:
                self.network.unbind(bound)

        nursery.start_soon(unbind_on_exit)
        return [bound]

    async def dial(self, nursery: trio.Nursery, addr: Multiaddr) -> FrameConnection:
        await trio.lowlevel.checkpoint()
        return self.network.connect(addr, self.max_frame_size)
