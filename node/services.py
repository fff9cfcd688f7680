"""Wiring: the node's services, its topic validators and its protocol handlers.

``start_services`` reads like the node's table of contents::

    work tracker  ->  model catalog  ->  chain service (store, consensus, sync)
      ->  models (store, blob, announcements)  ->  gateway  ->  worker  ->  verifier
      ->  gossip handlers  ->  HTTP API

Topic validators run the cheap checks of :mod:`aipg.pouw` and :mod:`aipg.stake` on every
message before gossip forwards it (REJECT costs the forwarder score, IGNORE drops
quietly); the consumers then act on what was accepted.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import trio

from aipg.gossip import PubsubMessage, ValidationResult
from aipg.models import ModelError, check_announcement
from aipg.pouw import Assignment, Claim, Job, LatentRequest, PouwError, Verdict, validate_job
from aipg.stake.block import FinalizedBlock, ProposalMessage, Vote
from aipg.stake.chain import Chain
from aipg.stake.signrecord import SqliteSignRecord
from aipg.stake.tx import Transaction
from aipg.stake.types import LedgerError
from aipg.wire import PeerId, WireError, decode, encode, is_signed_by_signer

from .catalog import ModelCatalog
from .chain import ChainService
from .gateway import GatewayService
from .messages import PROTO_BLOB, PROTO_JOB, PROTO_SYNC, JobAck, WorkerStatus, WorkReport, topic
from .models_service import ModelService
from .verifier import VerifierService
from .work import WorkTracker
from .worker import WorkerService

if TYPE_CHECKING:
    from .runtime import Node

log = logging.getLogger("aipg.node")

ACCEPT, REJECT, IGNORE = ValidationResult.ACCEPT, ValidationResult.REJECT, ValidationResult.IGNORE


async def start_services(node: Node, nursery: trio.Nursery) -> None:
    """Build and start every service of ``node`` in ``nursery``, in dependency order:
    chain -> models -> gateway -> worker (reports to the gateway) -> verifier -> gossip
    handlers -> HTTP API."""
    node.tracker = WorkTracker(_LazyChainView(node))
    node.catalog = ModelCatalog(node.config.threads)
    node.chain = ChainService(
        open_chain(node),
        node.host,
        node.identity if node.config.validator else None,
        SqliteSignRecord(node.data_dir.root / "signrecord.sqlite"),
        node.tracker,
        node.now_ms,
        double_sign=node.faults.double_sign,
    )
    await nursery.start(node.chain.run)
    node.models = ModelService(node.identity, node.host, node.catalog, node.data_dir.blobs_dir)
    await nursery.start(node.models.run, node.config.host_model)
    node.send_job = lambda key, data, timeout: send_job_message(node, key, data, timeout)
    node.gateway = GatewayService(node, node.host, node.catalog)
    await nursery.start(node.gateway.run)
    if node.config.worker:
        node.worker = WorkerService(
            node.identity,
            node.host,
            node.catalog,
            node.now_ms,
            node.send_job,
            lambda status: node.gateway.on_worker_status(status),
            cheat_tokens=node.faults.cheat_tokens,
            swap_weights=node.faults.swap_weights,
        )
        await nursery.start(node.worker.run)
    if node.config.validator:
        node.verifier = VerifierService(
            node.identity,
            node.host,
            node.catalog,
            node.tracker,
            random_votes=node.faults.random_votes,
        )
        await nursery.start(node.verifier.run)
    register_gossip(node, nursery)
    if node.config.api:
        await start_api(node, nursery)


def open_chain(node: Node) -> Chain:
    """The node's chain store (created from genesis on first start)."""
    chain = Chain.open(node.data_dir.chain_file, node.genesis)
    log.info("chain store at height %d", chain.height)
    return chain


class _LazyChainView:
    """The tracker's view of the chain, resolved when used (the chain starts after it)."""

    def __init__(self, node: Node):
        self.node = node

    @property
    def committee_size(self) -> int:
        return self.node.chain.committee_size

    def validator_snapshot_at(self, height: int):
        return self.node.chain.validator_snapshot_at(height)

    def finalized_hash(self, height: int):
        return self.node.chain.finalized_hash(height)


# --------------------------------------------------------------------------- gossip


def _validator(
    decode_and_check: Callable[[bytes], object],
) -> Callable[[PeerId, PubsubMessage], Awaitable[ValidationResult]]:
    async def validate(_forwarder: PeerId, msg: PubsubMessage) -> ValidationResult:
        try:
            decode_and_check(msg.data)
        except (WireError, PouwError, LedgerError) as e:
            log.debug("rejected a message on %s: %s", msg.topic, e)
            return REJECT
        except _Stale:
            return IGNORE
        return ACCEPT

    return validate


class _Stale(Exception):
    """A well-formed message that is of no use now (it is dropped, not punished)."""


