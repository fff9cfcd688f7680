"""Domain-separated Ed25519 signatures over records.

A signed record type ends with two fields, ``signer: PublicKeyBytes`` and
``signature: SignatureBytes``. What is signed is

    domain_tag(type) || canonical encoding of [tag, version, every field but the signature]

with ``domain_tag = b"aipg/<record name>/<version>\\0"``, so a signature made for one
record type can never verify as another, nor as the same type of another version.
"""

from __future__ import annotations

from typing import TypeVar

import msgpack

from .codec import Record, _to_wire
from .errors import WireError
from .keys import Identity, verify_signature

NO_SIGNER = bytes(32)
NO_SIGNATURE = bytes(64)

S = TypeVar("S", bound=Record)


def domain_tag(cls: type[Record]) -> bytes:
    return b"aipg/%s/%d\0" % (cls.__wire_name__.encode(), cls.__wire_version__)


def _require_signed_type(cls: type[Record]) -> None:
    names = [f.name for f in cls.__wire_fields__]
    if names[-2:] != ["signer", "signature"]:
        raise TypeError(f"{cls.__name__} is not a signed record (must end with signer, signature)")


def signing_bytes(rec: Record) -> bytes:
    """The exact bytes a signature of ``rec`` covers."""
    cls = type(rec)
    _require_signed_type(cls)
    return domain_tag(cls) + msgpack.packb(_to_wire(rec)[:-1], use_bin_type=True)


def sign(rec: S, identity: Identity) -> S:
    """A copy of ``rec`` with ``signer`` set to ``identity`` and a fresh signature."""
    unsigned = rec.replace(signer=identity.public_bytes, signature=NO_SIGNATURE)
    return unsigned.replace(signature=identity.sign(signing_bytes(unsigned)))


def is_signed_by_signer(rec: Record) -> bool:
    """True when ``rec.signature`` is ``rec.signer``'s signature of ``rec``."""
    return verify_signature(rec.signer, rec.signature, signing_bytes(rec))  # type: ignore[attr-defined]


def require_signature(rec: Record, signer: bytes | None = None) -> None:
    """Raise WireError unless ``rec`` carries a valid signature (by ``signer`` when given)."""
    name = type(rec).__name__
    if signer is not None and rec.signer != signer:  # type: ignore[attr-defined]
        raise WireError("signed by the wrong key", record=name, field="signer")
    if not is_signed_by_signer(rec):
        raise WireError("bad signature", record=name, field="signature")
