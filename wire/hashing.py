"""Content IDs: sha256 digests written as ``sha256:<hex>``."""

import hashlib
import re
from typing import NewType

from .errors import WireError

ContentId = NewType("ContentId", str)

CONTENT_ID_PREFIX = "sha256:"
_CONTENT_ID_RE = re.compile(r"sha256:[0-9a-f]{64}")


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def content_id(data: bytes) -> ContentId:
    """The content ID of ``data``."""
    return ContentId(CONTENT_ID_PREFIX + hashlib.sha256(data).hexdigest())


def content_id_from_digest(digest: bytes) -> ContentId:
    if len(digest) != 32:
        raise WireError(f"a sha256 digest is 32 bytes, got {len(digest)}")
    return ContentId(CONTENT_ID_PREFIX + digest.hex())


def parse_content_id(text: str) -> bytes:
    """The 32-byte digest in ``sha256:<64 lowercase hex>``; raises WireError otherwise."""
    if not isinstance(text, str) or not _CONTENT_ID_RE.fullmatch(text):
        raise WireError(f"not a content id (want sha256:<64 hex digits>): {str(text)[:80]!r}")
    return bytes.fromhex(text[len(CONTENT_ID_PREFIX) :])
