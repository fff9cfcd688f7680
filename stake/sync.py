"""Block sync: a request/response protocol that lets a node that is behind fetch
finalized blocks with their commit certificates, verify every certificate against the
validator set of its height, apply them, and catch up.

Transport-agnostic: the serving side is :meth:`SyncServer.handle` (request bytes in,
response bytes out), which the node registers with gossip as the ``sync`` protocol; the
fetching side is :func:`sync_from`, given an ``async request(peer, protocol, data,
timeout) -> bytes`` function. Every response is hostile input: it is decoded strictly,
each commit is verified before its block is applied, and a peer that sends anything
wrong gets a :class:`SyncError` naming what.
"""

from __future__ import annotations

import struct
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import msgpack
import trio

from aipg.wire import U64, MaxLen, Range, Record, WireError, decode, encode, record
from aipg.wire.keys import verify_signatures

from .block import FinalizedBlock
from .chain import Chain
from .sigbatch import finalized_signatures
from .store import ChainStore
from .types import LedgerError

SYNC_PROTOCOL = "sync"
MAX_SYNC_BLOCKS = 512  # blocks per response
MAX_SYNC_BYTES = 16 << 20  # a response stops growing past this (but holds at least one block)

Request = Callable[[Any, str, bytes, float], Awaitable[bytes]]


class SyncError(Exception):
    """A peer's sync answer was malformed or did not verify; the message names the peer
    and what was wrong (the node lowers the peer's score)."""


@record(tag=430)
class SyncRequest(Record):
    """Ask for up to ``limit`` finalized blocks starting at height ``start``."""

    start: Annotated[int, Range(1, 2**63 - 1)]
    limit: Annotated[int, Range(1, MAX_SYNC_BLOCKS)]


@record(tag=431, max_size=MAX_SYNC_BYTES + (64 << 20))
class SyncResponse(Record):
    """Consecutive finalized blocks from the requested height, and the server's height."""

    head: U64
    blocks: Annotated[tuple[FinalizedBlock, ...], MaxLen(MAX_SYNC_BLOCKS)]


class SyncServer:
    """Serves the ``sync`` protocol from a chain store (read-only)."""

    def __init__(self, store: ChainStore):
        self.store = store

    def handle(self, request: bytes) -> bytes:
        """Answer one request. Raises WireError for a malformed request (the transport
        turns it into an error reply); never reads more than ``limit`` blocks."""
        req = decode(request, SyncRequest)
        head = self.store.height
        rows = self.store.encoded_range(req.start, req.limit)
        parts, size = [], 0
        for block, commit in rows:
            if parts and size + len(block) + len(commit) > MAX_SYNC_BYTES:
                break
            parts.append(_finalized_bytes(block, commit))
            size += len(block) + len(commit)
        # The stored bytes are canonical, so the response is built around them instead of
        # decoding and re-encoding every block.
        return b"".join(
            [
                _array_header(4),
                msgpack.packb(SyncResponse.__wire_tag__),
                msgpack.packb(SyncResponse.__wire_version__),
                msgpack.packb(head),
                _array_header(len(parts)),
                *parts,
            ]
        )


def _array_header(n: int) -> bytes:
    if n < 16:
        return bytes([0x90 | n])
    if n < 1 << 16:
        return b"\xdc" + struct.pack(">H", n)
    return b"\xdd" + struct.pack(">I", n)


_FINALIZED_PREFIX = (
    _array_header(4)
    + msgpack.packb(FinalizedBlock.__wire_tag__)
    + msgpack.packb(FinalizedBlock.__wire_version__)
)


def _finalized_bytes(block: bytes, commit: bytes) -> bytes:
    return _FINALIZED_PREFIX + block + commit


async def sync_from(
    chain: Chain,
    request: Request,
    peer: Any,
    *,
    batch: int = 128,
    timeout: float = 10.0,
    until: int | None = None,
    verify_map: Callable | None = None,
) -> int:
    """Fetch, verify and apply blocks from ``peer`` until it has nothing newer (or
    ``until`` is reached). Returns how many blocks were applied.

    Raises SyncError when the peer's answer is malformed, not what was asked for, or
    fails verification (blocks applied before that stay applied: each was verified).
    ``request`` errors (timeouts, closed connections) propagate unchanged.
    With ``verify_map`` (a process pool's ``map``), each batch's signatures are checked
    up front on every core (:mod:`aipg.stake.sigbatch`).
    """
    applied = 0
    while until is None or chain.height < until:
        start = chain.height + 1
        want = batch if until is None else min(batch, until - chain.height)
        raw = await request(peer, SYNC_PROTOCOL, encode(SyncRequest(start, want)), timeout)
        try:
            resp = decode(raw, SyncResponse)
        except WireError as e:
            raise SyncError(f"peer {peer}: malformed sync response: {e}") from None
        if not resp.blocks:
            break
        if len(resp.blocks) > want:
            raise SyncError(f"peer {peer}: sent {len(resp.blocks)} blocks, {want} were asked for")
        if verify_map is not None:
            verify_signatures(
                [t for fb in resp.blocks for t in finalized_signatures(fb)], verify_map
            )
        for fb in resp.blocks:
            try:
                chain.finalize(fb.block, fb.commit)
            except LedgerError as e:
                raise SyncError(
                    f"peer {peer}: block {fb.block.height} does not verify: {e}"
                ) from None
            applied += 1
            await trio.lowlevel.checkpoint()  # applying is CPU work: let other tasks run
        if chain.height >= resp.head:
            break
    return applied
