"""GossipSub v1.1 peer scoring (P1-P7), as a pure state machine driven by the router.

    score(p) = Σ_t topic_weight_t · min(cap, w1·P1 + w2·P2 + w3·P3 + w3b·P3b + w4·P4)
               + w5·P5 + w6·P6 + w7·P7

Times come from the caller (``now``), so tests can drive it without a clock.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections import defaultdict

from aipg.wire import PeerId

from .config import PeerScoreParams


@dataclasses.dataclass
class _TopicStats:
    in_mesh: bool = False
    graft_time: float = 0.0
    mesh_time: float = 0.0
    first_deliveries: float = 0.0
    mesh_deliveries: float = 0.0
    mesh_active: bool = False
    mesh_failure_penalty: float = 0.0
    invalid_deliveries: float = 0.0


@dataclasses.dataclass
class _PeerStats:
    topics: dict[str, _TopicStats] = dataclasses.field(default_factory=dict)
    connected: bool = True
    expire: float = 0.0
    behaviour_penalty: float = 0.0
    ip: str | None = None

    def topic(self, topic: str) -> _TopicStats:
        stats = self.topics.get(topic)
        if stats is None:
            stats = self.topics[topic] = _TopicStats()
        return stats


@dataclasses.dataclass
class _Delivery:
    """What we know about one message id, for P3's delivery window."""

    first_seen: float
    topic: str
    validated: float | None = None
    valid: bool | None = None
    peers: set[PeerId] = dataclasses.field(default_factory=set)


