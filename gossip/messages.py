"""Wire records of the gossip layer (tags 100-199).

Every decrypted message on a connection is exactly one of :data:`FRAME_TYPES`.
Pubsub RPCs follow GossipSub v1.1's protobufs field for field, as canonical records.
"""

from __future__ import annotations

from typing import Annotated

from aipg.wire import (
    NO_SIGNATURE,
    NO_SIGNER,
    U8,
    U32,
    U64,
    Hash32,
    MaxLen,
    PeerIdBytes,
    PublicKeyBytes,
    Record,
    SignatureBytes,
    record,
)

MAX_TOPIC_LEN = 256
MAX_PROTOCOL_LEN = 64
MAX_ADDR_LEN = 256
# Pubsub payloads; the node keeps its messages (blocks, receipts) well under this.
MAX_PUBSUB_DATA = 1 << 20
MAX_RPC_MESSAGES = 256
MAX_RPC_SIZE = 4 << 20
MAX_MESSAGE_IDS = 5000
# Request/response payloads (a blob chunk or a batch of blocks fits).
MAX_REQUEST_DATA = 4 << 20

Topic = Annotated[str, MaxLen(MAX_TOPIC_LEN)]
AddrText = Annotated[str, MaxLen(MAX_ADDR_LEN)]
MessageIds = Annotated[tuple[Hash32, ...], MaxLen(MAX_MESSAGE_IDS)]


@record(tag=100)
class Identify(Record):
    """What a peer tells about itself right after the handshake."""

    protocol_version: Annotated[str, MaxLen(64)]
    agent_version: Annotated[str, MaxLen(128)]
    listen_addrs: Annotated[tuple[AddrText, ...], MaxLen(16)]
    observed_addr: AddrText
    protocols: Annotated[tuple[Annotated[str, MaxLen(MAX_PROTOCOL_LEN)], ...], MaxLen(64)]


@record(tag=101)
class Ping(Record):
    nonce: U64


@record(tag=102)
class Pong(Record):
    nonce: U64


@record(tag=103)
class Goodbye(Record):
    """Sent before a deliberate close, so the other side knows why (and does not redial)."""

    reason: Annotated[str, MaxLen(128)]


@record(tag=110, max_size=MAX_PUBSUB_DATA + 4096)
class PubsubMessage(Record):
    """One published message, signed by its author (StrictSign)."""

    topic: Topic
    data: Annotated[bytes, MaxLen(MAX_PUBSUB_DATA)]
    seqno: U64
    signer: PublicKeyBytes = NO_SIGNER
    signature: SignatureBytes = NO_SIGNATURE


@record(tag=111)
class SubOpts(Record):
    subscribe: bool
    topic: Topic


@record(tag=112)
class ControlIHave(Record):
    topic: Topic
    message_ids: MessageIds


@record(tag=113)
class ControlIWant(Record):
    message_ids: MessageIds


@record(tag=114)
class ControlGraft(Record):
    topic: Topic


@record(tag=115)
class PeerInfo(Record):
    """A peer exchange entry: who, and where to dial it."""

    peer_id: PeerIdBytes
    addrs: Annotated[tuple[AddrText, ...], MaxLen(8)]


@record(tag=116)
class ControlPrune(Record):
    topic: Topic
    peers: Annotated[tuple[PeerInfo, ...], MaxLen(32)]
    backoff: U32  # seconds


@record(tag=117, max_size=MAX_RPC_SIZE)
class ControlMessage(Record):
    ihave: Annotated[tuple[ControlIHave, ...], MaxLen(64)]
    iwant: Annotated[tuple[ControlIWant, ...], MaxLen(64)]
    graft: Annotated[tuple[ControlGraft, ...], MaxLen(256)]
    prune: Annotated[tuple[ControlPrune, ...], MaxLen(256)]


# A PubsubMessage travels inside an RPC as its canonical bytes: the message id is the
# sha256 of exactly these bytes, so a duplicate is recognised without decoding it, and a
# forwarded message is never re-encoded.
EncodedMessage = Annotated[bytes, MaxLen(MAX_PUBSUB_DATA + 4096)]


@record(tag=118, max_size=MAX_RPC_SIZE)
class Rpc(Record):
    subscriptions: Annotated[tuple[SubOpts, ...], MaxLen(256)]
    messages: Annotated[tuple[EncodedMessage, ...], MaxLen(MAX_RPC_MESSAGES)]
    control: ControlMessage | None


@record(tag=120, max_size=MAX_REQUEST_DATA + 1024)
class Request(Record):
    request_id: U64
    protocol: Annotated[str, MaxLen(MAX_PROTOCOL_LEN)]
    data: Annotated[bytes, MaxLen(MAX_REQUEST_DATA)]


@record(tag=121, max_size=MAX_REQUEST_DATA + 1024)
class Response(Record):
    request_id: U64
    status: U8
    data: Annotated[bytes, MaxLen(MAX_REQUEST_DATA)]


# Circuit relay frames (gossip/relay.py). A circuit id is odd when the dialer of the
# connection it runs on allocated it, even otherwise, so both ends can open circuits.
MAX_CIRCUIT_DATA = 65536 + 64  # one Noise transport message of the relayed channel


@record(tag=122)
class CircuitOpen(Record):
    """``hop``: ask a relay to connect us to ``peer``; else the relay tells its reserved
    client that ``peer`` wants a circuit."""

    circuit: U32
    peer: PeerIdBytes
    hop: bool


@record(tag=123, max_size=MAX_CIRCUIT_DATA + 64)
class CircuitData(Record):
    circuit: U32
    data: Annotated[bytes, MaxLen(MAX_CIRCUIT_DATA)]


@record(tag=124)
class CircuitClose(Record):
    circuit: U32
    reason: Annotated[str, MaxLen(128)]


CIRCUIT_TYPES = (CircuitOpen, CircuitData, CircuitClose)
FRAME_TYPES = (Identify, Ping, Pong, Goodbye, Rpc, Request, Response, *CIRCUIT_TYPES)
