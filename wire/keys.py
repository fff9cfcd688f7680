"""Ed25519 identities: generation, key files (libp2p's protobuf key encoding), signatures.

A node has one identity. Its private key lives in a key file readable only by its
owner (mode 0600); we refuse to load one that others can read, as ssh does.
The file holds libp2p's protobuf ``PrivateKey`` encoding, so an operator can bring a
key made by another libp2p implementation (``aipg-node keys import``).
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .account import Address
from .errors import WireError
from .keyproto import KEY_TYPE_ED25519, PUBLIC_KEY_SIZE, key_protobuf, parse_key_protobuf
from .peerid import PeerId

SIGNATURE_SIZE = 64


class KeyFileError(Exception):
    """A key file is missing, unreadable, malformed or unsafe; the message says how to fix it."""


class Identity:
    """An Ed25519 key pair. Owns nothing but the key; cheap to copy around."""

    __slots__ = ("_private", "public_bytes")

    def __init__(self, private_key: Ed25519PrivateKey):
        self._private = private_key
        self.public_bytes: bytes = private_key.public_key().public_bytes_raw()

    @classmethod
    def generate(cls) -> Identity:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> Identity:
        """The identity whose 32-byte Ed25519 seed is ``seed`` (tests, devnets)."""
        if len(seed) != 32:
            raise WireError(f"an Ed25519 seed is 32 bytes, got {len(seed)}")
        return cls(Ed25519PrivateKey.from_private_bytes(seed))

    @classmethod
    def from_libp2p_protobuf(cls, data: bytes) -> Identity:
        """Load libp2p's protobuf ``PrivateKey`` (Ed25519: seed || public key)."""
        key_type, key_data = parse_key_protobuf(data)
        if key_type != KEY_TYPE_ED25519:
            raise WireError(f"only Ed25519 keys (type 1) are supported, got type {key_type}")
        # 64 bytes is seed || public; some old keys repeat the public key (96 bytes).
        if len(key_data) not in (64, 96):
            raise WireError(f"an Ed25519 libp2p private key is 64 bytes, got {len(key_data)}")
        ident = cls.from_seed(key_data[:32])
        if key_data[32:64] != ident.public_bytes:
            raise WireError("the public half of the libp2p key does not match its private half")
        return ident

    def to_libp2p_protobuf(self) -> bytes:
        return key_protobuf(KEY_TYPE_ED25519, self.seed + self.public_bytes)

    @property
    def seed(self) -> bytes:
        return self._private.private_bytes_raw()

    @property
    def peer_id(self) -> PeerId:
        return PeerId.from_public_key(self.public_bytes)

    @property
    def address(self) -> Address:
        return Address.from_public_key(self.public_bytes)

    def sign(self, data: bytes) -> bytes:
        return self._private.sign(data)

    def __repr__(self) -> str:
        return f"Identity({self.peer_id})"


@lru_cache(maxsize=4096)
def _public_key(public_bytes: bytes) -> Ed25519PublicKey:
    return Ed25519PublicKey.from_public_bytes(public_bytes)


# Signatures verified recently. A vote or verdict is checked when it arrives by gossip
# and again inside the block that carries it; the second check is a lookup. Only
# successes are kept, keyed by (public key, signature, sha256 of the message).
VERIFIED_CACHE_SIZE = 1 << 17
_verified: dict[bytes, None] = {}


def _verified_key(public_key: bytes, signature: bytes, data: bytes) -> bytes:
    return bytes(public_key) + bytes(signature) + hashlib.sha256(data).digest()


def _remember(key: bytes) -> None:
    if len(_verified) >= VERIFIED_CACHE_SIZE:
        del _verified[next(iter(_verified))]  # the oldest entry
    _verified[key] = None


def forget_verified() -> None:
    """Empty the cache of verified signatures (benchmarks measure cold checks)."""
    _verified.clear()


def _verify_uncached(item: tuple[bytes, bytes, bytes]) -> bool:
    public_key, signature, data = item
    if len(public_key) != PUBLIC_KEY_SIZE or len(signature) != SIGNATURE_SIZE:
        return False
    try:
        _public_key(bytes(public_key)).verify(signature, data)
    except (InvalidSignature, ValueError):
        return False
    return True


def verify_signature(public_key: bytes, signature: bytes, data: bytes) -> bool:
    """True when ``signature`` is ``public_key``'s Ed25519 signature of ``data``."""
    key = _verified_key(public_key, signature, data)
    if key in _verified:
        return True
    if not _verify_uncached((public_key, signature, data)):
        return False
    _remember(key)
    return True


def verify_signatures(
    items: Sequence[tuple[bytes, bytes, bytes]], map_: Callable = map
) -> list[bool]:
    """Verify many (public key, signature, message) triples, skipping those verified
    recently, and remember the successes. ``map_`` runs the checks: the builtin ``map``,
    or a process pool's ``map`` to spread them over cores (Ed25519 holds the GIL)."""
    keys = [_verified_key(*item) for item in items]
    todo = [i for i, k in enumerate(keys) if k not in _verified]
    results = [True] * len(items)
    for i, ok in zip(todo, map_(_verify_uncached, [items[i] for i in todo]), strict=True):
        results[i] = ok
        if ok:
            _remember(keys[i])
    return results


def save_identity(
    identity: Identity, path: str | os.PathLike[str], *, overwrite: bool = False
) -> None:
    """Write ``identity`` to ``path`` with mode 0600, atomically (temp file, fsync, rename).

    Raises KeyFileError when the file exists and ``overwrite`` is false.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise KeyFileError(
            f"{path} already exists; refusing to overwrite a key (move it away first)"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, identity.to_libp2p_protobuf())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load_identity(path: str | os.PathLike[str]) -> Identity:
    """Load a key file; refuses files that group or others can read or write."""
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise KeyFileError(f"no key file at {path} (create one with `aipg-node init`)") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(
            f"key file {path} is accessible by others (mode {stat.S_IMODE(st.st_mode):04o}); "
            f"fix it with: chmod 600 {path}"
        )
    data = path.read_bytes()
    try:
        return Identity.from_libp2p_protobuf(data)
    except WireError as e:
        raise KeyFileError(f"key file {path} is not a libp2p Ed25519 private key: {e}") from None
