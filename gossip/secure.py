"""The secure channel: a Noise XX session over a frame transport.

Handshake (libp2p noise, prologue empty): three frames, the responder's and the
initiator's carrying the identity payload of :mod:`aipg.gossip.noise`. The initiator
checks the responder's proven peer ID against the ``/p2p/<id>`` it dialed and fails
with :class:`PeerIdMismatch` otherwise.

Transport phase: every frame is one Noise transport message (at most 65535 bytes).
Its plaintext starts with one flag byte, ``0x00`` for the last fragment of a message
and ``0x01`` when more follow, so messages up to ``max_message_size`` travel as
several frames. (libp2p frames noise messages with a 2-byte length prefix on a byte
stream; websockets already delimit frames, so we need no prefix.)
"""

from __future__ import annotations

import trio
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from aipg.wire import Identity, PeerId

from .errors import DecryptError, HandshakeError, PeerIdMismatch, TransportError
from .noise import (
    MAX_PLAINTEXT,
    CipherState,
    XXHandshake,
    make_identity_payload,
    verify_identity_payload,
)
from .transport import FrameConnection

HANDSHAKE_TIMEOUT = 10.0
DEFAULT_MAX_MESSAGE_SIZE = 4 << 20
_LAST = b"\x00"
_MORE = b"\x01"
_CHUNK = MAX_PLAINTEXT - 1


class SecureConnection:
    """An authenticated, encrypted message pipe to :attr:`remote_peer`.

    One task may send and one task may receive at a time (the host's writer and
    reader); the nonces of each direction depend on message order.
    """

    def __init__(
        self,
        conn: FrameConnection,
        remote_peer: PeerId,
        send_cipher: CipherState,
        recv_cipher: CipherState,
        *,
        initiator: bool,
        max_message_size: int,
    ):
        self.raw = conn
        self.remote_peer = remote_peer
        self.initiator = initiator
        self.remote_addr = conn.remote_addr
        self._send = send_cipher
        self._recv = recv_cipher
        self._max = max_message_size

    async def send(self, message: bytes) -> None:
        """Encrypt and send one message (fragmented when over one Noise message)."""
        if len(message) > self._max:
            raise TransportError(f"message of {len(message)} bytes is over {self._max}")
        if len(message) <= _CHUNK:
            await self.raw.send_frame(self._send.encrypt(_LAST + message))
            return
        view = memoryview(message)
        for start in range(0, len(message), _CHUNK):
            flag = _LAST if start + _CHUNK >= len(message) else _MORE
            await self.raw.send_frame(self._send.encrypt(flag + view[start : start + _CHUNK]))

    async def receive(self) -> bytes:
        """The next whole message; raises ConnectionClosed, TransportError or DecryptError."""
        parts: list[bytes] = []
        size = 0
        while True:
            plain = self._recv.decrypt(await self.raw.receive_frame())
            if not plain or plain[:1] not in (_LAST, _MORE):
                raise DecryptError("bad fragment flag")
            size += len(plain) - 1
            if size > self._max:
                raise TransportError(f"message over {self._max} bytes")
            if plain[:1] == _LAST and not parts:
                return plain[1:]
            parts.append(plain[1:])
            if plain[:1] == _LAST:
                return b"".join(parts)

    async def aclose(self) -> None:
        await self.raw.aclose()


class NoiseIdentity:
    """A host's static X25519 key and the identity payload that vouches for it.

    libp2p lets the static key live as long as the host; forward secrecy comes from the
    per-handshake ephemeral keys. Making it once saves a key generation and an Ed25519
    signature on every connection.
    """

    __slots__ = ("identity", "payload", "static_key")

    def __init__(self, identity: Identity):
        self.identity = identity
        self.static_key = X25519PrivateKey.generate()
        public = self.static_key.public_key().public_bytes_raw()
        self.payload = make_identity_payload(identity, public)


def _noise_identity(identity: Identity | NoiseIdentity) -> NoiseIdentity:
    return identity if isinstance(identity, NoiseIdentity) else NoiseIdentity(identity)


async def secure_outbound(
    conn: FrameConnection,
    identity: Identity | NoiseIdentity,
    expected: PeerId | None,
    *,
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    timeout: float = HANDSHAKE_TIMEOUT,
) -> SecureConnection:
    """Run the initiator's side; raises HandshakeError (PeerIdMismatch) or TransportError."""
    me = _noise_identity(identity)
    hs = XXHandshake(True, me.static_key)
    try:
        with trio.fail_after(timeout):
            await conn.send_frame(hs.write_message())
            payload = hs.read_message(await conn.receive_frame())
            remote = verify_identity_payload(payload, hs.remote_static)
            if expected is not None and remote != expected:
                raise PeerIdMismatch(expected, remote)
            await conn.send_frame(hs.write_message(me.payload))
    except trio.TooSlowError:
        raise HandshakeError(f"handshake timed out after {timeout}s") from None
    send, recv = hs.split()
    return SecureConnection(
        conn, remote, send, recv, initiator=True, max_message_size=max_message_size
    )


async def secure_inbound(
    conn: FrameConnection,
    identity: Identity | NoiseIdentity,
    *,
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    timeout: float = HANDSHAKE_TIMEOUT,
) -> SecureConnection:
    """Run the responder's side; raises HandshakeError or TransportError."""
    me = _noise_identity(identity)
    hs = XXHandshake(False, me.static_key)
    try:
        with trio.fail_after(timeout):
            hs.read_message(await conn.receive_frame())
            await conn.send_frame(hs.write_message(me.payload))
            payload = hs.read_message(await conn.receive_frame())
            remote = verify_identity_payload(payload, hs.remote_static)
    except trio.TooSlowError:
        raise HandshakeError(f"handshake timed out after {timeout}s") from None
    if remote == me.identity.peer_id:
        raise HandshakeError("the remote authenticated with our own identity")
    send, recv = hs.split()
    return SecureConnection(
        conn, remote, send, recv, initiator=False, max_message_size=max_message_size
    )
