"""The running node: the composition root, the one place that knows every service.

:meth:`Node.run` builds each service with the narrow interfaces it needs and starts it
with ``await nursery.start(...)``, so a service is ready (listening, subscribed) before
the next one uses it::

    gossip host  ->  chain (store, consensus, mempool, sync)  ->  models (store, blob
      protocol, announcements, fetches)  ->  gateway  ->  worker  ->  verifier
      ->  work intake  ->  job / sync / blob protocols  ->  topic consumers  ->  HTTP API
      ->  run file (addresses, for devnets and scripts)

SIGINT / SIGTERM cancel the nursery: in-flight jobs are abandoned (their gateways
reassign them after the deadline), connections close, the chain store closes after
its last committed block. Nothing accepted is lost: blocks commit atomically, and a
validator records each vote durably before it sends it.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import trio

from aipg.gossip import (
    Delivered,
    GossipConfig,
    GossipHost,
    Transport,
    TransportError,
    WebsocketTransport,
)
from aipg.models import ModelAnnouncement, ModelError, check_announcement, model_id_text
from aipg.pouw import Job, PouwError, StreamEvidence, Verdict, VerdictCommit
from aipg.pouw.forced import ForcedError
from aipg.stake.block import Block
from aipg.stake.chain import Chain
from aipg.stake.challenge import ChallengeAnswer, WithholdingChallenge
from aipg.stake.forced import UNREVEALED
from aipg.stake.genesis import Genesis
from aipg.stake.signrecord import SqliteSignRecord
from aipg.stake.state import State
from aipg.stake.tx import Transaction
from aipg.stake.types import LedgerError
from aipg.wire import Identity, Multiaddr, PeerId, WireError, decode, encode, format_amount

from .apikeys import ApiKeyStore
from .config import NodeConfig
from .datadir import DataDir
from .metrics import Metric
from .netstate import LISTEN_FILE, PEERS_FILE, save_listen, sticky_listen
from .protocol.gossip import topic_checks, topic_validator
from .protocol.jobs import JobProtocol
from .protocol.messages import PROTO_BLOB, PROTO_SYNC, WorkerStatus, WorkReport, topic
from .services.catalog import ModelCatalog
from .services.chain import ChainService, FinalizedChain
from .services.costs import ModelCosts
from .services.faults import Faults
from .services.forced import ForcedErrors, OwedReveals
from .services.gateway import GatewayService
from .services.latents import DiskLatentStore
from .services.models import ModelService
from .services.reputation import ReputationStore
from .services.verifier import VerifierService
from .services.work import WorkIntake, WorkTracker
from .services.worker import WorkerService

log = logging.getLogger("aipg.node")

Consumer = Callable[[Delivered], Awaitable[None]]
TOPIC_VALIDATION_TIMEOUT_S = 5.0
MAX_SYNC_REQUEST = 1024  # a height range
MAX_BLOB_REQUEST = 1024  # a blob id and a chunk index
# The capacity a worker declares when it registers for a model (work units a block): the
# chain believes it only up to twice what it saw the worker deliver (D58).
DECLARED_CAPACITY = 1_000_000


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class Node:
    """One node. Build it, then ``await nursery.start(node.run)``.

    ``transport`` carries the gossip host's connections: websockets by default, a
    :class:`aipg.gossip.MemoryTransport` for in-process tests.
    """

    data_dir: DataDir
    config: NodeConfig
    genesis: Genesis
    faults: Faults = field(default_factory=Faults)
    transport: Transport = field(default_factory=WebsocketTransport)
    identity: Identity = field(init=False)

    def __post_init__(self) -> None:
        self.identity = self.data_dir.load_identity()
        self.api_url = ""
        self.started = trio.Event()
        # Built by run(), in start order; a worker and a verifier only when configured.
        self.host: GossipHost
        self.chain: ChainService
        self.tracker: WorkTracker
        self.catalog: ModelCatalog
        self.models: ModelService
        self.gateway: GatewayService
        self.worker: WorkerService | None = None
        self.verifier: VerifierService | None = None
        self.intake: WorkIntake

    def gossip_config(self, *, sticky: bool = True) -> GossipConfig:
        listen = [Multiaddr.parse(a) for a in self.config.listen]
        if sticky:  # the ports of the last run (node/netstate.py)
            listen = sticky_listen(listen, self.data_dir.root / LISTEN_FILE)
        return GossipConfig(
            listen=listen,
            bootstrap=[Multiaddr.parse(a) for a in self.config.bootstrap],
            max_peers=self.config.max_peers,
            high_water=max(2, min(48, self.config.max_peers - 2)),
            low_water=max(1, min(32, self.config.max_peers // 2)),
            peers_file=self.data_dir.root / PEERS_FILE,
            relay_reservations=self.config.relays,
            relay_fault=self.faults.relay or None,
        )

    async def _start_host(self, nursery: trio.Nursery) -> None:
        """Start the gossip host on last run's ports, or the configured ones if taken."""
        self.host = GossipHost(self.identity, self.gossip_config(), transport=self.transport)
        try:
            await nursery.start(self.host.run)
        except* (TransportError, OSError) as group:
            log.warning(
                "could not listen where we did last time (%s); on the configured addresses",
                group.exceptions[0],
            )
            self.host = GossipHost(
                self.identity, self.gossip_config(sticky=False), transport=self.transport
            )
            await nursery.start(self.host.run)
        save_listen(self.host.listen_addrs, self.data_dir.root / LISTEN_FILE)

    @staticmethod
    def now_ms() -> int:
        return now_ms()

    # -- start ------------------------------------------------------------------------

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Run every service until cancelled; ``started()`` once the node serves."""
        log.info("node %s starting (chain %s)", self.identity.peer_id, self.genesis.chain_id)
        async with trio.open_nursery() as nursery:
            self._roles_nursery = nursery
            await self._start_host(nursery)
            await self._start_chain(nursery)
            await self._start_models(nursery)
            jobs = JobProtocol(self.host, self.identity)
            await self._start_roles(nursery, jobs)
            self._serve_protocols(jobs)
            await self._start_consumers(nursery)
            if self.config.api:
                await self._start_api(nursery)
            self.write_run_file()
            log.info("node ready: %s", ", ".join(str(a) for a in self.host.listen_addrs))
            self.started.set()
            task_status.started()

    async def _start_chain(self, nursery: trio.Nursery) -> None:
        chain = Chain.open(self.data_dir.chain_file, self.genesis)
        log.info("chain store at height %d", chain.height)
        self.tracker = WorkTracker(FinalizedChain(chain))
        self.chain = ChainService(
            chain,
            self.host,
            self.identity if self.config.validator else None,
            SqliteSignRecord(self.data_dir.sign_record_file),
            self.tracker,
            now_ms,
            double_sign=self.faults.double_sign,
            overlay=not self.faults.no_overlay,
        )
        await nursery.start(self.chain.run)

    async def _start_models(self, nursery: trio.Nursery) -> None:
        self.catalog = ModelCatalog(self.config.threads)
        self.models = ModelService(self.identity, self.host, self.catalog, self.data_dir.blobs_dir)
        await nursery.start(self.models.run, self.config.host_model)

    async def _start_roles(self, nursery: trio.Nursery, jobs: JobProtocol) -> None:
        """Gateway, then worker (it reports to the gateway), verifier and work intake."""
        reputation = ReputationStore(self.data_dir.reputation_file)
        nursery.start_soon(_close_when_cancelled, reputation)
        self.gateway = GatewayService(
            self.identity,
            self.host,
            self.catalog,
            self.chain,
            self.tracker,
            ApiKeyStore(self.data_dir),
            jobs.send,
            self._local_job,
            now_ms,
            reputation=reputation.reputation(),
            paid_route=self.config.paid_route,
        )
        await nursery.start(self.gateway.run)
        if self.config.worker:
            self.worker = WorkerService(
                self.identity,
                self.host,
                self.catalog,
                DiskLatentStore(self.data_dir.latents_dir),
                now_ms,
                jobs.send,
                self.gateway.on_worker_status,
                cheat_tokens=self.faults.cheat_tokens,
                swap_weights=self.faults.swap_weights,
                double_receipt=self.faults.double_receipt,
                withhold_latents=self.faults.withhold_latents,
                on_answer=self._answer_challenge,
                misstream=self.faults.misstream,
                junk_stream=self.faults.junk_stream,
                refuse_jobs=self.faults.refuse_jobs,
                forced=ForcedErrors(
                    self.identity,
                    self.tracker.chain,
                    self._counted_votes,
                    self._offer_forced,
                    lambda report: self.intake.on_report(report),  # set up below
                    skip=self.faults.skip_forced,
                    never_sign=self.faults.never_sign,
                ),
                workers_heard=self.gateway.workers_heard,
            )
            await nursery.start(self.worker.run)
            too_old = self.genesis.params.escrow_period  # no block certifies older work
            worker = self.worker
            self.chain.on_block.append(lambda block: worker.on_block(block, too_old))
            nursery.start_soon(self._register_hosted)
        if self.config.validator:
            self.verifier = VerifierService(
                self.identity,
                self.host,
                self.catalog,
                self.tracker,
                random_votes=self.faults.random_votes,
                flip_verdicts=self.faults.flip_verdicts,
                accuse=self.faults.accuse,
                copy_verdicts=self.faults.copy_verdicts,
                lazy_votes=self.faults.lazy_votes,
                wait_for_block=self.chain.wait_for_block,
            )
            await nursery.start(self.verifier.run)
            # D95: our reveal on a forced receipt is owed; carry it if its worker did not
            me = self.identity.public_bytes
            self.owed_reveals = OwedReveals(
                self.identity,
                lambda rid: UNREVEALED + rid + me in self.chain.state.punished,
                self._counted_votes,
                self._offer_forced,
            )
            self.chain.on_block.append(self.owed_reveals.on_block)
        self.intake = WorkIntake(self.tracker, self.verifier, self.chain.wait_for_block)
        await nursery.start(self.intake.run)
        self.chain.on_block.append(self._open_reviews)
        self.costs = ModelCosts(self.identity, self.catalog, self.chain, self.chain.mempool.sign)
        self.chain.mempool.extra_check = self.costs.check
        self.chain.on_block.append(lambda _block: self.costs.refresh())
        nursery.start_soon(self._register_costs)

    async def _register_costs(self) -> None:
        """Register the hosted models' costs, and again after each block while one
        has none on chain (a model published later, or a refused registration)."""
        while True:
            if any(m.id not in self.chain.state.models for m in self.catalog.hosted()):
                await self.costs.register_hosted()
            await self.chain.wait_for_block()

    async def _register_hosted(self) -> None:
        """Once bonded for it, register this worker on chain for each model it hosts, so
        that gateways' draws can pick it for pool-earning jobs (D58); retried each block
        until a block carries the registration."""
        me = self.identity.public_bytes
        sent: dict[bytes, int] = {}  # model id -> height its registration was sent at
        while True:
            await self.chain.wait_for_block()
            s = self.chain.state
            if s.bond(me).stake < s.params.min_worker_bond:
                continue
            for model in self.catalog.hosted():
                key = me + model.id
                if key in s.workers or s.height - sent.get(model.id, -10) < 5:
                    continue
                sent[model.id] = s.height
                try:
                    await self.chain.register_worker(self.identity, model.id, DECLARED_CAPACITY)
                except ValueError as e:
                    log.info("worker registration for %s refused: %s", model.id.hex()[:12], e)

    def _serve_protocols(self, jobs: JobProtocol) -> None:
        jobs.serve(self.gateway, self.worker, self.intake.on_report)
        self.host.set_request_handler(
            PROTO_SYNC, self.chain.serve_sync, max_request_size=MAX_SYNC_REQUEST
        )
        self.host.set_request_handler(
            PROTO_BLOB, self.models.serve_blob, max_request_size=MAX_BLOB_REQUEST
        )

    def _open_reviews(self, block: Block) -> None:
        """The fraud evidence ``block`` carried opens reviews (and a ForcedError's valid
        votes, D75): draw each committee, and re-check the work when this validator
        sits on one."""
        if not block.body.frauds and not block.body.forced_errors:
            return
        validators = self.chain.state.validator_snapshot_at(block.height)
        beacon = self.chain.state.beacon_at(block.height)  # seeds the reviews (D56)
        if validators is None or beacon is None:
            return
        for evidence in block.body.frauds:
            tracked = self.tracker.start_review(evidence, beacon, validators)
            if tracked is not None and self.verifier is not None:
                self.verifier.consider_review(tracked)
        for fe in block.body.forced_errors:
            tracked = self.tracker.start_forced_review(fe, beacon, validators)
            if tracked is not None and tracked.review is not None and self.verifier is not None:
                self.verifier.consider_review(tracked)

    async def _local_job(self, job: Job) -> None:
        """A job from ``jobs`` or from this node's own gateway (gossip does not deliver
        our own messages back to us): the worker may claim it."""
        if self.worker is not None:
            await self.worker.on_job(job)

    # -- gossip -----------------------------------------------------------------------

    async def _start_consumers(self, nursery: trio.Nursery) -> None:
        """Every topic's validator, then its consumer, each subscribed before the node
        reports it is ready."""
        view = _CheckView(self.chain, self.tracker)
        checks = topic_checks(
            self.genesis.chain_id, view, self.chain.checked, self.chain.saw_height
        )
        for name, check in checks.items():
            self.host.set_topic_validator(
                topic(name), topic_validator(check), timeout=TOPIC_VALIDATION_TIMEOUT_S
            )
        consumers: dict[str, Consumer] = {
            "consensus": self._on_consensus,
            "txs": self._on_tx,
            "jobs": self._on_job,
            "receipts": self._on_report,
            "verdicts": self._on_verdict,
            "models": self._on_model,
            "workers": self._on_worker_status,
            "blocks": self._on_consensus,  # finalized blocks, as on consensus
        }
        if not self.config.validator:  # D102: a node that does not vote follows "blocks"
            del consumers["consensus"]
        for name, consume in consumers.items():
            await nursery.start(self._consume, name, consume)

    async def _consume(
        self, name: str, consume: Consumer, *, task_status=trio.TASK_STATUS_IGNORED
    ) -> None:
        with self.host.subscribe(topic(name)) as sub:
            task_status.started()
            async for delivered in sub:
                try:
                    await consume(delivered)
                except (WireError, PouwError, LedgerError, ModelError) as e:
                    log.info("dropped a message on %s: %s", name, e)

    async def _on_consensus(self, m: Delivered) -> None:
        await self.chain.on_consensus_data(m.data)

    async def _on_tx(self, m: Delivered) -> None:
        self.chain.on_tx(decode(m.data, Transaction))

    async def _on_job(self, m: Delivered) -> None:
        await self._local_job(decode(m.data, Job))

    async def _on_report(self, m: Delivered) -> None:
        msg = decode(m.data, (WorkReport, StreamEvidence))
        if isinstance(msg, StreamEvidence):  # checked by the topic (D85): offer it to blocks
            self.tracker.add_junk_stream(msg)
            return
        await self.intake.on_report(msg)

    async def _on_verdict(self, m: Delivered) -> None:
        msg = decode(
            m.data, (Verdict, VerdictCommit, WithholdingChallenge, ChallengeAnswer, ForcedError)
        )
        if isinstance(msg, ForcedError):
            self.tracker.add_forced(msg)
        elif isinstance(msg, VerdictCommit):
            self.intake.on_commit(msg)
        elif isinstance(msg, WithholdingChallenge):
            self.tracker.add_challenge(msg)
        elif isinstance(msg, ChallengeAnswer):
            self.tracker.add_answer(msg)
        else:
            await self.intake.on_verdict(msg)

    def _offer_forced(self, fe: ForcedError) -> None:
        """Our worker sprang a forced error: offer it for blocks, gossip it (D75)."""
        self.tracker.add_forced(fe)
        self._roles_nursery.start_soon(self.host.publish, topic("verdicts"), encode(fe))

    def _counted_votes(self, rid: bytes):
        """The votes on ``rid`` this node counted, once members may reveal or the
        committee has decided (None before)."""
        tracked = self.tracker.for_receipt(rid)
        if tracked is None:
            return None
        if tracked.outcome is None and not self.tracker.reveal_open(tracked):
            return None
        return tracked.collector.counted()

    def _answer_challenge(self, answer: ChallengeAnswer) -> None:
        """Our worker answered a withholding challenge: offer it for blocks, gossip it."""
        self.tracker.add_answer(answer)
        self._roles_nursery.start_soon(self.host.publish, topic("verdicts"), encode(answer))

    async def _on_model(self, m: Delivered) -> None:
        checked = self.chain.checked.get(m.data, ModelAnnouncement)  # by the topic check
        self.models.on_announcement(checked or check_announcement(m.data), m.author)

    async def _on_worker_status(self, m: Delivered) -> None:
        await self.gateway.on_worker_status(self.chain.checked.decode(m.data, WorkerStatus))

    # -- HTTP API ---------------------------------------------------------------------

    async def _start_api(self, nursery: trio.Nursery) -> None:
        from .http.app import build_app, serve_api  # Starlette and Hypercorn: API nodes only
        from .http.routes_chain import chain_routes

        host, _, port = self.config.api.rpartition(":")
        app = build_app(
            self.gateway,
            self,
            extra_routes=chain_routes(self.chain, self.models),
            free_tier_per_minute=self.config.free_tier_per_minute,
        )
        bound = await nursery.start(serve_api, app, host, int(port))
        self.api_url = bound.url
        log.info("HTTP API on %s", self.api_url)

    # -- views (NodeView for the HTTP API) --------------------------------------------

    def status(self) -> dict:
        """The JSON-ready status the API serves at /api/v1/status."""
        s = self.chain.state
        validators = [
            {"peer_id": str(PeerId.from_public_key(v.key)), "stake": format_amount(v.power)}
            for v in s.validators.validators
        ]
        return {
            "peer_id": str(self.identity.peer_id),
            "address": str(self.identity.address),
            "chain_id": s.chain_id,
            "height": s.height,
            "finalized_hash": s.last_block_hash.hex(),
            "block_time_ms": s.params.target_block_time_ms,
            "peers": [str(p) for p in self.host.connected_peers()],
            "listen": [str(a) for a in self.host.listen_addrs],
            "reach": {  # reachability, the relays we hold a slot on, relays that failed probes
                "reachability": self.host.reach.reachability,
                "relays": sorted(str(p) for p in self.host.reach.hub.reserved_on),
                "relay_failures": self.host.reach.relay_failures,
            },
            "validators": validators,
            "total_stake": format_amount(s.validators.total_power),
            "min_validator_stake": format_amount(s.params.min_validator_stake),
            "min_validator_stake_units": s.params.min_validator_stake,
            "is_validator": self.identity.public_bytes in s.validators,
            "hosted_models": [m.id_text for m in self.catalog.hosted()],
            "live_workers": {
                m.id_text: self.gateway.live_workers(m.id) for m in self.catalog.all()
            },
            "fetching_models": {model_id_text(k): v for k, v in self.models.fetching.items()},
            "queue": self.worker.in_flight if self.worker else 0,
            "mempool": len(self.chain.mempool),
            "supply": {
                "genesis_units": s.genesis.supply,
                "minted_units": s.minted,
                "burned_units": s.burned,
                "work_pool_units": s.work_pool,
                "escrowed_units": sum(e.amount for e in s.escrows.values()),
            },
            "work": self.tracker.counts(),
        }

    def metrics(self) -> list[Metric]:
        """The node's own metrics for /metrics (the API adds its request metrics)."""
        g = self.host.router.stats
        out = [
            Metric.single(
                "aipg_peers", "Connected peers.", "gauge", len(self.host.connected_peers())
            ),
            Metric.single(
                "aipg_height", "Height of the last finalized block.", "gauge", self.chain.height
            ),
            Metric.single(
                "aipg_mempool_transactions",
                "Transactions waiting for a block.",
                "gauge",
                len(self.chain.mempool),
            ),
            Metric.by_label(
                "aipg_gateway_jobs",
                "Jobs of this gateway by state.",
                "gauge",
                "state",
                self.gateway.jobs_by_state(),
            ),
            self.gateway.ttft.collect(),
            self.gateway.refusals.collect(),
            Metric.by_label(
                "aipg_work",
                "Work reports tracked, by outcome.",
                "gauge",
                "outcome",
                self.tracker.counts(),
            ),
            Metric.single(
                "aipg_worker_jobs_executed",
                "Jobs this worker executed.",
                "counter",
                self.worker.executed if self.worker else 0,
            ),
            Metric.by_label(
                "aipg_gossip_messages",
                "Gossip messages by fate.",
                "counter",
                "fate",
                {
                    "published": g.published,
                    "delivered": g.delivered,
                    "duplicates": g.duplicates,
                    "rejected": g.rejected,
                    "ignored": g.ignored,
                },
            ),
        ]
        if self.verifier is not None:
            out.append(
                Metric.by_label(
                    "aipg_verifications",
                    "Verdicts this validator gave.",
                    "counter",
                    "outcome",
                    self.verifier.outcomes,
                )
            )
        return out

    # -- run file ---------------------------------------------------------------------

    def write_run_file(self) -> None:
        """Write where this node listens, atomically, for devnets and scripts."""
        info = {
            "peer_id": str(self.identity.peer_id),
            "pid": os.getpid(),
            "listen": [str(a) for a in self.host.listen_addrs],
            "api_url": self.api_url,
            "started_ms": now_ms(),
        }
        path = self.data_dir.run_file
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(info))
        os.replace(tmp, path)

    def remove_run_file(self) -> None:
        self.data_dir.run_file.unlink(missing_ok=True)


