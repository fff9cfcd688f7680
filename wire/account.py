"""Account addresses and amounts.

An address is bech32m (BIP-350) with the human-readable part ``aipg`` over the first 20
bytes of sha256(``b"aipg/address/1\\0"`` || Ed25519 public key): case-insensitive,
typable, and its checksum catches any typo of up to four characters.

Amounts are integers in base units: 1 AIPG = 10^8 units. No float touches an amount.
"""

from __future__ import annotations

import hashlib
import re
from typing import Annotated, NewType

from .codec import Len, Range
from .errors import WireError

UNITS_PER_AIPG = 10**8
AIPG_DECIMALS = 8
ADDRESS_HRP = "aipg"
ADDRESS_PAYLOAD_SIZE = 20

Units = NewType("Units", int)
# Largest amount anywhere in the protocol (well above the 200M AIPG cap).
MAX_UNITS = 2**63 - 1
UnitsField = Annotated[int, Range(0, MAX_UNITS)]
AddressBytes = Annotated[bytes, Len(ADDRESS_PAYLOAD_SIZE)]

_CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_BECH32M_CONST = 0x2BC830A3


def _polymod(values: list[int]) -> int:
    gen = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)
    chk = 1
    for v in values:
        top = chk >> 25
        chk = (chk & 0x1FFFFFF) << 5 ^ v
        for i in range(5):
            chk ^= gen[i] if (top >> i) & 1 else 0
    return chk


def _hrp_expand(hrp: str) -> list[int]:
    return [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp]


def _convert_bits(data: bytes | list[int], from_bits: int, to_bits: int, pad: bool) -> list[int]:
    acc = bits = 0
    out = []
    maxv = (1 << to_bits) - 1
    for value in data:
        acc = (acc << from_bits) | value
        bits += from_bits
        while bits >= to_bits:
            bits -= to_bits
            out.append((acc >> bits) & maxv)
    if pad and bits:
        out.append((acc << (to_bits - bits)) & maxv)
    elif not pad and (bits >= from_bits or (acc << (to_bits - bits)) & maxv):
        raise WireError("address has invalid padding")
    return out


def bech32m_encode(hrp: str, payload: bytes) -> str:
    data = _convert_bits(payload, 8, 5, True)
    polymod = _polymod([*_hrp_expand(hrp), *data, 0, 0, 0, 0, 0, 0]) ^ _BECH32M_CONST
    checksum = [(polymod >> 5 * (5 - i)) & 31 for i in range(6)]
    return hrp + "1" + "".join(_CHARSET[d] for d in data + checksum)


def bech32m_decode(text: str) -> tuple[str, bytes]:
    if len(text) > 90:
        raise WireError("address is too long")
    if text.lower() != text and text.upper() != text:
        raise WireError("address mixes upper and lower case")
    text = text.lower()
    pos = text.rfind("1")
    if pos < 1 or pos + 7 > len(text):
        raise WireError("address has no separator or is too short")
    hrp, rest = text[:pos], text[pos + 1 :]
    try:
        data = [_CHARSET.index(c) for c in rest]
    except ValueError:
        raise WireError("address has a character outside the bech32 alphabet") from None
    if _polymod(_hrp_expand(hrp) + data) != _BECH32M_CONST:
        raise WireError("address checksum does not match (a typo?)")
    return hrp, bytes(_convert_bits(data[:-6], 5, 8, False))


class Address:
    """An account address. Compares and hashes by its 20 payload bytes."""

    __slots__ = ("raw",)

    def __init__(self, raw: bytes):
        if len(raw) != ADDRESS_PAYLOAD_SIZE:
            raise WireError(f"an address is {ADDRESS_PAYLOAD_SIZE} bytes, got {len(raw)}")
        self.raw = bytes(raw)

    @classmethod
    def from_public_key(cls, public_key: bytes) -> Address:
        if len(public_key) != 32:
            raise WireError(f"an Ed25519 public key is 32 bytes, got {len(public_key)}")
        return cls(hashlib.sha256(b"aipg/address/1\0" + public_key).digest()[:ADDRESS_PAYLOAD_SIZE])

    @classmethod
    def from_string(cls, text: str) -> Address:
        """Parse ``aipg1...``; raises WireError saying what is wrong."""
        if not isinstance(text, str):
            raise WireError("address must be a string")
        hrp, payload = bech32m_decode(text.strip())
        if hrp != ADDRESS_HRP:
            raise WireError(f"address must start with {ADDRESS_HRP}1, not {hrp}1")
        return cls(payload)

    def __str__(self) -> str:
        return bech32m_encode(ADDRESS_HRP, self.raw)

    def __repr__(self) -> str:
        return f"Address({self})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Address) and other.raw == self.raw

    def __lt__(self, other: Address) -> bool:
        return self.raw < other.raw

    def __hash__(self) -> int:
        return hash(self.raw)


_AMOUNT_RE = re.compile(r"(\d{1,12}(?:_\d{3})*|\d{1,3}(?:,\d{3})+)(?:\.(\d+))?")


def parse_amount(text: str) -> Units:
    """``"10000"``, ``"0.5"``, ``"1,250.75"`` AIPG → base units.

    Raises WireError for negatives, more than 8 decimals, and anything not a number.
    """
    if not isinstance(text, str):
        raise WireError("amount must be text such as 10000 or 0.5")
    s = text.strip().removesuffix("AIPG").strip()
    if s.startswith("-"):
        raise WireError(f"amount cannot be negative: {text!r}")
    m = _AMOUNT_RE.fullmatch(s)
    if not m:
        raise WireError(f"not an amount: {text!r} (write it like 10000 or 0.5)")
    whole = int(m.group(1).replace(",", "").replace("_", ""))
    frac = m.group(2) or ""
    if len(frac) > AIPG_DECIMALS:
        raise WireError(f"amount {text!r} has more than {AIPG_DECIMALS} decimals")
    units = whole * UNITS_PER_AIPG + int(frac.ljust(AIPG_DECIMALS, "0") or 0)
    if units > MAX_UNITS:
        raise WireError(f"amount {text!r} is too large")
    return Units(units)


def format_amount(units: int, *, thousands: bool = True) -> str:
    """Base units → ``"1,250.75"`` (no trailing zeros; whole amounts have no point)."""
    if type(units) is not int:
        raise TypeError("amounts are integers in base units")
    sign = "-" if units < 0 else ""
    whole, frac = divmod(abs(units), UNITS_PER_AIPG)
    text = f"{whole:,}" if thousands else str(whole)
    if frac:
        text += "." + f"{frac:08d}".rstrip("0")
    return sign + text
