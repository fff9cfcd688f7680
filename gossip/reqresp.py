"""Request/response on the gossip connections: handlers by protocol, and the request side.

A :class:`Request` frame names a protocol; :class:`RequestResponse` answers it with that
protocol's handler (refusing it when there is none, when it is over the handler's size
limit, or when the peer is over its rate or concurrency limit), and matches our own
requests to the :class:`Response` frames that come back. The status codes of a response
map to the :class:`RequestError` subclasses the requester raises.

Priorities: a handler may classify its requests (``priority(data)``: 0 high, above 0
low). Low-priority requests take a peer's request budget only above a reserve
(``LOW_PRIORITY_RESERVE`` of the burst) and hold at most half of its concurrent
slots, so a peer's high-priority requests (a job's result) are never refused because
its low-priority ones (streamed chunks) spent the budget. The requester decides what it
marks low, so misclassifying only ever costs its own requests.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
from collections.abc import Awaitable, Callable

import trio

from aipg.wire import PeerId

from .config import GossipConfig
from .connection import Connection, PendingRequest, enqueue
from .errors import (
    NoHandler,
    PeerDisconnected,
    RateLimited,
    RemoteError,
    RequestTimeout,
    RequestTooLarge,
)
from .messages import MAX_REQUEST_DATA, Request, Response
from .score import PeerScore

log = logging.getLogger("aipg.gossip")

RequestHandler = Callable[[PeerId, bytes], Awaitable[bytes]]
Priority = Callable[[bytes], int]  # a request's priority by its data: 0 high, > 0 low

LOW_PRIORITY_RESERVE = 0.5  # of a peer's request burst, kept for its high-priority requests

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


@dataclasses.dataclass
class ProtocolHandler:
    fn: RequestHandler
    max_request_size: int
    max_response_size: int
    priority: Priority | None = None


class RequestResponse:
    """The request handlers of one host, and the requests it has sent.

    ``score`` is the router's peer score: an oversized request costs its sender.
    """

    def __init__(self, config: GossipConfig, score: PeerScore):
        self.config = config
        self.score = score
        self._handlers: dict[str, ProtocolHandler] = {}
        self._request_ids = itertools.count(1)

    def set_handler(
        self,
        protocol: str,
        handler: RequestHandler,
        max_request_size: int,
        max_response_size: int,
        priority: Priority | None = None,
    ) -> None:
        if not 0 < max_request_size <= MAX_REQUEST_DATA:
            raise ValueError(f"max_request_size must be in 1..{MAX_REQUEST_DATA}")
        self._handlers[protocol] = ProtocolHandler(
            handler, max_request_size, max_response_size, priority
        )

    def protocols(self) -> list[str]:
        """The protocols we serve, sorted (for Identify)."""
        return sorted(self._handlers)

    # --- requesting ----------------------------------------------------------------------

    async def request(
        self, conn: Connection, protocol: str, data: bytes, timeout: float | None
    ) -> bytes:
        """Send a request on ``conn`` and wait for its response; see ``GossipHost.request``."""
        peer = conn.peer
        if len(data) > MAX_REQUEST_DATA:
            raise RequestTooLarge(f"request of {len(data)} bytes is over {MAX_REQUEST_DATA}")
        rid = next(self._request_ids)
        pending = conn.pending[rid] = PendingRequest()
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

    # --- serving requests ------------------------------------------------------------------

    def on_request(self, conn: Connection, req: Request) -> None:
        handler = self._handlers.get(req.protocol)
        status = None
        if handler is None:
            status = STATUS_NO_HANDLER
        elif len(req.data) > handler.max_request_size:
            status = STATUS_TOO_LARGE
            self.score.add_penalty(conn.peer, 0.5)
        elif not self._admit(conn, handler, req.data):
            status = STATUS_RATE_LIMITED
        if status is not None:
            enqueue(conn, Response(request_id=req.request_id, status=status, data=b""))
            return
        conn.inflight += 1
        conn.nursery.start_soon(self._serve_request, conn, handler, req)

    def _admit(self, conn: Connection, handler: ProtocolHandler, data: bytes) -> bool:
        """Whether the peer's budget takes this request (and take it): high priority
        may use all of it, low priority only what is above the reserve."""
        slots = self.config.max_concurrent_requests_per_peer
        low = handler.priority is not None and handler.priority(data) > 0
        if low:
            if conn.inflight >= slots // 2:
                return False
            if conn.bucket.tokens < self.config.request_burst * LOW_PRIORITY_RESERVE + 1:
                return False
        elif conn.inflight >= slots:
            return False
        return conn.bucket.try_take()

    async def _serve_request(
        self, conn: Connection, handler: ProtocolHandler, req: Request
    ) -> None:
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
