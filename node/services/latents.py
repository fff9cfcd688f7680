"""The worker's diffusion latents on disk, kept until each receipt is final.

A committee member re-runs a few steps of a diffusion job from the latents the worker
stored, so a worker that loses them (a restart, a crash, memory pressure) cannot be
checked and is not paid. Each receipt's latents are one file under the data dir
(``latents/<receipt id>.<assignment height>.npy``, written atomically and fsynced), so
they survive restarts; the store releases them once a block carries the receipt's
outcome, or once its assignment is too old for any block to certify it.

Bounded by count and bytes: past either bound the oldest receipt goes first.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from aipg.pouw import LatentReply, LatentRequest, PouwError, Result, receipt_id
from aipg.pouw.commitment import latent_digest

log = logging.getLogger("aipg.node.latents")

# Receipts awaiting certification are a few blocks' worth; a 64x64 demo job's latents
# are ~0.4 MiB, SD 1.5 at 512x512 with 50 steps ~3.3 MiB.
MAX_LATENT_RECEIPTS = 4096
MAX_LATENT_BYTES = 2 << 30


class DiskLatentStore:
    """Latents by receipt id in ``root``; the same interface as pouw's in-memory
    :class:`~aipg.pouw.LatentStore`, plus release by block."""

    def __init__(
        self,
        root: Path,
        *,
        max_receipts: int = MAX_LATENT_RECEIPTS,
        max_bytes: int = MAX_LATENT_BYTES,
    ):
        self.root = root
        self.max_receipts = max_receipts
        self.max_bytes = max_bytes
        root.mkdir(parents=True, exist_ok=True)
        # receipt id -> (assignment height, path, bytes), oldest first
        self._index: OrderedDict[bytes, tuple[int, Path, int]] = OrderedDict()
        self._bytes = 0
        self._load()

    def _load(self) -> None:
        """Index what an earlier run left, oldest first; drop half-written files."""
        for tmp in self.root.glob("*.tmp"):
            tmp.unlink(missing_ok=True)
        for path in sorted(self.root.glob("*.npy"), key=lambda p: p.stat().st_mtime_ns):
            try:
                rid_hex, height_text = path.stem.split(".")
                rid, height = bytes.fromhex(rid_hex), int(height_text)
            except ValueError:
                log.warning("ignoring a stray file in the latent store: %s", path.name)
                continue
            self._index[rid] = (height, path, path.stat().st_size)
            self._bytes += path.stat().st_size
        self._trim()

    def __len__(self) -> int:
        return len(self._index)

    def receipt_ids(self) -> list[bytes]:
        """The receipts whose latents are kept, oldest first."""
        return list(self._index)

    @property
    def bytes(self) -> int:
        return self._bytes

    def put_result(self, result: Result, latents: Sequence[np.ndarray], height: int) -> None:
        """Keep ``result``'s latents (initial and every step) for its assignment at
        ``height``."""
        rid = receipt_id(result.receipt)
        stacked = np.ascontiguousarray(np.stack(latents), "<f4")
        path = self.root / f"{rid.hex()}.{height}.npy"
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            np.save(f, stacked, allow_pickle=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        self.release(rid)  # a re-run of the same receipt replaces it
        self._index[rid] = (height, path, path.stat().st_size)
        self._bytes += path.stat().st_size
        self._trim()

    def serve(self, request: LatentRequest) -> LatentReply:
        """The latents a validator asked for. Raises PouwError for an unknown receipt or
        a step out of range."""
        entry = self._index.get(request.receipt_id)
        if entry is None:
            raise PouwError("latent_request.receipt_id", "no latents kept for this receipt")
        stored = np.load(entry[1], mmap_mode="r", allow_pickle=False)
        bad = [s for s in request.steps if s >= len(stored)]
        if bad:
            raise PouwError("latent_request.steps", f"step {bad[0]} is out of range")
        return LatentReply(
            receipt_id=request.receipt_id,
            steps=request.steps,
            latents=tuple(np.ascontiguousarray(stored[s], "<f4").tobytes() for s in request.steps),
        )

    def answer_data(
        self, rid: bytes, steps: Sequence[int]
    ) -> tuple[tuple[int, ...], tuple[bytes, ...], tuple[bytes, ...]]:
        """What a withholding challenge's answer carries for ``rid``: the latent shape,
        every latent's digest (their chain is the receipt's commitment) and the asked
        ``steps``' latents as bytes. Raises PouwError when they are not kept."""
        entry = self._index.get(rid)
        if entry is None:
            raise PouwError("challenge.receipt", "no latents kept for this receipt")
        stored = np.load(entry[1], mmap_mode="r", allow_pickle=False)
        if any(s >= len(stored) for s in steps):
            raise PouwError("challenge.steps", "a step is out of range")
        digests = tuple(latent_digest(np.asarray(x)) for x in stored)
        latents = tuple(np.ascontiguousarray(stored[s], "<f4").tobytes() for s in steps)
        return tuple(int(d) for d in stored.shape[1:]), digests, latents

    def release(self, rid: bytes) -> None:
        """The receipt is final (or can never be): its latents may go."""
        entry = self._index.pop(rid, None)
        if entry is not None:
            self._bytes -= entry[2]
            entry[1].unlink(missing_ok=True)

    def settle(self, final: Iterable[bytes], height: int, too_old: int) -> None:
        """After block ``height``: release the receipts it made final, and those whose
        assignment is more than ``too_old`` blocks behind (no block can certify them)."""
        for rid in final:
            self.release(rid)
        for rid, (assigned, _, _) in list(self._index.items()):
            if height - assigned > too_old:
                self.release(rid)

    def _trim(self) -> None:
        while len(self._index) > self.max_receipts or self._bytes > self.max_bytes:
            rid = next(iter(self._index))
            log.warning("latent store full: dropping the latents of %s", rid.hex()[:12])
            self.release(rid)
