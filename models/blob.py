"""The ``blob`` request/response protocol: serving and fetching files in chunks.

Transport-agnostic: the server is a handler ``async handle(peer, request) -> response`` that
the node registers with its gossip host, and the fetcher sends through an injected
``async request(peer, protocol, data, timeout) -> bytes`` (the host's ``request``). A
request names (blob id, offset, length); a response carries the bytes and the blob's total
size. The fetcher appends verified-in-order chunks to ``partial/<hex>`` in the store, so a
broken connection costs at most one chunk: the next attempt (same or another peer) resumes
at the partial file's size. Only the whole file's sha256 says the data is right, so it is
checked before the blob enters the store; on a mismatch the partial file is discarded and
the fetch starts again from another peer.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Annotated, Any

import trio

from aipg.wire import (
    U8,
    U64,
    Hash32,
    Identity,
    MaxLen,
    Range,
    Record,
    WireError,
    decode,
    encode,
    record,
    require_signature,
    sign,
)

from .errors import ModelError
from .manifest import (
    MAX_MANIFEST_SIZE,
    Manifest,
    ModelAnnouncement,
    ModelId,
    check_manifest,
    model_id_text,
)
from .store import BlobStore, ModelStore

__all__ = [
    "BLOB_PROTOCOL",
    "DEFAULT_CHUNK_SIZE",
    "MAX_CHUNK_SIZE",
    "BlobFetcher",
    "BlobRequest",
    "BlobResponse",
    "BlobServer",
    "BlobStatus",
    "check_announcement",
    "fetch_manifest",
    "fetch_model",
    "sign_announcement",
]

log = logging.getLogger(__name__)

# Request/response protocols are named like the node names its others ("job", "sync").
BLOB_PROTOCOL = "blob"
# 1 MiB bounds one response's memory on both sides; 512 KiB chunks keep a resume cheap.
MAX_CHUNK_SIZE = 1 << 20
DEFAULT_CHUNK_SIZE = 512 << 10
DEFAULT_TIMEOUT_S = 30.0
# Each peer may fail this many times in one fetch before it is given up on.
ATTEMPTS_PER_PEER = 3
# A peer that failed is asked again after this many seconds times its failures.
RETRY_BACKOFF_S = 1.0

Progress = Callable[[int, int], None]  # (bytes done, bytes total)
RequestFn = Callable[[Any, str, bytes, float], Awaitable[bytes]]


class BlobStatus:
    """``BlobResponse.status`` values."""

    OK = 0
    NOT_FOUND = 1
    BAD_RANGE = 2
    BAD_REQUEST = 3


@record(tag=209)
class BlobRequest(Record):
    """Bytes ``offset .. offset+length`` of blob ``blob_id`` (a sha256 digest)."""

    blob_id: Hash32
    offset: U64
    length: Annotated[int, Range(1, MAX_CHUNK_SIZE)]


@record(tag=210, max_size=MAX_CHUNK_SIZE + 1024)
class BlobResponse(Record):
    """A chunk: ``status`` 0 with the bytes, or a :class:`BlobStatus` error and no bytes."""

    blob_id: Hash32
    offset: U64
    total_size: U64
    status: U8
    data: Annotated[bytes, MaxLen(MAX_CHUNK_SIZE)]


# -- announcements -------------------------------------------------------------------------


def sign_announcement(
    manifest: Manifest, identity: Identity, timestamp_ms: int
) -> ModelAnnouncement:
    """A publisher's signed announcement of ``manifest`` (checked first)."""
    check_manifest(manifest)
    return sign(ModelAnnouncement(manifest=manifest, timestamp_ms=timestamp_ms), identity)


def check_announcement(data: bytes) -> ModelAnnouncement:
    """Decode and check an announcement from the network: canonical, signed, consistent.
    Raises WireError or ModelError saying what is wrong."""
    announcement = decode(data, ModelAnnouncement)
    require_signature(announcement)
    check_manifest(announcement.manifest)
    return announcement


# -- serving -------------------------------------------------------------------------------


