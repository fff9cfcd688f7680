"""Base58btc (the Bitcoin alphabet), as used by libp2p peer IDs and multiaddrs."""

from .errors import WireError

ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_INDEX = {c: i for i, c in enumerate(ALPHABET)}

# A base58 string longer than this is not anything we decode (peer IDs are ~52 chars).
MAX_ENCODED_LEN = 256


def b58encode(data: bytes) -> str:
    zeros = len(data) - len(data.lstrip(b"\0"))
    n = int.from_bytes(data, "big")
    out = []
    while n:
        n, r = divmod(n, 58)
        out.append(ALPHABET[r])
    return "1" * zeros + "".join(reversed(out))


def b58decode(text: str) -> bytes:
    """Decode base58btc text; raises WireError on characters outside the alphabet."""
    if len(text) > MAX_ENCODED_LEN:
        raise WireError(f"base58 text longer than {MAX_ENCODED_LEN} characters")
    n = 0
    for c in text:
        try:
            n = n * 58 + _INDEX[c]
        except KeyError:
            raise WireError(f"invalid base58 character {c!r}") from None
    zeros = len(text) - len(text.lstrip("1"))
    body = n.to_bytes((n.bit_length() + 7) // 8, "big") if n else b""
    return b"\0" * zeros + body
