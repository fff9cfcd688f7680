"""Peer IDs, encoded exactly as libp2p encodes them for Ed25519 keys.

A peer ID is the identity multihash (code 0x00) of the protobuf-encoded public key:
``00 24 08 01 12 20 <32-byte key>``, written in base58btc, so it starts ``12D3KooW``.
Because the multihash is the identity, the public key can be read back from the ID.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Annotated

from .base58 import b58decode, b58encode
from .codec import Len
from .errors import WireError
from .keyproto import public_key_from_protobuf, public_key_protobuf

MULTIHASH_IDENTITY = 0x00
# identity multihash of the 36-byte Ed25519 public key protobuf
PEER_ID_SIZE = 38
PeerIdBytes = Annotated[bytes, Len(PEER_ID_SIZE)]


@lru_cache(maxsize=16_384)
def _check_key(raw: bytes) -> None:
    """Parse the key protobuf of a peer ID's bytes (WireError if bad). Cached: a busy
    host builds the same few thousand peer IDs again and again (records, messages)."""
    public_key_from_protobuf(raw[2:])


class PeerId:
    """An Ed25519 libp2p peer ID. Compares and hashes by its bytes."""

    __slots__ = ("_str", "raw")

    def __init__(self, raw: bytes):
        if len(raw) != PEER_ID_SIZE or raw[0] != MULTIHASH_IDENTITY or raw[1] != PEER_ID_SIZE - 2:
            raise WireError("not an Ed25519 peer ID (expected an identity multihash of 36 bytes)")
        raw = bytes(raw)
        _check_key(raw)  # validates the embedded key protobuf
        self.raw = raw
        self._str: str | None = None

    @classmethod
    def from_public_key(cls, public_key: bytes) -> PeerId:
        proto = public_key_protobuf(public_key)
        return cls(bytes([MULTIHASH_IDENTITY, len(proto)]) + proto)

    @classmethod
    def from_string(cls, text: str) -> PeerId:
        """Parse the base58btc form (``12D3KooW...``); raises WireError otherwise."""
        if not isinstance(text, str) or not text:
            raise WireError("empty peer ID")
        if text.startswith("Qm"):
            raise WireError("sha256 (RSA/ECDSA) peer IDs are not supported; aipg uses Ed25519 keys")
        return cls(b58decode(text))

    @property
    def public_key(self) -> bytes:
        return public_key_from_protobuf(self.raw[2:])

    def __str__(self) -> str:
        if self._str is None:
            self._str = b58encode(self.raw)
        return self._str

    def __repr__(self) -> str:
        return f"PeerId({self})"

    def short(self) -> str:
        s = str(self)
        return s[:4] + "…" + s[-6:]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PeerId) and other.raw == self.raw

    def __lt__(self, other: PeerId) -> bool:
        return self.raw < other.raw

    def __hash__(self) -> int:
        return hash(self.raw)
