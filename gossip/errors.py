"""The error types of the gossip layer.

Everything a remote peer can make go wrong surfaces as a :class:`GossipError`
subclass (or :class:`aipg.wire.WireError` for undecodable bytes); anything else is a
bug and propagates.
"""

from __future__ import annotations


class GossipError(Exception):
    """Base of every error the gossip layer raises on purpose."""


class TransportError(GossipError):
    """A dial failed or a connection broke (closed, reset, oversize frame)."""


class ConnectionClosed(TransportError):
    """The connection is closed; no more frames will arrive or be sent."""


class HandshakeError(GossipError):
    """The Noise handshake failed: bad ciphertext, bad payload or bad identity proof."""


class PeerIdMismatch(HandshakeError):
    """We dialed ``/p2p/<expected>`` but the remote proved it is ``actual``."""

    def __init__(self, expected, actual):
        self.expected = expected
        self.actual = actual
        super().__init__(
            f"dialed peer {expected} but the remote authenticated as {actual}; "
            "the address is stale or someone is impersonating that peer"
        )


class DecryptError(GossipError):
    """A transport message failed authentication (tampered, replayed or reordered)."""


class ConnectionRefused(GossipError):
    """The peer is banned, we are at max peers, or the dial is in backoff."""


class RequestError(GossipError):
    """Base of every failure of :meth:`GossipHost.request`."""


class NotConnected(RequestError):
    """There is no connection to that peer."""


class RequestTimeout(RequestError):
    """No response arrived within the timeout."""


class RequestTooLarge(RequestError):
    """The request or the response is over the protocol's size limit."""


class NoHandler(RequestError):
    """The peer serves no handler for that protocol."""


class RateLimited(RequestError):
    """The peer refused the request: we are over its per-peer rate limit."""


class RemoteError(RequestError):
    """The peer's handler failed or timed out while serving the request."""


class PeerDisconnected(RequestError):
    """The connection closed before the response arrived."""
