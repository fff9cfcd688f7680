"""The seen-cache (message ids with a TTL) and GossipSub's sliding message cache."""

from __future__ import annotations

from collections import OrderedDict


class SeenCache:
    """Message ids seen in the last ``ttl`` seconds; expiry is O(expired)."""

    def __init__(self, ttl: float):
        self.ttl = ttl
        self._expiry: OrderedDict[bytes, float] = OrderedDict()

    def __contains__(self, msg_id: bytes) -> bool:
        return msg_id in self._expiry

    def __len__(self) -> int:
        return len(self._expiry)

    def add(self, msg_id: bytes, now: float) -> bool:
        """Record ``msg_id``; False when it was already there."""
        if msg_id in self._expiry:
            return False
        self._expiry[msg_id] = now + self.ttl
        return True

    def expire(self, now: float) -> None:
        while self._expiry:
            msg_id, at = next(iter(self._expiry.items()))
            if at > now:
                return
            del self._expiry[msg_id]


class MessageCache:
    """The last ``history`` heartbeats of messages; the newest ``gossip`` are advertised.

    ``get`` serves IWANTs for anything still in the cache and counts how often each
    peer asked for each message, so one peer cannot make us retransmit endlessly.
    """

    def __init__(self, gossip: int, history: int):
        if gossip > history:
            raise ValueError("mcache_gossip must not exceed mcache_len")
        self.gossip = gossip
        self._msgs: dict[bytes, bytes] = {}  # id -> encoded message
        self._windows: list[list[tuple[bytes, str]]] = [[] for _ in range(history)]
        self._requests: dict[bytes, dict[object, int]] = {}

    def __len__(self) -> int:
        return len(self._msgs)

    def put(self, msg_id: bytes, encoded: bytes, topic: str) -> None:
        if msg_id in self._msgs:
            return
        self._msgs[msg_id] = encoded
        self._windows[0].append((msg_id, topic))

    def get(self, msg_id: bytes) -> bytes | None:
        return self._msgs.get(msg_id)

    def get_for_peer(self, msg_id: bytes, peer: object) -> tuple[bytes | None, int]:
        """The message and how many times ``peer`` has now asked for it."""
        msg = self._msgs.get(msg_id)
        if msg is None:
            return None, 0
        counts = self._requests.setdefault(msg_id, {})
        counts[peer] = counts.get(peer, 0) + 1
        return msg, counts[peer]

    def gossip_ids(self, topic: str) -> list[bytes]:
        return [mid for window in self._windows[: self.gossip] for mid, t in window if t == topic]

    def gossip_topics(self) -> dict[str, list[bytes]]:
        out: dict[str, list[bytes]] = {}
        for window in self._windows[: self.gossip]:
            for mid, topic in window:
                out.setdefault(topic, []).append(mid)
        return out

    def shift(self) -> None:
        for msg_id, _ in self._windows.pop():
            self._msgs.pop(msg_id, None)
            self._requests.pop(msg_id, None)
        self._windows.insert(0, [])


class RecentIds:
    """The last ``capacity`` message ids one peer is known to have (it sent them to us).

    The writer consults it just before sending: a message the peer sent us in the
    meantime is dropped from what we were about to forward to it, since it has it.
    """

    __slots__ = ("_capacity", "_ids")

    def __init__(self, capacity: int = 2048):
        self._capacity = capacity
        self._ids: dict[bytes, None] = {}

    def __contains__(self, msg_id: bytes) -> bool:
        return msg_id in self._ids

    def add(self, msg_id: bytes) -> None:
        ids = self._ids
        if msg_id in ids:
            return
        if len(ids) >= self._capacity:
            del ids[next(iter(ids))]
        ids[msg_id] = None
