"""Pubsub's vocabulary: message ids, validation results, deliveries, and the router's records.

The application sees :data:`MessageId`, :func:`message_id`, :class:`ValidationResult`
(what a topic :data:`Validator` returns) and :class:`Delivered` (what a subscription
yields). :class:`PeerState`, :class:`Outgoing` and :class:`RouterStats` are the router's
own bookkeeping, shared by its parts (:mod:`.router`, :mod:`.mesh`, :mod:`.ihave`).
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Awaitable, Callable

from aipg.wire import PeerId, encode, sha256

from .cache import RecentIds
from .messages import ControlGraft, ControlIHave, ControlPrune, PubsubMessage

MessageId = bytes


class ValidationResult(enum.Enum):
    ACCEPT = "accept"
    REJECT = "reject"  # invalid: penalise the sender, never forward
    IGNORE = "ignore"  # not useful (stale, duplicate by content): drop quietly


Validator = Callable[[PeerId, PubsubMessage], Awaitable[ValidationResult]]


@dataclasses.dataclass(frozen=True)
class Delivered:
    """A validated message, as handed to a subscription."""

    topic: str
    data: bytes
    author: PeerId
    forwarder: PeerId | None  # None for our own messages
    message_id: MessageId
    message: PubsubMessage


def message_id(msg: PubsubMessage) -> MessageId:
    """Message ID = sha256 of the canonical encoding (author, seqno and signature included)."""
    return sha256(encode(msg))


@dataclasses.dataclass
class PeerState:
    outbound: bool
    topics: set[str] = dataclasses.field(default_factory=set)
    has: RecentIds = dataclasses.field(default_factory=RecentIds)
    ihaves_this_beat: int = 0
    ids_asked_this_beat: int = 0
    iwant_served_this_beat: int = 0


@dataclasses.dataclass
class Outgoing:
    """Control traffic collected during a heartbeat, sent as one RPC per peer."""

    graft: list[ControlGraft] = dataclasses.field(default_factory=list)
    prune: list[ControlPrune] = dataclasses.field(default_factory=list)
    ihave: list[ControlIHave] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class RouterStats:
    published: int = 0
    delivered: int = 0
    duplicates: int = 0
    rejected: int = 0
    ignored: int = 0
    graylisted_rpcs: int = 0
    iwant_served: int = 0
