"""Noise_XX_25519_ChaChaPoly_SHA256 with libp2p's identity binding.

Two layers, both free of I/O:

* :class:`XXHandshake` is the Noise Protocol Framework (revision 34) XX pattern with
  X25519, ChaCha20-Poly1305 and SHA-256 (``cryptography`` primitives and stdlib HMAC),
  checked byte for byte against the published cacophony and snow test vectors.
* :func:`make_identity_payload` / :func:`verify_identity_payload` implement libp2p's
  noise spec: the handshake payload is the protobuf ``NoiseHandshakePayload
  {identity_key = 1; identity_sig = 2}`` where ``identity_key`` is the protobuf-encoded
  Ed25519 public key and ``identity_sig`` its signature over
  ``"noise-libp2p-static-key:" || static X25519 public key``. A completed handshake
  therefore proves the remote owns the Ed25519 key behind its peer ID.

After the handshake :meth:`XXHandshake.split` gives one :class:`CipherState` per
direction. Nonces count up from zero; a failed decryption leaves the state unchanged.
"""

from __future__ import annotations

import hashlib
import hmac

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from aipg.wire import Identity, PeerId, WireError, verify_signature
from aipg.wire.keyproto import public_key_from_protobuf, public_key_protobuf
from aipg.wire.protobuf import read_varint, write_varint

from .errors import DecryptError, HandshakeError

PROTOCOL_NAME = b"Noise_XX_25519_ChaChaPoly_SHA256"
DHLEN = 32
HASHLEN = 32
TAGLEN = 16
# The Noise spec caps every message (handshake or transport) at 65535 bytes.
MAX_NOISE_MESSAGE = 65535
MAX_PLAINTEXT = MAX_NOISE_MESSAGE - TAGLEN
# n = 2**64 - 1 is reserved by the spec; reaching it means the session must end.
MAX_NONCE = 2**64 - 1
LIBP2P_STATIC_KEY_PREFIX = b"noise-libp2p-static-key:"


def _hmac(key: bytes, data: bytes) -> bytes:
    return hmac.digest(key, data, "sha256")


def hkdf2(chaining_key: bytes, input_key_material: bytes) -> tuple[bytes, bytes]:
    """Noise's HKDF with two outputs (section 4.3)."""
    temp_key = _hmac(chaining_key, input_key_material)
    out1 = _hmac(temp_key, b"\x01")
    out2 = _hmac(temp_key, out1 + b"\x02")
    return out1, out2


class CipherState:
    """A ChaCha20-Poly1305 key and its 64-bit counter nonce (Noise section 5.1)."""

    __slots__ = ("_aead", "key", "nonce")

    def __init__(self, key: bytes | None = None, nonce: int = 0):
        self.key = key
        self.nonce = nonce
        self._aead = ChaCha20Poly1305(key) if key is not None else None

    def has_key(self) -> bool:
        return self._aead is not None

    def _nonce_bytes(self) -> bytes:
        if self.nonce >= MAX_NONCE:
            raise DecryptError("nonce space exhausted; the session must be re-established")
        return b"\x00\x00\x00\x00" + self.nonce.to_bytes(8, "little")

    def encrypt_with_ad(self, ad: bytes, plaintext: bytes) -> bytes:
        if self._aead is None:
            return plaintext
        out = self._aead.encrypt(self._nonce_bytes(), plaintext, ad)
        self.nonce += 1
        return out

    def decrypt_with_ad(self, ad: bytes, ciphertext: bytes) -> bytes:
        """Decrypt and advance the nonce; raises DecryptError (state unchanged) on failure."""
        if self._aead is None:
            return ciphertext
        if len(ciphertext) < TAGLEN:
            raise DecryptError("ciphertext is shorter than the authentication tag")
        try:
            out = self._aead.decrypt(self._nonce_bytes(), ciphertext, ad)
        except InvalidTag:
            raise DecryptError("authentication failed (tampered, replayed or reordered)") from None
        self.nonce += 1
        return out

    def encrypt(self, plaintext: bytes) -> bytes:
        """Transport-phase encryption (empty associated data)."""
        return self.encrypt_with_ad(b"", plaintext)

    def decrypt(self, ciphertext: bytes) -> bytes:
        return self.decrypt_with_ad(b"", ciphertext)