@dataclass(frozen=True)
class _CheckView:
    """What the topic checks read of this node: its finalized state and the committees
    of the receipts it tracks."""

    chain: ChainService
    tracker: WorkTracker

    @property
    def state(self) -> State:
        return self.chain.state

    def may_vote(self, receipt_id: bytes, signer: bytes) -> bool | None:
        tracked = self.tracker.for_receipt(receipt_id)
        if tracked is None:
            return None
        if signer in tracked.voters():
            return True
        # Reviewers are drawn when a block opens the conviction, which this node may
        # not have yet: any current validator may be one.
        return tracked.fraud and signer in self.chain.state.validators


async def run_until_signal(node: Node) -> None:
    """Run ``node`` until SIGINT or SIGTERM, then shut it down cleanly."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(node.run)
                async for signum in signals:
                    log.info("received %s: shutting down", signal.Signals(signum).name)
                    nursery.cancel_scope.cancel()
                    break
        finally:
            node.remove_run_file()
    log.info("node stopped")


async def _close_when_cancelled(resource) -> None:
    """Own ``resource`` for the nursery's lifetime: close it when the node stops."""
    try:
        await trio.sleep_forever()
    finally:
        resource.close()


def setup_logging(data_dir: DataDir, level: str) -> None:
    data_dir.logs_dir.mkdir(parents=True, exist_ok=True)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    handlers: list[logging.Handler] = [
        logging.StreamHandler(),
        logging.FileHandler(data_dir.logs_dir / "node.log.txt"),
    ]
    root = logging.getLogger()
    root.setLevel(level.upper())
    for h in handlers:
        h.setFormatter(fmt)
        root.addHandler(h)
    # Hypercorn logs every request at INFO; keep access logs at debug.
    logging.getLogger("hypercorn.access").setLevel(logging.WARNING)
