"""Mesh maintenance: the mesh of each topic we subscribe to, and the fanout of the others.

:class:`MeshMaintainer` grafts peers into a topic's mesh when we join and prunes them
when we leave; answers their GRAFTs and PRUNEs (with backoffs, penalties for a GRAFT
during backoff, and peer exchange); each heartbeat it keeps every mesh between D_lo and
D_hi (the D_score best-scored kept, at least D_out outbound, opportunistic grafting when
the median score is low) and refreshes or expires the fanout; and it picks the peers a
publish goes to (flood-publish, the mesh, or the fanout).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable

from aipg.wire import PeerId

from .config import GossipSubParams, PeerScoreThresholds
from .messages import ControlGraft, ControlPrune, PeerInfo
from .pubsub import Outgoing, PeerState
from .score import PeerScore


class MeshMaintainer:
    """Owned by a :class:`~aipg.gossip.router.GossipSubRouter`, whose state it shares.

    ``mesh``, ``fanout``, ``peers`` and ``topic_peers`` are the router's own dicts;
    the GRAFT backoffs and the fanout's last-publish times are kept here.
    ``send_control`` sends a control RPC; ``peer_info`` gives a connected peer's listen
    addresses for the PRUNEs we send, ``peer_exchange`` takes those a PRUNE offered us.
    """

    def __init__(
        self,
        params: GossipSubParams,
        thresholds: PeerScoreThresholds,
        score: PeerScore,
        rng: random.Random,
        *,
        peers: dict[PeerId, PeerState],
        topic_peers: dict[str, set[PeerId]],
        mesh: dict[str, set[PeerId]],
        fanout: dict[str, set[PeerId]],
        now: Callable[[], float],
        send_control: Callable[..., None],
        peer_info: Callable[[PeerId], PeerInfo | None],
        peer_exchange: Callable[[PeerId, list[PeerInfo]], None],
    ):
        self.params = params
        self.thresholds = thresholds
        self.score = score
        self._rng = rng
        self.peers = peers
        self.topic_peers = topic_peers
        self.mesh = mesh
        self.fanout = fanout
        self._fanout_last: dict[str, float] = {}
        self._backoff: dict[tuple[str, PeerId], float] = {}
        self._now = now
        self._send_control = send_control
        self._peer_info = peer_info
        self._peer_exchange = peer_exchange

    # --- joining and leaving -----------------------------------------------------------

    def join(self, topic: str) -> None:
        mesh = self.mesh.setdefault(topic, set())
        now = self._now()
        for peer in self.fanout.pop(topic, set()):
            if self.score.score(peer) >= 0 and len(mesh) < self.params.D:
                mesh.add(peer)
        self._fanout_last.pop(topic, None)
        candidates = [
            p
            for p in self.topic_peers.get(topic, ())
            if p not in mesh and not self._in_backoff(topic, p, now) and self.score.score(p) >= 0
        ]
        self._rng.shuffle(candidates)
        mesh.update(candidates[: max(0, self.params.D - len(mesh))])
        for peer in mesh:
            self.score.graft(peer, topic, now)
            self._send_control(peer, graft=[ControlGraft(topic=topic)])

    def leave(self, topic: str) -> None:
        for peer in self.mesh.pop(topic, set()):
            self.score.prune(peer, topic)
            backoff = self.params.unsubscribe_backoff
            self._add_backoff(topic, peer, backoff)
            self._send_control(peer, prune=[self._make_prune(topic, peer, backoff, px=False)])

    # --- publishing ------------------------------------------------------------------

    def publish_targets(self, topic: str, now: float) -> set[PeerId]:
        subscribed = self.topic_peers.get(topic, set())
        if self.params.flood_publish:
            threshold = self.thresholds.publish_threshold
            return {p for p in subscribed if self.score.score(p) >= threshold}
        if topic in self.mesh:
            return set(self.mesh[topic])
        fanout = self.fanout.get(topic)
        if not fanout:
            candidates = [
                p for p in subscribed if self.score.score(p) >= self.thresholds.publish_threshold
            ]
            self._rng.shuffle(candidates)
            fanout = self.fanout[topic] = set(candidates[: self.params.D])
        self._fanout_last[topic] = now
        return set(fanout)

    # --- GRAFT and PRUNE from peers ---------------------------------------------------

    def handle_graft(self, peer: PeerId, grafts) -> list[ControlPrune]:
        prunes: list[ControlPrune] = []
        now = self._now()
        for graft in grafts:
            topic = graft.topic
            mesh = self.mesh.get(topic)
            if mesh is None or peer in mesh:
                continue  # not subscribed (ignore, as the spec says) or already grafted
            expiry = self._backoff.get((topic, peer))
            if expiry is not None and now < expiry:
                self.score.add_penalty(peer)
                if now < expiry - self.params.prune_backoff + self.params.graft_flood_threshold:
                    self.score.add_penalty(peer)  # GRAFT right after our PRUNE: flooding
                self._add_backoff(topic, peer, self.params.prune_backoff)
                prunes.append(self._make_prune(topic, peer, self.params.prune_backoff, px=False))
                continue
            if self.score.score(peer) < 0:
                self._add_backoff(topic, peer, self.params.prune_backoff)
                prunes.append(self._make_prune(topic, peer, self.params.prune_backoff, px=False))
                continue
            state = self.peers[peer]
            if len(mesh) >= self.params.D_hi and not state.outbound:
                self._add_backoff(topic, peer, self.params.prune_backoff)
                prunes.append(self._make_prune(topic, peer, self.params.prune_backoff, px=True))
                continue
            mesh.add(peer)
            self.score.graft(peer, topic, now)
        return prunes

    def handle_prune(self, peer: PeerId, prunes) -> None:
        for prune in prunes:
            mesh = self.mesh.get(prune.topic)
            if mesh is not None and peer in mesh:
                mesh.discard(peer)
                self.score.prune(peer, prune.topic)
            backoff = prune.backoff or self.params.prune_backoff
            self._add_backoff(prune.topic, peer, min(backoff, 3600))
            if prune.peers and self.score.score(peer) >= self.thresholds.accept_px_threshold:
                self._peer_exchange(peer, list(prune.peers[: self.params.prune_peers]))

    def _make_prune(self, topic: str, peer: PeerId, backoff: float, *, px: bool) -> ControlPrune:
        infos: list[PeerInfo] = []
        if px:
            others = [
                p for p in self.topic_peers.get(topic, ()) if p != peer and self.score.score(p) >= 0
            ]
            self._rng.shuffle(others)
            for other in others:
                info = self._peer_info(other)
                if info is not None:
                    infos.append(info)
                if len(infos) >= self.params.prune_peers:
                    break
        return ControlPrune(topic=topic, peers=tuple(infos), backoff=math.ceil(backoff))

    def _in_backoff(self, topic: str, peer: PeerId, now: float) -> bool:
        expiry = self._backoff.get((topic, peer))
        return expiry is not None and now < expiry

    def _add_backoff(self, topic: str, peer: PeerId, seconds: float) -> None:
        expiry = self._now() + seconds
        if self._backoff.get((topic, peer), 0.0) < expiry:
            self._backoff[(topic, peer)] = expiry

    # --- heartbeat ---------------------------------------------------------------------

    def maintain_mesh(
        self, topic: str, now: float, out: dict[PeerId, Outgoing], heartbeats: int
    ) -> None:
        p = self.params
        mesh = self.mesh[topic]
        score = self.score.score

        def graft(peer: PeerId) -> None:
            mesh.add(peer)
            self.score.graft(peer, topic, now)
            out.setdefault(peer, Outgoing()).graft.append(ControlGraft(topic=topic))

        def prune(peer: PeerId, px: bool) -> None:
            mesh.discard(peer)
            self.score.prune(peer, topic)
            self._add_backoff(topic, peer, p.prune_backoff)
            out.setdefault(peer, Outgoing()).prune.append(
                self._make_prune(topic, peer, p.prune_backoff, px=px)
            )

        for peer in [q for q in mesh if score(q) < 0]:
            prune(peer, px=False)

        def candidates(pred=lambda _q: True) -> list[PeerId]:
            c = [
                q
                for q in self.topic_peers.get(topic, ())
                if q not in mesh
                and not self._in_backoff(topic, q, now)
                and score(q) >= 0
                and pred(q)
            ]
            self._rng.shuffle(c)
            return c

        if len(mesh) < p.D_lo:
            for peer in candidates()[: p.D - len(mesh)]:
                graft(peer)
        if len(mesh) > p.D_hi:
            self._shrink_mesh(mesh, prune)
        outbound = sum(1 for q in mesh if self.peers[q].outbound)
        if len(mesh) >= p.D_lo and outbound < p.D_out:
            for peer in candidates(lambda q: self.peers[q].outbound)[: p.D_out - outbound]:
                graft(peer)
        if heartbeats % p.opportunistic_graft_ticks == 0 and len(mesh) > 1:
            scores = sorted(score(q) for q in mesh)
            median = scores[len(scores) // 2]
            if median < self.thresholds.opportunistic_graft_threshold:
                better = candidates(lambda q: score(q) > median)
                for peer in better[: p.opportunistic_graft_peers]:
                    graft(peer)

    def _shrink_mesh(self, mesh: set[PeerId], prune: Callable[[PeerId, bool], None]) -> None:
        p = self.params
        by_score = sorted(mesh, key=self.score.score, reverse=True)
        keep = by_score[: p.D_score]
        rest = by_score[p.D_score :]
        self._rng.shuffle(rest)
        keep += rest[: p.D - len(keep)]
        outbound = [q for q in keep if self.peers[q].outbound]
        if len(outbound) < p.D_out:
            spare_out = [q for q in mesh if q not in keep and self.peers[q].outbound]
            for q in spare_out[: p.D_out - len(outbound)]:
                inbound = [k for k in keep[p.D_score :] if not self.peers[k].outbound]
                if inbound:
                    keep.remove(inbound[-1])
                    keep.append(q)
        for peer in [q for q in mesh if q not in keep]:
            prune(peer, True)

    def maintain_fanout(self, now: float) -> None:
        p = self.params
        for topic in list(self.fanout):
            if now - self._fanout_last.get(topic, now) > p.fanout_ttl:
                del self.fanout[topic]
                self._fanout_last.pop(topic, None)
                continue
            peers = self.fanout[topic]
            subscribed = self.topic_peers.get(topic, set())
            for peer in [
                q
                for q in peers
                if q not in subscribed or self.score.score(q) < self.thresholds.publish_threshold
            ]:
                peers.discard(peer)
            if len(peers) < p.D:
                more = [
                    q
                    for q in subscribed
                    if q not in peers and self.score.score(q) >= self.thresholds.publish_threshold
                ]
                self._rng.shuffle(more)
                peers.update(more[: p.D - len(peers)])

    def expire_backoffs(self, now: float, heartbeats: int) -> None:
        if heartbeats % 15:
            return
        for key in [k for k, exp in self._backoff.items() if exp < now]:
            del self._backoff[key]