class SymmetricState:
    """The chaining key ``ck``, handshake hash ``h`` and a CipherState (section 5.2)."""

    __slots__ = ("cipher", "ck", "h")

    def __init__(self, protocol_name: bytes = PROTOCOL_NAME):
        if len(protocol_name) <= HASHLEN:
            h = protocol_name.ljust(HASHLEN, b"\x00")
        else:
            h = hashlib.sha256(protocol_name).digest()
        self.h = h
        self.ck = h
        self.cipher = CipherState()

    def mix_key(self, input_key_material: bytes) -> None:
        self.ck, temp_k = hkdf2(self.ck, input_key_material)
        self.cipher = CipherState(temp_k)

    def mix_hash(self, data: bytes) -> None:
        self.h = hashlib.sha256(self.h + data).digest()

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        ciphertext = self.cipher.encrypt_with_ad(self.h, plaintext)
        self.mix_hash(ciphertext)
        return ciphertext

    def decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        plaintext = self.cipher.decrypt_with_ad(self.h, ciphertext)
        self.mix_hash(ciphertext)
        return plaintext

    def split(self) -> tuple[CipherState, CipherState]:
        k1, k2 = hkdf2(self.ck, b"")
        return CipherState(k1), CipherState(k2)


def _public(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes_raw()


def _dh(private: X25519PrivateKey, public: bytes) -> bytes:
    try:
        return private.exchange(X25519PublicKey.from_public_bytes(public))
    except ValueError as e:  # low-order point: the shared secret would be all zeros
        raise HandshakeError(f"bad X25519 public key from the remote: {e}") from None


class XXHandshake:
    """One side of the XX pattern::

        -> e
        <- e, ee, s, es
        -> s, se

    Call :meth:`write_message` / :meth:`read_message` in turn (the initiator writes
    first); after the third message :attr:`complete` is true and :meth:`split` returns
    ``(send, receive)`` cipher states for this side. Any failure raises
    :class:`HandshakeError` and the handshake cannot continue.
    """

    def __init__(
        self,
        initiator: bool,
        static_key: X25519PrivateKey,
        *,
        prologue: bytes = b"",
        ephemeral_key: X25519PrivateKey | None = None,
    ):
        self.initiator = initiator
        self._s = static_key
        self._e = ephemeral_key
        self._re: bytes | None = None
        self.remote_static: bytes | None = None
        self._ss = SymmetricState()
        self._ss.mix_hash(prologue)
        self._step = 0
        self._failed = False

    @property
    def static_public(self) -> bytes:
        return _public(self._s)

    @property
    def complete(self) -> bool:
        return self._step == 3

    @property
    def handshake_hash(self) -> bytes:
        if not self.complete:
            raise HandshakeError("the handshake hash is only available after the handshake")
        return self._ss.h

    def _my_turn(self) -> bool:
        return (self._step % 2 == 0) == self.initiator

    def _check(self, writing: bool) -> None:
        if self._failed:
            raise HandshakeError("the handshake has failed")
        if self._step >= 3:
            raise HandshakeError("the handshake is already complete")
        if self._my_turn() != writing:
            raise HandshakeError(
                "out of turn: it is not this side's turn to " + ("write" if writing else "read")
            )

    def write_message(self, payload: bytes = b"") -> bytes:
        self._check(writing=True)
        ss, step = self._ss, self._step
        out = bytearray()
        if step in (0, 1):  # e (and for the responder: ee, s, es)
            if self._e is None:
                self._e = X25519PrivateKey.generate()
            e_pub = _public(self._e)
            out += e_pub
            ss.mix_hash(e_pub)
        if step == 1:
            ss.mix_key(_dh(self._e, self._re))  # ee
            out += ss.encrypt_and_hash(self.static_public)  # s
            ss.mix_key(_dh(self._s, self._re))  # es (responder side: s with re)
        if step == 2:
            out += ss.encrypt_and_hash(self.static_public)  # s
            ss.mix_key(_dh(self._s, self._re))  # se (initiator side: s with re)
        out += ss.encrypt_and_hash(payload)
        if len(out) > MAX_NOISE_MESSAGE:
            self._failed = True
            raise HandshakeError("handshake message over 65535 bytes")
        self._step += 1
        return bytes(out)

    def read_message(self, message: bytes) -> bytes:
        self._check(writing=False)
        try:
            payload = self._read(bytes(message))
        except (HandshakeError, DecryptError) as e:
            self._failed = True
            raise HandshakeError(f"handshake message {self._step + 1}: {e}") from None
        self._step += 1
        return payload

    def _read(self, message: bytes) -> bytes:
        ss, step = self._ss, self._step
        if len(message) > MAX_NOISE_MESSAGE:
            raise HandshakeError("message over 65535 bytes")
        pos = 0
        if step in (0, 1):
            if len(message) < DHLEN:
                raise HandshakeError("truncated: no ephemeral key")
            self._re = message[:DHLEN]
            ss.mix_hash(self._re)
            pos = DHLEN
        if step == 1:
            ss.mix_key(_dh(self._e, self._re))  # ee
            pos = self._read_static(message, pos)
            ss.mix_key(_dh(self._e, self.remote_static))  # es (initiator: e with rs)
        if step == 2:
            pos = self._read_static(message, pos)
            ss.mix_key(_dh(self._e, self.remote_static))  # se (responder: e with rs)
        return ss.decrypt_and_hash(message[pos:])

    def _read_static(self, message: bytes, pos: int) -> int:
        end = pos + DHLEN + TAGLEN
        if len(message) < end:
            raise HandshakeError("truncated: no static key")
        self.remote_static = self._ss.decrypt_and_hash(message[pos:end])
        return end

    def split(self) -> tuple[CipherState, CipherState]:
        """``(send, receive)`` for this side; only after the handshake completes."""
        if not self.complete:
            raise HandshakeError("split before the handshake completed")
        c1, c2 = self._ss.split()
        return (c1, c2) if self.initiator else (c2, c1)


# --- libp2p's handshake payload ------------------------------------------------------


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    try:
        return read_varint(data, pos)
    except WireError as e:
        raise HandshakeError(f"{e} in the handshake payload") from None


def make_identity_payload(identity: Identity, static_public: bytes) -> bytes:
    """The protobuf ``NoiseHandshakePayload`` proving ``identity`` owns ``static_public``."""
    key = public_key_protobuf(identity.public_bytes)
    sig = identity.sign(LIBP2P_STATIC_KEY_PREFIX + static_public)
    return b"\x0a" + write_varint(len(key)) + key + b"\x12" + write_varint(len(sig)) + sig


def _parse_payload(payload: bytes) -> tuple[bytes, bytes]:
    fields: dict[int, bytes] = {}
    pos = 0
    while pos < len(payload):
        tag, pos = _read_varint(payload, pos)
        number, wire_type = tag >> 3, tag & 7
        if wire_type == 0:
            _, pos = _read_varint(payload, pos)
            continue
        if wire_type != 2:
            raise HandshakeError(f"unexpected wire type {wire_type} in the handshake payload")
        n, pos = _read_varint(payload, pos)
        if pos + n > len(payload):
            raise HandshakeError("truncated field in the handshake payload")
        if number in fields:
            raise HandshakeError(f"field {number} repeated in the handshake payload")
        fields[number] = payload[pos : pos + n]  # unknown fields (extensions = 4) are skipped
        pos += n
    if 1 not in fields or 2 not in fields:
        raise HandshakeError("the handshake payload needs identity_key and identity_sig")
    return fields[1], fields[2]


def verify_identity_payload(payload: bytes, remote_static: bytes) -> PeerId:
    """The peer ID proven by ``payload`` for the remote's X25519 key ``remote_static``.

    Raises HandshakeError when the key is not Ed25519 or the signature does not verify.
    """
    key_proto, sig = _parse_payload(payload)
    try:
        public_key = public_key_from_protobuf(key_proto)
    except WireError as e:
        raise HandshakeError(f"bad identity key in the handshake payload: {e}") from None
    if not verify_signature(public_key, sig, LIBP2P_STATIC_KEY_PREFIX + remote_static):
        raise HandshakeError("the identity signature over the static key does not verify")
    return PeerId.from_public_key(public_key)
