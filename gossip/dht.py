"""Peer routing: a Kademlia DHT over the host's request/response (libp2p kad-dht as model).

Keys are ``sha256(peer id bytes)``; distance is XOR. The routing table has 256 k-buckets
(k = 20) of peers that are publicly dialable ("server mode"); their signed records live in
the :class:`~.addrbook.AddressBook`. One request type, ``KadFindNode(key, sender)`` on
protocol ``kad``, answers with at most k verified records closest to ``key`` — and the
record of the peer whose key it is, if we hold it. ``sender`` is the requester's own
record: a server-mode requester joins our table, any requester's record goes to the
address book. So a node behind NAT (client mode: never in tables) that looks itself up
leaves its record, with its relayed addresses, at the k nodes closest to its key, which
is exactly where anyone's lookup of it ends.

A lookup is iterative with ``alpha`` (3) queries in flight per round, bounded in rounds
(20), in queries (``k * 4``) and in time; every reply is decoded strictly, bounded by its
record type, and every record in it verified before use (a record with a lower ``seq``
than the one we hold is ignored). A peer that fails a query leaves our table.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Annotated

import trio

from aipg.wire import (
    Hash32,
    MaxLen,
    PeerId,
    PeerRecord,
    Record,
    WireError,
    decode,
    encode,
    record,
    sha256,
    verify_peer_record,
)

from .addrbook import AddressBook
from .errors import GossipError

log = logging.getLogger("aipg.gossip")

KAD_PROTOCOL = "kad"
K = 20
ALPHA = 3
MAX_ROUNDS = 20
QUERY_TIMEOUT = 5.0


@record(tag=130, max_size=8192)
class KadFindNode(Record):
    key: Hash32
    sender: PeerRecord | None
    server: bool  # the sender is publicly dialable and may join routing tables


@record(tag=131, max_size=(K + 1) * 4200)
class KadNodes(Record):
    records: Annotated[tuple[PeerRecord, ...], MaxLen(K + 1)]


def kad_key(peer: PeerId) -> bytes:
    return sha256(peer.raw)


def distance(a: bytes, b: bytes) -> int:
    return int.from_bytes(a, "big") ^ int.from_bytes(b, "big")


class RoutingTable:
    """256 buckets of at most ``k`` peers, least recently seen first."""

    def __init__(self, local: PeerId, k: int = K):
        self.local = kad_key(local)
        self.local_peer = local
        self.k = k
        self.buckets: list[list[PeerId]] = [[] for _ in range(256)]

    def _bucket(self, peer: PeerId) -> list[PeerId]:
        d = distance(self.local, kad_key(peer))
        return self.buckets[max(0, d.bit_length() - 1)]

    def add(self, peer: PeerId, evictable: Callable[[PeerId], bool] = lambda _p: False) -> bool:
        if peer == self.local_peer:
            return False
        bucket = self._bucket(peer)
        if peer in bucket:
            bucket.remove(peer)
            bucket.append(peer)
            return True
        if len(bucket) >= self.k:
            # Kademlia keeps the old peers that still answer; one that failed us goes.
            stale = next((p for p in bucket if evictable(p)), None)
            if stale is None:
                return False
            bucket.remove(stale)
        bucket.append(peer)
        return True

    def remove(self, peer: PeerId) -> None:
        bucket = self._bucket(peer)
        if peer in bucket:
            bucket.remove(peer)

    def __contains__(self, peer: PeerId) -> bool:
        return peer in self._bucket(peer)

    def __len__(self) -> int:
        return sum(len(b) for b in self.buckets)

    def closest(self, key: bytes, n: int) -> list[PeerId]:
        peers = [p for b in self.buckets for p in b]
        peers.sort(key=lambda p: distance(key, kad_key(p)))
        return peers[:n]


Requester = Callable[[PeerId, bytes, float], Awaitable[bytes]]


class Dht:
    """The routing table, the ``kad`` handler and iterative lookups of one host.

    ``request(peer, data, timeout)`` sends a ``kad`` request (dialing from the address
    book if needed, never by another lookup); ``self_record()`` is our current record,
    ``is_server()`` whether we are publicly dialable; ``seeds()`` peers to start a lookup
    from when the table is empty (our connected peers).
    """

    def __init__(
        self,
        local: PeerId,
        addrbook: AddressBook,
        request: Requester,
        self_record: Callable[[], PeerRecord | None],
        is_server: Callable[[], bool],
        seeds: Callable[[], list[PeerId]],
        *,
        k: int = K,
        alpha: int = ALPHA,
        query_timeout: float = QUERY_TIMEOUT,
    ):
        self.local = local
        self.table = RoutingTable(local, k)
        self.addrbook = addrbook
        self._request = request
        self._self_record = self_record
        self._is_server = is_server
        self._seeds = seeds
        self.k, self.alpha, self.query_timeout = k, alpha, query_timeout
        self.queries_served = 0

    def _evictable(self, peer: PeerId) -> bool:
        return self.addrbook.score(peer) < 0 or peer not in self.addrbook

    def learn(self, rec: PeerRecord, *, server: bool) -> bool:
        """Take a (verified) record; servers with an address join the table."""
        self.addrbook.add(rec, verified=True)
        if server and rec.addrs and rec.peer != self.local:
            return self.table.add(rec.peer, self._evictable)
        return False

    # --- serving ---------------------------------------------------------------------

    async def handle(self, peer: PeerId, data: bytes) -> bytes:
        req = decode(data, KadFindNode)
        self.queries_served += 1
        if req.sender is not None:
            try:
                verify_peer_record(req.sender)
            except WireError:
                raise WireError(
                    "the sender's record does not verify", record="KadFindNode"
                ) from None
            if req.sender.peer == peer:  # only a peer's own record is taken from it
                self.learn(req.sender, server=req.server)
        return encode(KadNodes(records=tuple(self.records_for(req.key, exclude=peer))))

    def records_for(self, key: bytes, exclude: PeerId | None = None) -> list[PeerRecord]:
        """The record of the peer whose key ``key`` is (if we hold it), then the k closest."""
        out: list[PeerRecord] = []
        exact = self.addrbook.by_key(key)
        if exact is not None and exact != exclude:
            out.append(self.addrbook.get(exact))
        for p in self.table.closest(key, self.k + 1):
            if p in (exclude, exact) or len(out) > self.k:
                continue
            rec = self.addrbook.get(p)
            if rec is not None:
                out.append(rec)
        return out[: self.k + 1]

    # --- looking up ------------------------------------------------------------------

    async def find_peer(
        self, target: PeerId, timeout: float = 30.0
    ) -> tuple[PeerRecord | None, int]:
        """The freshest record of ``target`` a lookup finds, and the rounds it took."""
        found, hops, _ = await self.lookup(kad_key(target), target, timeout)
        return found, hops

    async def lookup(
        self, key: bytes, target: PeerId | None = None, timeout: float = 30.0
    ) -> tuple[PeerRecord | None, int, list[PeerId]]:
        """Iterative FIND_NODE towards ``key``; stops early when ``target``'s record comes back.

        Returns (target's record or None, rounds, the closest peers that answered).
        """
        request = encode(KadFindNode(key=key, sender=self._self_record(), server=self._is_server()))
        dist: dict[PeerId, int] = {}
        candidates: set[PeerId] = set()
        for p in self.table.closest(key, self.k) + self._seeds():
            if p != self.local and p != target:
                candidates.add(p)
                dist[p] = distance(key, kad_key(p))
        queried: set[PeerId] = set()
        answered: list[PeerId] = []
        found: PeerRecord | None = None
        rounds = 0
        with trio.move_on_after(timeout):
            while rounds < MAX_ROUNDS and len(queried) < self.k * 4:
                best_answered = sorted(answered, key=dist.__getitem__)[: self.k]
                pending = sorted((c for c in candidates if c not in queried), key=dist.__getitem__)
                if target is None and len(best_answered) >= self.k:
                    # a plain lookup ends once the k closest have answered; a lookup of a
                    # peer goes on (within its bounds) until someone holds its record
                    bound = dist[best_answered[-1]]
                    pending = [c for c in pending if dist[c] < bound]
                batch = pending[: self.alpha]
                if not batch:
                    break
                rounds += 1
                replies: dict[PeerId, list[PeerRecord]] = {}
                async with trio.open_nursery() as nursery:
                    for p in batch:
                        queried.add(p)
                        nursery.start_soon(self._query, p, request, replies)
                for p, records in replies.items():
                    answered.append(p)
                    for rec in records:
                        peer = rec.peer
                        if peer == self.local:
                            continue
                        if peer == target:
                            if found is None or rec.seq > found.seq:
                                found = rec
                            continue
                        if peer not in dist:
                            dist[peer] = distance(key, kad_key(peer))
                            candidates.add(peer)
                if found is not None:
                    break
        answered.sort(key=dist.__getitem__)
        return found, rounds, answered[: self.k]

    async def _query(self, peer: PeerId, request: bytes, out: dict[PeerId, list[PeerRecord]]):
        try:
            data = await self._request(peer, request, self.query_timeout)
            reply = decode(data, KadNodes)
        except (GossipError, WireError) as e:
            log.debug("kad query to %s failed: %s", peer.short(), e)
            self.table.remove(peer)
            return
        good: list[PeerRecord] = []
        for rec in reply.records:
            try:
                verify_peer_record(rec)
            except WireError:
                continue  # one bad record costs the reply nothing else
            if rec.addrs:
                self.learn(rec, server=any(not a.is_relayed for a in rec.multiaddrs()))
                good.append(rec)
        out[peer] = good
