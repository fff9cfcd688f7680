"""The address book: the best signed peer record known for each peer, scored and bounded.

Every record is verified before it is stored (:func:`aipg.wire.verify_peer_record`) and a
record replaces the stored one only with a higher ``seq``. Each entry keeps a score:
+1 per successful dial, -1 per failure (floored at -10); past ``capacity`` the entry with
the lowest score (then the oldest) is evicted, and never one of the ``protect``-ed peers
(those we are connected to). Relays that dropped or corrupted traffic are remembered for
``relay_ban`` seconds and their relayed addresses are skipped meanwhile.

The book persists to one file in the data dir (``peers.bin``: a msgpack list of encoded
records, written atomically), so a restarted node still knows where its peers are.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path

import msgpack
import trio

from aipg.wire import (
    Multiaddr,
    PeerId,
    PeerRecord,
    WireError,
    decode,
    encode,
    sha256,
    verify_peer_record,
)

log = logging.getLogger("aipg.gossip")

MIN_SCORE = -10
MAX_FILE_SIZE = 16 << 20


@dataclasses.dataclass
class Entry:
    record: PeerRecord
    score: int = 0
    updated: float = 0.0
    # Until when not to dial this peer again, and the next backoff.
    backoff_until: float = 0.0
    backoff: float = 0.0


class AddressBook:
    def __init__(
        self,
        capacity: int = 4096,
        path: Path | None = None,
        clock: Callable[[], float] = trio.current_time,
    ):
        self.capacity = capacity
        self.path = path
        self._clock = clock
        self._entries: dict[PeerId, Entry] = {}
        self._bad_relays: dict[PeerId, float] = {}
        self._by_key: dict[bytes, PeerId] = {}
        self.dirty = False

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, peer: PeerId) -> bool:
        return peer in self._entries

    def get(self, peer: PeerId) -> PeerRecord | None:
        e = self._entries.get(peer)
        return e.record if e else None

    def by_key(self, key: bytes) -> PeerId | None:
        """The peer whose DHT key (sha256 of its ID) is ``key``, if we hold its record."""
        return self._by_key.get(key)

    def peers(self) -> list[PeerId]:
        return list(self._entries)

    def add(
        self, rec: PeerRecord, *, protect: Iterable[PeerId] = (), verified: bool = False
    ) -> bool:
        """Store ``rec`` if it is valid and newer than what we have; True when stored."""
        if not verified:
            try:
                verify_peer_record(rec)
            except WireError as e:
                log.debug("peer record refused: %s", e)
                return False
        peer = rec.peer
        e = self._entries.get(peer)
        if e is not None:
            if rec.seq <= e.record.seq:
                return False
            e.record, e.updated = rec, self._clock()
        else:
            if len(self._entries) >= self.capacity and not self._evict(set(protect)):
                return False
            self._entries[peer] = Entry(rec, updated=self._clock())
            self._by_key[sha256(peer.raw)] = peer
        self.dirty = True
        return True

    def _evict(self, protect: set[PeerId]) -> bool:
        victims = [(e.score, e.updated, p) for p, e in self._entries.items() if p not in protect]
        if not victims:
            return False
        self.remove(min(victims, key=lambda v: (v[0], v[1]))[2])
        return True

    def remove(self, peer: PeerId) -> None:
        if self._entries.pop(peer, None) is not None:
            self._by_key.pop(sha256(peer.raw), None)
            self.dirty = True

    # --- dial outcomes -------------------------------------------------------------------

    def dial_ok(self, peer: PeerId) -> None:
        e = self._entries.get(peer)
        if e is not None:
            e.score = min(10, e.score + 1)
            e.backoff_until, e.backoff = 0.0, 0.0

    def dial_failed(self, peer: PeerId, base: float, cap: float) -> None:
        e = self._entries.get(peer)
        if e is not None:
            e.score = max(MIN_SCORE, e.score - 1)
            e.backoff = min(cap, max(base, e.backoff * 2))
            e.backoff_until = self._clock() + e.backoff

    def backoff_left(self, peer: PeerId) -> float:
        e = self._entries.get(peer)
        return max(0.0, e.backoff_until - self._clock()) if e else 0.0

    def score(self, peer: PeerId) -> int:
        e = self._entries.get(peer)
        return e.score if e else 0

    def relay_misbehaved(self, relay: PeerId, ban: float) -> None:
        log.info("avoiding relay %s for %.0fs: it dropped or corrupted relayed traffic", relay, ban)
        self._bad_relays[relay] = self._clock() + ban
        self.dial_failed(relay, ban, ban)

    def relay_is_bad(self, relay: PeerId) -> bool:
        until = self._bad_relays.get(relay)
        if until is None:
            return False
        if self._clock() >= until:
            del self._bad_relays[relay]
            return False
        return True

    def dial_addrs(self, peer: PeerId) -> list[Multiaddr]:
        """``peer``'s addresses to try, direct ones first, skipping relays we avoid."""
        rec = self.get(peer)
        if rec is None:
            return []
        direct: list[Multiaddr] = []
        relayed: list[Multiaddr] = []
        for a in rec.multiaddrs():
            if not a.is_relayed:
                direct.append(a)
                continue
            relay = a.relay().peer_id
            if relay != peer and not self.relay_is_bad(relay):
                relayed.append(a)
        relayed.sort(key=lambda a: -self.score(a.relay().peer_id))
        return direct + relayed

    # --- persistence -------------------------------------------------------------------

    def save(self) -> None:
        if self.path is None:
            return
        ranked = sorted(self._entries.values(), key=lambda e: (-e.score, -e.updated))
        data = msgpack.packb([encode(e.record) for e in ranked], use_bin_type=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, self.path)
        self.dirty = False

    def load(self) -> int:
        """Read the saved records (a damaged file is logged and ignored); how many loaded."""
        if self.path is None or not self.path.exists():
            return 0
        try:
            raw = self.path.read_bytes()
            if len(raw) > MAX_FILE_SIZE:
                raise ValueError("file too large")
            items = msgpack.unpackb(raw, raw=False, max_bin_len=8192, max_array_len=1 << 16)
            if not isinstance(items, list):
                raise ValueError("not a list")
        except (OSError, ValueError, msgpack.UnpackException) as e:
            log.warning("ignoring the address book %s: %s", self.path, e)
            return 0
        n = 0
        for item in items[: self.capacity]:
            try:
                if isinstance(item, bytes) and self.add(decode(item, PeerRecord)):
                    n += 1
            except WireError:
                continue
        self.dirty = False
        return n