class BlobServer:
    """Serves complete, verified blobs of ``store`` (never partial ones)."""

    def __init__(self, store: BlobStore) -> None:
        self.store = store

    async def handle(self, peer: Any, request: bytes) -> bytes:
        """Answer one encoded :class:`BlobRequest` with an encoded :class:`BlobResponse`.
        Malformed requests get a BAD_REQUEST response, not an exception."""
        try:
            req = decode(request, BlobRequest)
        except WireError as e:
            log.debug("bad blob request from %s: %s", peer, e)
            return _error(bytes(32), 0, 0, BlobStatus.BAD_REQUEST)
        size = self.store.size(req.blob_id)
        if size is None:
            return _error(req.blob_id, req.offset, 0, BlobStatus.NOT_FOUND)
        if req.offset >= size:
            return _error(req.blob_id, req.offset, size, BlobStatus.BAD_RANGE)
        try:
            data = await trio.to_thread.run_sync(
                self.store.read, req.blob_id, req.offset, req.length
            )
        except FileNotFoundError:  # removed between the size check and the read
            return _error(req.blob_id, req.offset, 0, BlobStatus.NOT_FOUND)
        return encode(
            BlobResponse(
                blob_id=req.blob_id, offset=req.offset, total_size=size, status=0, data=data
            )
        )


def _error(blob_id: bytes, offset: int, size: int, status: int) -> bytes:
    return encode(
        BlobResponse(blob_id=blob_id, offset=offset, total_size=size, status=status, data=b"")
    )


# -- fetching ------------------------------------------------------------------------------


class PeerFailed(Exception):
    """One peer could not serve a chunk (bad answer or broken transport)."""


class BlobFetcher:
    """Fetches blobs into ``store`` from peers, through ``request``.

    ``transport_errors`` are the exceptions ``request`` raises when a peer or connection
    fails (the gossip host's RequestError, for one); they move the fetch to the next peer.
    Anything else is a bug and propagates.
    """

    def __init__(
        self,
        store: BlobStore,
        request: RequestFn,
        *,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        timeout: float = DEFAULT_TIMEOUT_S,
        transport_errors: tuple[type[BaseException], ...] = (),
        retry_backoff: float = RETRY_BACKOFF_S,
    ) -> None:
        if not 1 <= chunk_size <= MAX_CHUNK_SIZE:
            raise ValueError(f"chunk_size must be from 1 to {MAX_CHUNK_SIZE}")
        self.store = store
        self.request = request
        self.chunk_size = chunk_size
        self.timeout = timeout
        self.transport_errors = (
            OSError,
            trio.BrokenResourceError,
            trio.ClosedResourceError,
            trio.TooSlowError,
            *transport_errors,
        )
        self.retry_backoff = retry_backoff
        # One fetch per blob at a time: two would append to the same partial file.
        self._locks: dict[bytes, trio.Lock] = {}

    async def fetch(
        self,
        blob_id: bytes,
        size: int,
        peers: Sequence[Any],
        progress: Progress | None = None,
    ) -> Path:
        """Fetch blob ``blob_id`` of ``size`` bytes (both from a manifest) into the store and
        return its path; resumes a partial file left by an earlier attempt.

        Peers are tried in turn, each up to ATTEMPTS_PER_PEER failures, waiting
        ``retry_backoff`` seconds times its failures before asking a peer that failed
        again. Concurrent fetches of one blob wait for each other. Raises ModelError when no
        peer delivers the blob with the right hash.
        """
        if not peers:
            raise ModelError(f"no peer to fetch blob {blob_id.hex()} from")
        lock = self._locks.setdefault(blob_id, trio.Lock())
        try:
            async with lock:
                if self.store.has(blob_id):
                    return self.store.path(blob_id)
                return await self._fetch_from(blob_id, size, peers, progress)
        finally:
            if not lock.locked() and lock.statistics().tasks_waiting == 0:
                self._locks.pop(blob_id, None)

    async def _fetch_from(
        self, blob_id: bytes, size: int, peers: Sequence[Any], progress: Progress | None
    ) -> Path:
        failures: dict[int, int] = {}
        last_error = "no attempt"
        turn = 0
        while len(failures) < len(peers) or min(failures.values()) < ATTEMPTS_PER_PEER:
            index = turn % len(peers)
            turn += 1
            if failures.get(index, 0) >= ATTEMPTS_PER_PEER:
                continue
            if failures.get(index):
                await trio.sleep(self.retry_backoff * failures[index])
            try:
                await self._pull(blob_id, size, peers[index], progress)
                await trio.to_thread.run_sync(self.store.commit_partial, blob_id)
                return self.store.path(blob_id)
            except PeerFailed as e:
                last_error = f"{peers[index]}: {e}"
            except ModelError as e:  # wrong hash: partial discarded, someone lied
                last_error = f"{peers[index]}: {e}"
            failures[index] = failures.get(index, 0) + 1
            log.info("blob %s: %s; trying the next peer", blob_id.hex()[:12], last_error)
        raise ModelError(f"could not fetch blob {blob_id.hex()} from any peer ({last_error})")

    async def _pull(self, blob_id: bytes, size: int, peer: Any, progress: Progress | None) -> None:
        """Append chunks from ``peer`` to the partial file until it has ``size`` bytes."""
        partial = self.store.partial_path(blob_id)
        offset = _resume_offset(partial, size)
        if progress is not None:
            progress(offset, size)
        with partial.open("ab") as out:
            while offset < size:
                length = min(self.chunk_size, size - offset)
                data = await self._chunk(
                    peer, BlobRequest(blob_id=blob_id, offset=offset, length=length), size
                )
                await trio.to_thread.run_sync(_append, out, data)
                offset += len(data)
                if progress is not None:
                    progress(offset, size)

    async def whole_small_blob(self, peer: Any, req: BlobRequest) -> bytes:
        """A blob that fits in one response (a manifest); raises PeerFailed."""
        resp = await self._ask(peer, req)
        if resp.total_size != len(resp.data):
            raise PeerFailed(f"blob of {resp.total_size} bytes does not fit one response")
        return resp.data

    async def _ask(self, peer: Any, req: BlobRequest) -> BlobResponse:
        try:
            raw = await self.request(peer, BLOB_PROTOCOL, encode(req), self.timeout)
            resp = decode(raw, BlobResponse)
        except self.transport_errors as e:
            raise PeerFailed(f"{type(e).__name__}: {e}") from None
        except WireError as e:
            raise PeerFailed(f"malformed response: {e}") from None
        if resp.status != BlobStatus.OK:
            raise PeerFailed(f"status {resp.status}")
        if resp.blob_id != req.blob_id or resp.offset != req.offset:
            raise PeerFailed("response is for another blob or offset")
        return resp

    async def _chunk(self, peer: Any, req: BlobRequest, size: int) -> bytes:
        resp = await self._ask(peer, req)
        if resp.total_size != size:
            raise PeerFailed(f"says the blob has {resp.total_size} bytes, not {size}")
        if len(resp.data) != req.length:
            raise PeerFailed(f"sent {len(resp.data)} bytes for a {req.length}-byte chunk")
        return resp.data


