"""Configuration of a gossip host: connection limits, GossipSub and peer-score parameters.

Defaults follow the GossipSub v1.1 spec and go-libp2p-pubsub where the spec names a
value; where it does not, the value and its reason are written beside it. Scores are
node-local floats (they never touch the wire or the ledger).
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Callable
from pathlib import Path

from aipg.wire import Multiaddr, PeerId


@dataclasses.dataclass
class RelayLimits:
    """What one circuit relay grants (circuit relay v2's reservation and circuit limits)."""

    max_reservations: int = 128
    reservation_ttl: int = 3600
    max_circuits: int = 256
    max_circuits_per_peer: int = 16
    # Per circuit, both directions together, and its lifetime. Generous next to
    # libp2p's defaults (128 KiB, 2 min): with no hole punching yet, a job's whole
    # exchange (assignment, report, latents) may have to flow through the relay.
    max_bytes: int = 64 << 20
    max_duration: int = 600


AGENT_VERSION = "aipg-node/0.1.0"
PROTOCOL_VERSION = "aipg/1"
TOPIC_PREFIX = "/aipg/1/"


@dataclasses.dataclass
class TopicScoreParams:
    """Per-topic weights of P1-P4 (GossipSub v1.1 "Peer Scoring")."""

    topic_weight: float = 1.0
    # P1: time in mesh, in quanta, capped.
    time_in_mesh_weight: float = 0.01
    time_in_mesh_quantum: float = 1.0
    time_in_mesh_cap: float = 100.0
    # P2: first deliveries of messages (decaying counter, capped).
    first_message_deliveries_weight: float = 1.0
    first_message_deliveries_decay: float = 0.9
    first_message_deliveries_cap: float = 50.0
    # P3: mesh delivery deficit. Disabled by default (weight 0): the right threshold
    # depends on the topic's message rate, which only the application knows.
    mesh_message_deliveries_weight: float = 0.0
    mesh_message_deliveries_decay: float = 0.9
    mesh_message_deliveries_threshold: float = 1.0
    mesh_message_deliveries_cap: float = 20.0
    mesh_message_deliveries_activation: float = 10.0
    mesh_message_deliveries_window: float = 0.05
    # P3b: penalty kept after a prune with a deficit.
    mesh_failure_penalty_weight: float = 0.0
    mesh_failure_penalty_decay: float = 0.9
    # P4: invalid messages (squared counter). One invalid message costs 10 points, so
    # three put a peer below the default graylist threshold of -80.
    invalid_message_deliveries_weight: float = -10.0
    invalid_message_deliveries_decay: float = 0.99


@dataclasses.dataclass
class PeerScoreParams:
    """Weights of P5-P7 and the bookkeeping around them."""

    topics: dict[str, TopicScoreParams] = dataclasses.field(default_factory=dict)
    default_topic: TopicScoreParams = dataclasses.field(default_factory=TopicScoreParams)
    topic_score_cap: float = 100.0
    # P5: application-specific score (the node can reward bonded validators).
    app_specific_score: Callable[[PeerId], float] = lambda _peer: 0.0
    app_specific_weight: float = 1.0
    # P6: peers sharing an IP beyond the threshold; loopback is exempt so that
    # local devnets and tests (every peer on 127.0.0.1) are not penalised.
    ip_colocation_factor_weight: float = -10.0
    ip_colocation_factor_threshold: int = 4
    ip_colocation_whitelist: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = (
        ipaddress.ip_network("127.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
    )
    # P7: protocol misbehaviour (broken IWANT promises, GRAFT in backoff, bad frames).
    # The first few count nothing: an honest peer under load can be late with an IWANT
    # reply, and that must not cost it the mesh (go-libp2p deployments use about 6).
    behaviour_penalty_weight: float = -10.0
    behaviour_penalty_threshold: float = 6.0
    behaviour_penalty_decay: float = 0.99
    decay_interval: float = 1.0
    decay_to_zero: float = 0.01
    # Keep the score of a peer that disconnects, so leaving and rejoining is no reset.
    retain_score: float = 600.0

    def topic(self, topic: str) -> TopicScoreParams:
        return self.topics.get(topic, self.default_topic)


@dataclasses.dataclass
class PeerScoreThresholds:
    gossip_threshold: float = -10.0  # below: no gossip to or from the peer
    publish_threshold: float = -50.0  # below: no flood-published messages to the peer
    graylist_threshold: float = -80.0  # below: ignore all its RPCs, then disconnect
    accept_px_threshold: float = 10.0  # at or above: follow its PRUNE peer exchange
    opportunistic_graft_threshold: float = 1.0  # mesh median below: graft better peers


@dataclasses.dataclass
class GossipSubParams:
    D: int = 6
    D_lo: int = 4
    D_hi: int = 12
    D_lazy: int = 6
    D_score: int = 4
    D_out: int = 2
    heartbeat_interval: float = 1.0
    fanout_ttl: float = 60.0
    mcache_len: int = 5
    mcache_gossip: int = 3
    seen_ttl: float = 120.0
    prune_backoff: float = 60.0
    unsubscribe_backoff: float = 10.0
    graft_flood_threshold: float = 10.0
    prune_peers: int = 16
    gossip_factor: float = 0.25
    opportunistic_graft_ticks: int = 60
    opportunistic_graft_peers: int = 2
    max_ihave_length: int = 5000
    max_ihave_messages: int = 10
    # An IWANT for more than this many ids per heartbeat is a flood; the rest is ignored.
    max_iwant_serve: int = 5000
    gossip_retransmission: int = 3
    iwant_followup_time: float = 3.0
    flood_publish: bool = True
    validation_timeout: float = 5.0
    # Validations running at once; messages beyond it are dropped (IGNORE), not queued.
    max_pending_validations: int = 1024
    # Messages buffered per subscription before a slow reader starts losing them.
    subscription_buffer: int = 1024
    max_topics_per_peer: int = 128


@dataclasses.dataclass
class GossipConfig:
    """Everything a :class:`~aipg.gossip.GossipHost` needs besides its identity."""

    listen: list[Multiaddr] = dataclasses.field(default_factory=list)
    bootstrap: list[Multiaddr] = dataclasses.field(default_factory=list)
    agent_version: str = AGENT_VERSION
    max_peers: int = 64
    # Above high_water connections the heartbeat trims to low_water (worst first).
    low_water: int = 32
    high_water: int = 48
    dial_timeout: float = 10.0
    handshake_timeout: float = 10.0
    # Inbound connections still in their handshake; more are dropped unanswered.
    max_pending_handshakes: int = 64
    redial_backoff_base: float = 1.0
    redial_backoff_max: float = 60.0
    redial_jitter: float = 0.2
    ping_interval: float = 15.0
    ping_timeout: float = 10.0
    # Frames a peer's writer may have queued; gossip beyond it is dropped for that peer.
    outbound_queue: int = 512
    # Undecodable frames tolerated before the connection is closed.
    max_bad_frames: int = 8
    ban_duration: float = 300.0
    max_message_size: int = 4 << 20
    request_timeout: float = 10.0
    handler_timeout: float = 30.0
    # Per-peer token bucket for inbound requests (all protocols together).
    request_rate: float = 50.0
    request_burst: float = 100.0
    max_concurrent_requests_per_peer: int = 32
    gossipsub: GossipSubParams = dataclasses.field(default_factory=GossipSubParams)
    score: PeerScoreParams = dataclasses.field(default_factory=PeerScoreParams)
    thresholds: PeerScoreThresholds = dataclasses.field(default_factory=PeerScoreThresholds)
    seed: int | None = None  # for the router's random choices (tests, benchmarks)
    # --- reaching peers that are not connected (issue 13; gossip/reach.py) ---
    # Connections opened on demand (a request to an unconnected peer, DHT queries,
    # relays) beyond max_peers; each closes after transient_idle seconds without requests.
    max_transient: int = 16
    transient_idle: float = 10.0
    dial_backoff_base: float = 1.0
    dial_backoff_max: float = 60.0
    addrbook_capacity: int = 4096
    peers_file: Path | None = None  # where the address book persists (None: memory only)
    # "auto" asks peers to dial us back (AutoNAT); "public"/"private" skip the question.
    reachability: str = "auto"
    dht_alpha: int = 3
    dht_refresh: float = 300.0
    relay_service: bool = True  # serve as a circuit relay for others (when public)
    relay_reservations: int = 2  # relays a private node keeps a slot on
    relay_limits: RelayLimits = dataclasses.field(default_factory=RelayLimits)
    relay_fault: str | None = None  # tests: "drop" or "corrupt" relayed traffic