def register_gossip(node: Node, nursery: trio.Nursery) -> None:
    host = node.host
    chain_id = node.genesis.chain_id

    def check_consensus(data: bytes) -> None:
        msg = decode(data, (ProposalMessage, Vote, FinalizedBlock))
        if isinstance(msg, FinalizedBlock):  # its commit is verified before it is used
            if msg.block.header.chain_id != chain_id:
                raise WireError("finalized block of another chain")
            return
        signed = msg.proposal if isinstance(msg, ProposalMessage) else msg
        if signed.chain_id != chain_id:
            raise WireError("consensus message of another chain")
        if not is_signed_by_signer(signed):
            raise WireError("bad signature on a consensus message")

    def check_tx(data: bytes) -> None:
        tx = decode(data, Transaction)
        if tx.chain_id != chain_id:
            raise WireError("transaction of another chain")

    def check_job(data: bytes) -> None:
        validate_job(decode(data, Job))

    def check_report(data: bytes) -> None:
        node.tracker.check_report(decode(data, WorkReport))

    def check_verdict(data: bytes) -> None:
        v = decode(data, Verdict)
        if not is_signed_by_signer(v):
            raise WireError("bad signature on a verdict")

    def check_worker_status(data: bytes) -> None:
        status = decode(data, WorkerStatus)
        if not is_signed_by_signer(status):
            raise WireError("bad signature on a worker status")

    def check_model(data: bytes) -> None:
        try:
            check_announcement(data)
        except ModelError as e:
            raise WireError(str(e)) from None

    checks = {
        "consensus": check_consensus,
        "txs": check_tx,
        "jobs": check_job,
        "receipts": check_report,
        "verdicts": check_verdict,
        "models": check_model,
        "workers": check_worker_status,
    }
    consumers = {
        "consensus": node.chain.on_consensus_data,
        "txs": lambda d: _sync(node.chain.on_tx, decode(d, Transaction)),
        "jobs": lambda d: node.on_local_job(decode(d, Job)),
        "receipts": lambda d: on_report(node, decode(d, WorkReport)),
        "verdicts": lambda d: _sync(on_verdict, node, decode(d, Verdict)),
        "models": None,
        "workers": lambda d: node.gateway.on_worker_status(decode(d, WorkerStatus)),
    }
    for name, check in checks.items():
        host.set_topic_validator(topic(name), _validator(check), timeout=5.0)
        if consumers[name] is not None:
            nursery.start_soon(_consume, node, name, consumers[name])
    nursery.start_soon(_consume_announcements, node)
    node.waiting_reports = []
    nursery.start_soon(retry_waiting_reports, node)
    host.set_request_handler(
        PROTO_JOB, lambda peer, data: on_job_request(node, peer, data), max_request_size=1 << 20
    )
    host.set_request_handler(PROTO_SYNC, node.chain.serve_sync, max_request_size=1024)
    host.set_request_handler(PROTO_BLOB, node.models.serve_blob, max_request_size=1024)


async def _sync(fn, *args) -> None:
    fn(*args)


async def _consume(node: Node, name: str, handle) -> None:
    with node.host.subscribe(topic(name)) as sub:
        async for delivered in sub:
            try:
                await handle(delivered.data)
            except (WireError, PouwError, LedgerError) as e:
                log.info("dropped a message on %s: %s", name, e)


# Reports whose committee seed block is not final here yet, retried on each new block.
MAX_WAITING_REPORTS = 1024


async def _consume_announcements(node: Node) -> None:
    with node.host.subscribe(topic("models")) as sub:
        async for delivered in sub:
            try:
                node.models.on_announcement(check_announcement(delivered.data), delivered.author)
            except (WireError, ModelError) as e:
                log.info("dropped a model announcement: %s", e)


async def on_report(node: Node, report: WorkReport) -> None:
    try:
        tracked, new = node.tracker.add_report(report)
    except PouwError as e:
        if len(node.waiting_reports) < MAX_WAITING_REPORTS:
            node.waiting_reports.append(report)
        log.debug("report waits for the chain: %s", e)
        return
    if new and node.verifier is not None:
        node.verifier.consider(tracked)


async def retry_waiting_reports(node: Node) -> None:
    """After each new block: track the reports whose seed block is now final."""
    while True:
        await node.chain.new_block.wait()
        waiting, node.waiting_reports = node.waiting_reports, []
        for report in waiting:
            await on_report(node, report)


def on_verdict(node: Node, verdict: Verdict) -> None:
    try:
        node.tracker.add_verdict(verdict)
    except PouwError as e:
        log.info("dropped a verdict: %s", e)


async def send_job_message(node: Node, to_key: bytes, data: bytes, timeout: float) -> bytes:
    """Send a ``job`` protocol message to the node with key ``to_key``; a message to
    ourselves (our worker claiming our own gateway's job) is handled in process."""
    if to_key == node.identity.public_bytes:
        return await on_job_request(node, node.identity.peer_id, data)
    return await node.host.request(PeerId.from_public_key(to_key), PROTO_JOB, data, timeout=timeout)


async def on_job_request(node: Node, peer: PeerId, data: bytes) -> bytes:
    """The ``job`` protocol: claims and results (gateway), assignments and latent
    requests (worker). Answers JobAck (or the LatentReply asked for)."""
    try:
        msg = decode(data, (Claim, Assignment, WorkReport, LatentRequest))
        if isinstance(msg, Claim):
            node.gateway.on_claim(msg)
            return encode(JobAck(True))
        if isinstance(msg, WorkReport):
            node.gateway.on_report(msg)
            await on_report(node, msg)
            return encode(JobAck(True))
        if node.worker is None:
            return encode(JobAck(False, "this node runs no jobs"))
        if isinstance(msg, Assignment):
            return encode(await node.worker.on_assignment(msg))
        return encode(node.worker.on_latent_request(msg))
    except (WireError, PouwError) as e:
        log.info("job request from %s refused: %s", peer.short(), e)
        return encode(JobAck(False, str(e)[:200]))


# ------------------------------------------------------------------------------ API


async def start_api(node: Node, nursery: trio.Nursery) -> None:
    from .api import build_app, serve_api

    host, _, port = node.config.api.rpartition(":")
    app = build_app(node.gateway, free_tier_per_minute=node.config.free_tier_per_minute)
    from .chain_api import add_chain_routes

    add_chain_routes(app, node)
    bound = await nursery.start(serve_api, app, host, int(port))
    node.api_url = bound.url
    log.info("HTTP API on %s", node.api_url)
