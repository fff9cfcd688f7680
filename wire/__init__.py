"""aipg.wire: identities, addresses, the canonical codec and signed records.

Imports nothing of ours. Everything that crosses the network or lands in the chain is
a record of :mod:`aipg.wire.codec`.
"""

from .account import (
    MAX_UNITS,
    UNITS_PER_AIPG,
    Address,
    AddressBytes,
    Units,
    UnitsField,
    format_amount,
    parse_amount,
)
from .codec import (
    I64,
    U8,
    U16,
    U32,
    U64,
    Hash32,
    Len,
    MaxLen,
    PublicKeyBytes,
    Range,
    Record,
    SignatureBytes,
    all_record_types,
    decode,
    encode,
    record,
)
from .errors import WireError
from .hashing import ContentId, content_id, content_id_from_digest, parse_content_id, sha256
from .keys import Identity, KeyFileError, load_identity, save_identity, verify_signature
from .multiaddr import Multiaddr
from .peerid import PeerId, PeerIdBytes
from .peerrecord import MAX_RECORD_ADDRS, PeerRecord, make_peer_record, verify_peer_record
from .signing import (
    NO_SIGNATURE,
    NO_SIGNER,
    domain_tag,
    is_signed_by_signer,
    require_signature,
    sign,
    signing_bytes,
)

__all__ = [
    "I64",
    "MAX_RECORD_ADDRS",
    "MAX_UNITS",
    "NO_SIGNATURE",
    "NO_SIGNER",
    "U8",
    "U16",
    "U32",
    "U64",
    "UNITS_PER_AIPG",
    "Address",
    "AddressBytes",
    "ContentId",
    "Hash32",
    "Identity",
    "KeyFileError",
    "Len",
    "MaxLen",
    "Multiaddr",
    "PeerId",
    "PeerIdBytes",
    "PeerRecord",
    "PublicKeyBytes",
    "Range",
    "Record",
    "SignatureBytes",
    "Units",
    "UnitsField",
    "WireError",
    "all_record_types",
    "content_id",
    "content_id_from_digest",
    "decode",
    "domain_tag",
    "encode",
    "format_amount",
    "is_signed_by_signer",
    "load_identity",
    "make_peer_record",
    "parse_amount",
    "parse_content_id",
    "record",
    "require_signature",
    "save_identity",
    "sha256",
    "sign",
    "signing_bytes",
    "verify_peer_record",
    "verify_signature",
]
