"""IHAVE/IWANT: GossipSub's lazy push, and the promises that keep it honest.

Each heartbeat, :meth:`Gossip.emit_gossip` offers the ids of recent messages (from the
message cache's gossip windows) to peers outside a topic's mesh or fanout. An IHAVE we
receive is answered with an IWANT for what we have not seen, within per-heartbeat
budgets; each IWANT batch holds one **promise**, and a peer whose promised message does
not come within ``iwant_followup_time`` is penalised. An IWANT we receive is served from
the message cache, up to the retransmission and per-heartbeat limits.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from aipg.wire import PeerId

from .cache import MessageCache, SeenCache
from .config import GossipSubParams, PeerScoreThresholds
from .messages import ControlIHave
from .pubsub import MessageId, Outgoing, PeerState, RouterStats
from .score import PeerScore


class Gossip:
    """Owned by a :class:`~aipg.gossip.router.GossipSubRouter`, whose state it shares.

    ``mesh``, ``fanout`` and ``topic_peers`` are the router's dicts, ``seen`` and
    ``mcache`` its caches, ``stats`` its counters; the IWANT promises are kept here.
    """

    def __init__(
        self,
        params: GossipSubParams,
        thresholds: PeerScoreThresholds,
        score: PeerScore,
        rng: random.Random,
        *,
        topic_peers: dict[str, set[PeerId]],
        mesh: dict[str, set[PeerId]],
        fanout: dict[str, set[PeerId]],
        seen: SeenCache,
        mcache: MessageCache,
        stats: RouterStats,
        now: Callable[[], float],
    ):
        self.params = params
        self.thresholds = thresholds
        self.score = score
        self._rng = rng
        self.topic_peers = topic_peers
        self.mesh = mesh
        self.fanout = fanout
        self._seen = seen
        self._mcache = mcache
        self.stats = stats
        self._now = now
        self._promises: dict[MessageId, dict[PeerId, float]] = {}

    def kept(self, mid: MessageId) -> None:
        """``mid`` has arrived: whoever promised it kept the promise."""
        self._promises.pop(mid, None)

    # --- inbound IHAVE and IWANT ---------------------------------------------------------

    def handle_ihave(self, peer: PeerId, state: PeerState, ihaves) -> list[MessageId]:
        if not ihaves or self.score.score(peer) < self.thresholds.gossip_threshold:
            return []
        p = self.params
        state.ihaves_this_beat += 1
        if state.ihaves_this_beat > p.max_ihave_messages:
            return []  # over the IHAVE budget for this heartbeat
        budget = p.max_ihave_length - state.ids_asked_this_beat
        wanted: list[MessageId] = []
        for ihave in ihaves:
            if ihave.topic not in self.mesh:
                continue
            for mid in ihave.message_ids:
                if mid not in self._seen and mid not in wanted:
                    wanted.append(mid)
        if not wanted or budget <= 0:
            return []
        self._rng.shuffle(wanted)
        wanted = wanted[:budget]
        state.ids_asked_this_beat += len(wanted)
        # One promise per IHAVE batch: if that message does not come, the peer lied.
        promised = self._rng.choice(wanted)
        self._promises.setdefault(promised, {})[peer] = self._now() + p.iwant_followup_time
        return wanted

    def handle_iwant(self, peer: PeerId, state: PeerState, iwants) -> list[bytes]:
        if not iwants or self.score.score(peer) < self.thresholds.gossip_threshold:
            return []
        out: list[bytes] = []
        ids = [mid for iwant in iwants for mid in iwant.message_ids]
        room = self.params.max_iwant_serve - state.iwant_served_this_beat
        if len(ids) > room:
            self.score.add_penalty(peer, 0.1)  # an IWANT flood: serve the budget, no more
            ids = ids[: max(0, room)]
        state.iwant_served_this_beat += len(ids)
        for mid in ids:
            msg, count = self._mcache.get_for_peer(mid, peer)
            if msg is not None and count <= self.params.gossip_retransmission:
                out.append(msg)
        self.stats.iwant_served += len(out)
        return out

    # --- heartbeat ---------------------------------------------------------------------

    def emit_gossip(self, out: dict[PeerId, Outgoing]) -> None:
        p = self.params
        by_topic = self._mcache.gossip_topics()
        for topic, ids in by_topic.items():
            exclude = self.mesh.get(topic) or self.fanout.get(topic)
            if exclude is None:
                continue
            ids = ids[-p.max_ihave_length :]
            candidates = [
                q
                for q in self.topic_peers.get(topic, ())
                if q not in exclude and self.score.score(q) >= self.thresholds.gossip_threshold
            ]
            count = max(p.D_lazy, int(p.gossip_factor * len(candidates)))
            self._rng.shuffle(candidates)
            ihave = ControlIHave(topic=topic, message_ids=tuple(ids))
            for peer in candidates[:count]:
                out.setdefault(peer, Outgoing()).ihave.append(ihave)

    def settle_promises(self, now: float) -> None:
        broken: dict[PeerId, int] = {}
        for mid in list(self._promises):
            peers = self._promises[mid]
            for peer, deadline in list(peers.items()):
                if deadline < now:
                    del peers[peer]
                    broken[peer] = broken.get(peer, 0) + 1
            if not peers:
                del self._promises[mid]
        for peer, n in broken.items():
            self.score.add_penalty(peer, n)
