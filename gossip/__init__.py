"""aipg.gossip: the node's network layer.

Transport (trio-websocket, or in memory) → Noise XX secure channel bound to the peer
ID → connection manager → GossipSub v1.1 router with peer scoring, and
request/response on the same connections. It knows nothing of jobs or blocks: the
node registers topic validators and protocol handlers.

Public API::

    host = GossipHost(identity, config=GossipConfig(listen=[Multiaddr.parse(
        "/ip4/127.0.0.1/tcp/0/ws")], bootstrap=[...]), transport=WebsocketTransport())
    # or transport=MemoryTransport(network) with network = MemoryNetwork(), in tests
    await nursery.start(host.run)          # listens, starts the heartbeat, dials bootstrap
    host.listen_addrs -> list[Multiaddr]   # each ends in /p2p/<our peer id>
    await host.connect(multiaddr) -> PeerId
        # /p2p/<id> in the address must match who answers, else PeerIdMismatch
    host.connected_peers() -> list[PeerId]

    host.set_topic_validator(topic, async fn(forwarder: PeerId, msg: PubsubMessage)
                             -> ValidationResult, timeout=None)
    sub = host.subscribe(topic)            # async for d in sub: d is a Delivered
    await host.publish(topic, data) -> MessageId   # sha256 of the signed message

    host.set_request_handler(protocol, async fn(peer: PeerId, request: bytes) -> bytes,
                             max_request_size=1 << 20)
    await host.request(peer, protocol, data, timeout) -> bytes
        # an unconnected peer is dialed on demand (address book, DHT lookup, relays)
        # raises RequestError: NotConnected (unreachable), RequestTimeout,
        # RequestTooLarge, NoHandler, RateLimited, RemoteError, PeerDisconnected
    host.peer_record(peer) -> PeerRecord | None    # its freshest signed record we hold
    await host.find_peer(peer) -> (PeerRecord | None, rounds)   # a DHT lookup
    host.reach.reachability                # "public" / "private" (AutoNAT) / "unknown"

    await host.aclose()                    # or cancel the nursery: closes everything

Topics are ``/aipg/1/<name>``; protocols are short names (``sync``, ``blob``, ``job``).
Messages are signed by their author (StrictSign) and identified by the sha256 of their
canonical encoding; only messages ACCEPTed by the topic validator (or of a topic with no
validator) are delivered and forwarded. A :class:`Delivered` carries ``topic``,
``data``, ``author`` (the signer's peer ID), ``forwarder`` (the peer it came from),
``message_id`` and the ``message`` record. A node's own messages are not delivered to
its own subscriptions.

Layout: ``noise`` (the XX handshake, sans I/O) → ``secure`` (the session over frames)
→ ``transport`` (websockets, memory) → ``host`` (connection lifecycle: dialing,
accepting, admission, identify, trimming) with ``connection`` (one connection's reader,
writer and pinger), ``rpcbatch`` (merging queued RPCs into frames) and ``reqresp``
(request/response) → ``router`` (GossipSub: subscriptions, publish, the message path,
the heartbeat) with ``mesh`` (mesh and fanout upkeep, GRAFT/PRUNE), ``ihave``
(IHAVE/IWANT gossip and promises), ``pubsub`` (the types they share), ``score``
(P1-P7) and ``cache`` (seen-cache, mcache). Reaching unconnected peers is ``reach``
(dial on demand, AutoNAT, relay reservations) with ``addrbook`` (signed peer records,
persisted), ``dht`` (Kademlia peer routing) and ``relay`` (circuit relay v2 on the
connections). Wire records (tags 100-199) are in ``messages``, ``dht``, ``relay`` and
``reach``; every limit and weight is in ``config``.
"""

from .config import (
    TOPIC_PREFIX,
    GossipConfig,
    GossipSubParams,
    PeerScoreParams,
    PeerScoreThresholds,
    TopicScoreParams,
)
from .errors import (
    ConnectionClosed,
    ConnectionRefused,
    GossipError,
    HandshakeError,
    NoHandler,
    NotConnected,
    PeerDisconnected,
    PeerIdMismatch,
    RateLimited,
    RemoteError,
    RequestError,
    RequestTimeout,
    RequestTooLarge,
    TransportError,
)
from .host import GossipHost, RequestHandler
from .messages import PubsubMessage
from .pubsub import Delivered, MessageId, ValidationResult, message_id
from .ratelimit import TokenBucket
from .router import Subscription
from .transport import MemoryNetwork, MemoryTransport, Transport, WebsocketTransport


def topic(name: str) -> str:
    """The full topic string for ``name``: ``topic("jobs") == "/aipg/1/jobs"``."""
    return TOPIC_PREFIX + name


__all__ = [
    "TOPIC_PREFIX",
    "ConnectionClosed",
    "ConnectionRefused",
    "Delivered",
    "GossipConfig",
    "GossipError",
    "GossipHost",
    "GossipSubParams",
    "HandshakeError",
    "MemoryNetwork",
    "MemoryTransport",
    "MessageId",
    "NoHandler",
    "NotConnected",
    "PeerDisconnected",
    "PeerIdMismatch",
    "PeerScoreParams",
    "PeerScoreThresholds",
    "PubsubMessage",
    "RateLimited",
    "RemoteError",
    "RequestError",
    "RequestHandler",
    "RequestTimeout",
    "RequestTooLarge",
    "Subscription",
    "TokenBucket",
    "TopicScoreParams",
    "Transport",
    "TransportError",
    "ValidationResult",
    "WebsocketTransport",
    "message_id",
    "topic",
]