class PeerScore:
    """Scores of connected peers (and recently disconnected ones, for ``retain_score``)."""

    def __init__(self, params: PeerScoreParams):
        self.params = params
        self._peers: dict[PeerId, _PeerStats] = {}
        self._ip_peers: dict[str, set[PeerId]] = defaultdict(set)
        self._deliveries: dict[bytes, _Delivery] = {}
        self._cache: dict[PeerId, float] = {}

    # --- membership --------------------------------------------------------------

    def add_peer(self, peer: PeerId, ip: str | None) -> None:
        stats = self._peers.get(peer)
        if stats is None:
            stats = self._peers[peer] = _PeerStats()
        stats.connected = True
        self._set_ip(peer, stats, ip)
        self._dirty(peer)

    def remove_peer(self, peer: PeerId, now: float) -> None:
        stats = self._peers.get(peer)
        if stats is None:
            return
        for ts in stats.topics.values():
            ts.in_mesh = False
        if self.score(peer) > 0:  # positive score is not worth remembering
            self._forget(peer)
            return
        stats.connected = False
        stats.expire = now + self.params.retain_score
        self._dirty(peer)

    def _forget(self, peer: PeerId) -> None:
        stats = self._peers.pop(peer, None)
        if stats is not None:
            self._set_ip(peer, stats, None)
        self._cache.pop(peer, None)

    def _set_ip(self, peer: PeerId, stats: _PeerStats, ip: str | None) -> None:
        if stats.ip is not None:
            peers = self._ip_peers.get(stats.ip)
            if peers is not None:
                peers.discard(peer)
                for other in peers:
                    self._dirty(other)
                if not peers:
                    del self._ip_peers[stats.ip]
        stats.ip = ip
        if ip is not None and not self._whitelisted(ip):
            self._ip_peers[ip].add(peer)
            for other in self._ip_peers[ip]:
                self._dirty(other)

    def _whitelisted(self, ip: str) -> bool:
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return True  # a DNS name or no IP: nothing to count
        return any(addr in net for net in self.params.ip_colocation_whitelist)

    def graft(self, peer: PeerId, topic: str, now: float) -> None:
        stats = self._peers.get(peer)
        if stats is None:
            return
        ts = stats.topic(topic)
        ts.in_mesh, ts.graft_time, ts.mesh_time, ts.mesh_active = True, now, 0.0, False
        self._dirty(peer)

    def prune(self, peer: PeerId, topic: str) -> None:
        stats = self._peers.get(peer)
        if stats is None:
            return
        ts = stats.topic(topic)
        tp = self.params.topic(topic)
        if ts.mesh_active and ts.mesh_deliveries < tp.mesh_message_deliveries_threshold:
            deficit = tp.mesh_message_deliveries_threshold - ts.mesh_deliveries
            ts.mesh_failure_penalty += deficit * deficit
        ts.in_mesh = ts.mesh_active = False
        self._dirty(peer)

    # --- events ------------------------------------------------------------------

    def validate_message(self, msg_id: bytes, topic: str, now: float) -> None:
        """A message arrived for the first time (before validation)."""
        self._deliveries.setdefault(msg_id, _Delivery(first_seen=now, topic=topic))

    def deliver_message(self, peer: PeerId, topic: str, msg_id: bytes, now: float) -> None:
        """``peer`` was first to deliver ``msg_id``, and it validated."""
        d = self._deliveries.setdefault(msg_id, _Delivery(first_seen=now, topic=topic))
        d.validated, d.valid = now, True
        self._credit(peer, topic, first=True)
        for other in d.peers:
            if other != peer:
                self._credit(other, topic, first=False)
        d.peers.add(peer)

    def duplicate_message(self, peer: PeerId, msg_id: bytes, now: float) -> None:
        d = self._deliveries.get(msg_id)
        if d is None or peer in d.peers:
            return
        d.peers.add(peer)
        topic = d.topic
        if d.valid is False:
            self.reject_message(peer, topic)
        elif d.valid and d.validated is not None:
            window = self.params.topic(topic).mesh_message_deliveries_window
            if now - d.validated <= window:
                self._credit(peer, topic, first=False)

    def reject_message(self, peer: PeerId, topic: str, msg_id: bytes | None = None) -> None:
        """``peer`` sent an invalid message (bad signature, REJECTed by a validator)."""
        stats = self._peers.get(peer)
        if stats is not None:
            stats.topic(topic).invalid_deliveries += 1
            self._dirty(peer)
        if msg_id is not None:
            d = self._deliveries.get(msg_id)
            if d is not None:
                d.valid = False
                for other in d.peers - {peer}:
                    other_stats = self._peers.get(other)
                    if other_stats is not None:
                        other_stats.topic(topic).invalid_deliveries += 1
                        self._dirty(other)
                d.peers.add(peer)

    def add_penalty(self, peer: PeerId, count: float = 1.0) -> None:
        """P7: misbehaviour at the protocol level."""
        stats = self._peers.get(peer)
        if stats is not None:
            stats.behaviour_penalty += count
            self._dirty(peer)

    def _credit(self, peer: PeerId, topic: str, *, first: bool) -> None:
        stats = self._peers.get(peer)
        if stats is None:
            return
        ts = stats.topic(topic)
        tp = self.params.topic(topic)
        if first:
            ts.first_deliveries = min(tp.first_message_deliveries_cap, ts.first_deliveries + 1)
        if ts.in_mesh:
            ts.mesh_deliveries = min(tp.mesh_message_deliveries_cap, ts.mesh_deliveries + 1)
        # Credits only raise the score; the cached value catches up at the next refresh
        # (every heartbeat), which spares a recomputation per delivered message.

    def _dirty(self, peer: PeerId) -> None:
        self._cache.pop(peer, None)

    # --- the score -----------------------------------------------------------------

    def score(self, peer: PeerId) -> float:
        cached = self._cache.get(peer)
        if cached is not None:
            return cached
        stats = self._peers.get(peer)
        value = 0.0 if stats is None else self._compute(peer, stats)
        self._cache[peer] = value
        return value

    def _compute(self, peer: PeerId, stats: _PeerStats) -> float:
        p = self.params
        total = 0.0
        for topic, ts in stats.topics.items():
            tp = p.topic(topic)
            s = 0.0
            if ts.in_mesh:
                p1 = min(ts.mesh_time / tp.time_in_mesh_quantum, tp.time_in_mesh_cap)
                s += p1 * tp.time_in_mesh_weight
            s += ts.first_deliveries * tp.first_message_deliveries_weight
            if (
                ts.in_mesh
                and ts.mesh_active
                and ts.mesh_deliveries < tp.mesh_message_deliveries_threshold
            ):
                deficit = tp.mesh_message_deliveries_threshold - ts.mesh_deliveries
                s += deficit * deficit * tp.mesh_message_deliveries_weight
            s += ts.mesh_failure_penalty * tp.mesh_failure_penalty_weight
            s += (
                ts.invalid_deliveries * ts.invalid_deliveries * tp.invalid_message_deliveries_weight
            )
            total += s * tp.topic_weight
        if p.topic_score_cap > 0:
            total = min(total, p.topic_score_cap)
        total += p.app_specific_score(peer) * p.app_specific_weight
        if stats.ip is not None:
            n = len(self._ip_peers.get(stats.ip, ()))
            if n > p.ip_colocation_factor_threshold:
                surplus = n - p.ip_colocation_factor_threshold
                total += surplus * surplus * p.ip_colocation_factor_weight
        if stats.behaviour_penalty > p.behaviour_penalty_threshold:
            excess = stats.behaviour_penalty - p.behaviour_penalty_threshold
            total += excess * excess * p.behaviour_penalty_weight
        return total

    # --- periodic ------------------------------------------------------------------

    def refresh(self, now: float, delivery_ttl: float) -> None:
        """Decay counters, advance mesh time, expire retained peers and old deliveries."""
        p = self.params
        zero = p.decay_to_zero
        for peer in list(self._peers):
            stats = self._peers[peer]
            if not stats.connected and now >= stats.expire:
                self._forget(peer)
                continue
            for topic, ts in stats.topics.items():
                tp = p.topic(topic)
                ts.first_deliveries = _decay(
                    ts.first_deliveries, tp.first_message_deliveries_decay, zero
                )
                ts.mesh_deliveries = _decay(
                    ts.mesh_deliveries, tp.mesh_message_deliveries_decay, zero
                )
                ts.mesh_failure_penalty = _decay(
                    ts.mesh_failure_penalty, tp.mesh_failure_penalty_decay, zero
                )
                ts.invalid_deliveries = _decay(
                    ts.invalid_deliveries, tp.invalid_message_deliveries_decay, zero
                )
                if ts.in_mesh:
                    ts.mesh_time = now - ts.graft_time
                    if ts.mesh_time > tp.mesh_message_deliveries_activation:
                        ts.mesh_active = True
            stats.behaviour_penalty = _decay(
                stats.behaviour_penalty, p.behaviour_penalty_decay, zero
            )
        # Recompute every score now, in one pass: the heartbeat that follows reads them
        # all (mesh upkeep, graylisting), and until the next refresh only penalties
        # invalidate an entry.
        self._cache = {peer: self._compute(peer, st) for peer, st in self._peers.items()}
        cutoff = now - delivery_ttl
        stale = []
        for mid, d in self._deliveries.items():  # insertion order is arrival order
            if d.first_seen >= cutoff:
                break
            stale.append(mid)
        for mid in stale:
            del self._deliveries[mid]


def _decay(value: float, factor: float, zero: float) -> float:
    value *= factor
    return 0.0 if value < zero else value
