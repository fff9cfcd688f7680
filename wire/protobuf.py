"""The two protobuf primitives libp2p's key and handshake encodings need: varints."""

from .errors import WireError

MAX_VARINT_BITS = 63


def write_varint(n: int) -> bytes:
    """``n`` (>= 0) as a protobuf base-128 varint."""
    if n < 0:
        raise ValueError("varints here are unsigned")
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def read_varint(data: bytes, pos: int) -> tuple[int, int]:
    """The varint at ``data[pos:]`` and the position after it. Raises WireError when it
    is truncated or longer than 63 bits."""
    value = shift = 0
    while True:
        if pos >= len(data):
            raise WireError("truncated varint")
        b = data[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if value >> MAX_VARINT_BITS:  # a tenth byte's bits reach past bit 62
            raise WireError("varint longer than 63 bits")
        if not b & 0x80:
            return value, pos
        shift += 7
        if shift > MAX_VARINT_BITS:  # an eleventh byte, even of zero bits
            raise WireError("varint longer than 63 bits")