def _resume_offset(partial: Path, size: int) -> int:
    """How much of the blob the partial file already holds (discarding an oversized one)."""
    try:
        have = partial.stat().st_size
    except FileNotFoundError:
        return 0
    if have > size:
        partial.unlink()
        return 0
    return have


def _append(out, data: bytes) -> None:
    out.write(data)
    out.flush()


async def fetch_manifest(fetcher: BlobFetcher, mid: bytes, peers: Sequence[Any]) -> Manifest:
    """The manifest with id ``mid``, fetched as a blob (its id is its hash) in one request.

    Peers are tried in turn. Raises ModelError when none serves a manifest with that hash.
    """
    last_error = "no peer given"
    request = BlobRequest(blob_id=mid, offset=0, length=MAX_MANIFEST_SIZE)
    for peer in peers:
        try:
            data = await fetcher.whole_small_blob(peer, request)
            if hashlib.sha256(data).digest() != mid:
                raise PeerFailed("served a manifest with the wrong hash")
            manifest = decode(data, Manifest)
            check_manifest(manifest)
            return manifest
        except (PeerFailed, WireError, ModelError) as e:
            last_error = f"{peer}: {e}"
    raise ModelError(f"could not fetch manifest {model_id_text(mid)} ({last_error})")


async def fetch_model(
    store: ModelStore,
    manifest: Manifest,
    fetcher: BlobFetcher,
    peers: Sequence[Any],
    progress: Progress | None = None,
) -> ModelId:
    """Record ``manifest`` in ``store`` and fetch its missing files; returns the model id.

    ``progress`` sees bytes done and total over all files. Raises ModelError.
    """
    mid = store.add_manifest(manifest)
    missing = store.missing_files(mid)
    total = sum(f.size for f in missing)
    done = 0
    for entry in missing:
        await fetcher.fetch(
            entry.sha256, entry.size, peers, _offset_progress(progress, done, total)
        )
        done += entry.size
    if progress is not None:
        progress(total, total)
    return mid


def _offset_progress(progress: Progress | None, base: int, total: int) -> Progress | None:
    if progress is None:
        return None
    return lambda done, _size: progress(base + done, total)
