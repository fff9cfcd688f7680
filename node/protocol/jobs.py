"""The ``job`` request/response protocol: how gateways, workers and validators talk
about one job.

=====================  =============  ========================================
request                 served by      answer
=====================  =============  ========================================
``Claim``               gateway        ``JobAck``
``WorkReport``          gateway        ``JobAck`` (then tracked like gossip's)
``TokenChunk``          gateway        ``JobAck`` (D50: tokens while generating)
``JobRefusal``          gateway        ``JobAck`` (D52: the worker cannot run it)
``ForcedResult``        gateway        ``JobAck`` (D75: a forced job's receipt)
``EarlyResult``         gateway        ``JobAck`` (D94: the output before the receipt)
``Assignment``          worker         ``JobAck`` or ``JobRefusal``
``LatentRequest``       worker         ``LatentReply``
=====================  =============  ========================================

The gateway's handlers that take the sending peer (``on_tokens``, ``on_refusal``) check
it is the assignee the transport authenticated; a refusal is unsigned, a chunk is signed
by the worker too (D85: a chunk its receipt contradicts is evidence).

A message to this node itself (its worker claiming its own gateway's job) is handled in
process, never sent over the network. A request this node cannot serve is answered with
a refusing ``JobAck`` saying why; it never raises to the peer.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

from aipg.gossip import GossipHost
from aipg.pouw import Assignment, Claim, LatentReply, LatentRequest, PouwError
from aipg.wire import Identity, PeerId, WireError, decode, encode

from .messages import (
    PROTO_JOB,
    EarlyResult,
    ForcedResult,
    JobAck,
    JobRefusal,
    TokenChunk,
    WorkReport,
)

log = logging.getLogger("aipg.node.jobs")

MAX_JOB_REQUEST = 1 << 20  # claims, assignments, latent requests and work reports

# A TokenChunk's encoding starts with these bytes (its array header and type tag).
_CHUNK_PREFIX = encode(TokenChunk(bytes(32), bytes(32), 0, ()))[:4]


def job_priority(data: bytes) -> int:
    """Streamed chunks are low priority on ``job``: results, claims and assignments
    always find the sender's request budget (gossip's reqresp keeps a reserve for them)."""
    return 1 if data.startswith(_CHUNK_PREFIX) else 0


SendJob = Callable[[bytes, bytes, float], Awaitable[bytes]]
"""``send_job(to_key, data, timeout) -> answer``: a ``job`` message to the node with
public key ``to_key``. Raises GossipError when it cannot be delivered."""


class GatewayEnd(Protocol):
    """What a gateway serves on ``job``."""

    def on_claim(self, claim: Claim) -> None: ...

    def on_report(self, report: WorkReport) -> None: ...

    def on_forced_result(self, forced: ForcedResult) -> None: ...

    def on_early_result(self, peer: PeerId, early: EarlyResult) -> None: ...

    def on_tokens(self, peer: PeerId, chunk: TokenChunk) -> None: ...

    def on_refusal(self, peer: PeerId, refusal: JobRefusal) -> None: ...


class WorkerEnd(Protocol):
    """What a worker serves on ``job``."""

    async def on_assignment(self, assignment: Assignment) -> JobAck | JobRefusal: ...

    def on_latent_request(self, request: LatentRequest) -> LatentReply: ...


class JobProtocol:
    """Sends and serves ``job`` messages for one node.

    Build it first (the services need :meth:`send`), then :meth:`serve` once the
    gateway, the worker (None on a node that runs no jobs) and the report intake exist.
    """

    def __init__(self, host: GossipHost, identity: Identity):
        self.host = host
        self.identity = identity
        self._gateway: GatewayEnd | None = None
        self._worker: WorkerEnd | None = None
        self._on_report: Callable[[WorkReport], Awaitable[None]] | None = None

    def serve(
        self,
        gateway: GatewayEnd,
        worker: WorkerEnd | None,
        on_report: Callable[[WorkReport], Awaitable[None]],
    ) -> None:
        """Register the handlers and start answering ``job`` requests."""
        self._gateway, self._worker, self._on_report = gateway, worker, on_report
        self.host.set_request_handler(
            PROTO_JOB, self.handle, max_request_size=MAX_JOB_REQUEST, priority=job_priority
        )

    async def send(self, to_key: bytes, data: bytes, timeout: float) -> bytes:
        if to_key == self.identity.public_bytes:
            return await self.handle(self.identity.peer_id, data)
        return await self.host.request(
            PeerId.from_public_key(to_key), PROTO_JOB, data, timeout=timeout
        )

    async def handle(self, peer: PeerId, data: bytes) -> bytes:
        """Answer one ``job`` request from ``peer``."""
        kinds = (
            Claim,
            Assignment,
            WorkReport,
            LatentRequest,
            TokenChunk,
            JobRefusal,
            ForcedResult,
            EarlyResult,
        )
        try:
            return encode(await self._answer(peer, decode(data, kinds)))
        except (WireError, PouwError) as e:
            log.info("job request from %s refused: %s", peer.short(), e)
            return encode(JobAck(False, str(e)[:200]))

    async def _answer(self, peer: PeerId, msg) -> JobAck | JobRefusal | LatentReply:
        if self._gateway is None or self._on_report is None:
            return JobAck(False, "this node is starting")
        if isinstance(msg, TokenChunk):
            self._gateway.on_tokens(peer, msg)
            return JobAck(True)
        if isinstance(msg, JobRefusal):
            self._gateway.on_refusal(peer, msg)
            return JobAck(True)
        if isinstance(msg, EarlyResult):  # the output before its receipt (D94)
            self._gateway.on_early_result(peer, msg)
            return JobAck(True)
        if isinstance(msg, Claim):
            self._gateway.on_claim(msg)
            return JobAck(True)
        if isinstance(msg, WorkReport):
            self._gateway.on_report(msg)
            await self._on_report(msg)
            return JobAck(True)
        if isinstance(msg, ForcedResult):  # the client gets the true output (D75)
            self._gateway.on_forced_result(msg)
            await self._on_report(msg.report)
            return JobAck(True)
        if self._worker is None:
            return JobAck(False, "this node runs no jobs")
        if isinstance(msg, Assignment):
            return await self._worker.on_assignment(msg)
        return self._worker.on_latent_request(msg)
