"""libp2p's protobuf key encoding (``{Type = 1 (enum); Data = 2 (bytes)}``), Ed25519 only.

Both a key file (:mod:`.keys`) and a peer ID (:mod:`.peerid`) embed this encoding, so it
lives below them both.
"""

from .errors import WireError
from .protobuf import read_varint

KEY_TYPE_ED25519 = 1
PUBLIC_KEY_SIZE = 32


def parse_key_protobuf(data: bytes) -> tuple[int, bytes]:
    """The (type, data) of libp2p's key message, parsed strictly: both fields once, nothing
    else. Raises WireError otherwise."""
    key_type: int | None = None
    key_data: bytes | None = None
    pos = 0
    while pos < len(data):
        tag, pos = read_varint(data, pos)
        field, wire_type = tag >> 3, tag & 7
        if field == 1 and wire_type == 0 and key_type is None:
            key_type, pos = read_varint(data, pos)
        elif field == 2 and wire_type == 2 and key_data is None:
            n, pos = read_varint(data, pos)
            if pos + n > len(data):
                raise WireError("truncated key data in key protobuf")
            key_data, pos = data[pos : pos + n], pos + n
        else:
            raise WireError(f"unexpected field {field} (wire type {wire_type}) in key protobuf")
    if key_type is None or key_data is None:
        raise WireError("key protobuf needs both Type and Data")
    return key_type, key_data


def key_protobuf(key_type: int, key_data: bytes) -> bytes:
    """libp2p's key message for ``key_data`` of fewer than 128 bytes (one-byte lengths)."""
    assert len(key_data) < 128
    return bytes([0x08, key_type, 0x12, len(key_data)]) + key_data


def public_key_protobuf(public_key: bytes) -> bytes:
    """libp2p's protobuf ``PublicKey`` for a raw 32-byte Ed25519 public key."""
    if len(public_key) != PUBLIC_KEY_SIZE:
        raise WireError(f"an Ed25519 public key is 32 bytes, got {len(public_key)}")
    return key_protobuf(KEY_TYPE_ED25519, public_key)


def public_key_from_protobuf(data: bytes) -> bytes:
    """The raw Ed25519 public key in libp2p's protobuf ``PublicKey``; raises WireError for
    another key type, a wrong size or a malformed message."""
    key_type, key_data = parse_key_protobuf(data)
    if key_type != KEY_TYPE_ED25519:
        raise WireError(f"only Ed25519 keys (type 1) are supported, got type {key_type}")
    if len(key_data) != PUBLIC_KEY_SIZE:
        raise WireError(f"an Ed25519 public key is 32 bytes, got {len(key_data)}")
    return key_data
