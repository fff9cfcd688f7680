"""ECVRF-EDWARDS25519-SHA512-TAI (RFC 9381, suite 0x03) on libsodium's ed25519 arithmetic.

A verifiable random function: ``prove(seed, alpha)`` gives an 80-byte proof ``pi``, and
``verify(public_key, pi, alpha)`` gives the 64-byte output ``beta`` for exactly one
``pi``-independent value per (key, alpha): unlike an Ed25519 signature (whose nonce the
signer may pick freely), the holder of the key cannot choose among several valid outputs.
That uniqueness is what makes it a randomness beacon (docs/design.md D55).

The key is an ordinary Ed25519 key (RFC 8032 §5.1.5): a node's identity seed proves, and
its public key verifies. Point arithmetic is libsodium's (``crypto_core_ed25519_*`` and
``crypto_scalarmult_ed25519_*noclamp`` through PyNaCl); scalars are Python integers mod L.
Checked against the RFC's test vectors (Appendix B.3) in tests/pouw/test_vrf.py.

Stricter than the RFC in one place: a proof's Gamma must lie in the prime-order subgroup
(libsodium's scalar multiplication refuses other points). An honest Gamma is x times a
cofactor-cleared point, so it always does; refusing more can only refuse forgeries.
"""

from __future__ import annotations

import hashlib

from nacl import bindings as _na
from nacl.exceptions import RuntimeError as _NaclError

__all__ = ["OUTPUT_LEN", "PROOF_LEN", "VrfError", "proof_to_hash", "prove", "verify"]

SUITE = b"\x03"  # ECVRF-EDWARDS25519-SHA512-TAI
L = 2**252 + 27742317777372353535851937790883648493  # order of the prime subgroup
PROOF_LEN = 80  # Gamma (32) || c (16) || s (32)
OUTPUT_LEN = 64
_C_LEN = 16
_IDENTITY = b"\x01" + bytes(31)


class VrfError(ValueError):
    """A key or proof that does not verify; the message says why."""


def _sha512(*parts: bytes) -> bytes:
    return hashlib.sha512(b"".join(parts)).digest()


def _scalar(n: int) -> bytes:
    return (n % L).to_bytes(32, "little")


def _on_curve(p: bytes) -> bool:
    """Whether ``p`` decodes to a point of the curve (any subgroup)."""
    try:
        _na.crypto_core_ed25519_add(p, _IDENTITY)
    except _NaclError:
        return False
    return True


def _times8(p: bytes) -> bytes:
    """The cofactor times ``p``: three doublings (addition accepts every curve point)."""
    for _ in range(3):
        p = _na.crypto_core_ed25519_add(p, p)
    return p


def _mul(n: int, p: bytes) -> bytes:
    return _na.crypto_scalarmult_ed25519_noclamp(_scalar(n), p)


def _mul_base(n: int) -> bytes:
    return _na.crypto_scalarmult_ed25519_base_noclamp(_scalar(n))


def _encode_to_curve(public_key: bytes, alpha: bytes) -> bytes:
    """RFC 9381 §5.4.1.1, try-and-increment, salted with the public key."""
    for ctr in range(256):
        h = _sha512(SUITE, b"\x01", public_key, alpha, bytes([ctr]), b"\x00")[:32]
        if _on_curve(h):
            point = _times8(h)
            if point != _IDENTITY:
                return point
    raise VrfError("encode_to_curve found no point (probability 2^-256)")  # pragma: no cover


def _challenge(*points: bytes) -> int:
    """RFC 9381 §5.4.3: the first 16 bytes of SHA-512 over the five points."""
    digest = _sha512(SUITE, b"\x02", *points, b"\x00")
    return int.from_bytes(digest[:_C_LEN], "little")


def _expand(seed: bytes) -> tuple[int, bytes, bytes]:
    """The secret scalar x, the nonce key and the public key of an Ed25519 seed."""
    if len(seed) != 32:
        raise VrfError(f"an Ed25519 seed is 32 bytes, got {len(seed)}")
    h = _sha512(seed)
    a = bytearray(h[:32])
    a[0] &= 248
    a[31] &= 127
    a[31] |= 64
    x = int.from_bytes(a, "little")
    return x, h[32:], _mul_base(x)


def prove(seed: bytes, alpha: bytes) -> bytes:
    """The proof ``pi`` (80 bytes) of ``alpha`` under the Ed25519 key with ``seed``."""
    x, nonce_key, y = _expand(seed)
    h = _encode_to_curve(y, alpha)
    gamma = _mul(x, h)
    k = int.from_bytes(_sha512(nonce_key, h), "little") % L
    c = _challenge(y, h, gamma, _mul_base(k), _mul(k, h))
    s = (k + c * x) % L
    return gamma + c.to_bytes(_C_LEN, "little") + s.to_bytes(32, "little")


def proof_to_hash(pi: bytes) -> bytes:
    """The output ``beta`` (64 bytes) of a proof (RFC 9381 §5.2); check it first with
    :func:`verify`, which returns the same."""
    gamma, _, _ = _decode_proof(pi)
    return _sha512(SUITE, b"\x03", _times8(gamma), b"\x00")


def verify(public_key: bytes, pi: bytes, alpha: bytes) -> bytes:
    """The output ``beta`` of a valid proof of ``alpha`` under ``public_key``; raises
    VrfError for an invalid key or proof (RFC 9381 §5.3, with key validation)."""
    if len(public_key) != 32 or not _on_curve(public_key):
        raise VrfError("the public key is not a curve point")
    if _times8(public_key) == _IDENTITY:
        raise VrfError("the public key has small order")
    gamma, c, s = _decode_proof(pi)
    h = _encode_to_curve(public_key, alpha)
    try:
        u = _na.crypto_core_ed25519_sub(_mul_base(s), _mul(c, public_key))
        v = _na.crypto_core_ed25519_sub(_mul(s, h), _mul(c, gamma))
    except _NaclError:
        raise VrfError("the proof's points are outside the prime-order group") from None
    if _challenge(public_key, h, gamma, u, v) != c:
        raise VrfError("the proof does not verify")
    return _sha512(SUITE, b"\x03", _times8(gamma), b"\x00")


def _decode_proof(pi: bytes) -> tuple[bytes, int, int]:
    if len(pi) != PROOF_LEN:
        raise VrfError(f"a proof is {PROOF_LEN} bytes, got {len(pi)}")
    gamma = pi[:32]
    if not _on_curve(gamma):
        raise VrfError("the proof's Gamma is not a curve point")
    c = int.from_bytes(pi[32:48], "little")
    s = int.from_bytes(pi[48:], "little")
    if s >= L:
        raise VrfError("the proof's s is not reduced")
    return gamma, c, s
