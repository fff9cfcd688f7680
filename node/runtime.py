"""The running node: every service in one trio nursery.

Start order (each with ``await nursery.start(...)``, so a service is ready before the
next one uses it)::

    gossip host  ->  chain service (store, consensus, mempool, sync)
      ->  models (store, blob protocol, announcements, fetches)  ->  gateway (jobs)
      ->  worker (hosted models)  ->  verifier (committees)  ->  topic handlers
      ->  HTTP API  ->  run file (addresses, for devnets and scripts)

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
from dataclasses import dataclass, field
from pathlib import Path

import trio

from aipg.gossip import GossipConfig, GossipHost, WebsocketTransport
from aipg.stake.genesis import Genesis
from aipg.wire import Identity, Multiaddr

from .config import NodeConfig
from .datadir import DataDir
from .devnet import RUN_FILE

log = logging.getLogger("aipg.node")


@dataclass(frozen=True)
class Faults:
    """Test-only misbehaviour, so end-to-end tests can show the network catching it.

    Never set on a real node: ``aipg-node join --help`` lists the flags under
    "testing only".
    """

    cheat_tokens: bool = False  # worker: alter one output token after generating
    swap_weights: bool = False  # worker: run a model with other weights of the same shape
    random_votes: bool = False  # validator: vote valid/invalid at random without checking
    double_sign: bool = False  # validator: sign two conflicting prevotes at each height

    def any(self) -> bool:
        return self.cheat_tokens or self.swap_weights or self.random_votes or self.double_sign


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class Node:
    """One node. Build it, then ``await nursery.start(node.run)``."""

    data_dir: DataDir
    config: NodeConfig
    genesis: Genesis
    faults: Faults = field(default_factory=Faults)
    identity: Identity = field(init=False)

    def __post_init__(self) -> None:
        self.identity = self.data_dir.load_identity()
        self.host: GossipHost | None = None
        self.tracker = None
        self.catalog = None
        self.models = None
        self.chain = None
        self.worker = None
        self.verifier = None
        self.gateway = None
        self.api_url = ""
        self.started = trio.Event()

    def gossip_config(self) -> GossipConfig:
        return GossipConfig(
            listen=[Multiaddr.parse(a) for a in self.config.listen],
            bootstrap=[Multiaddr.parse(a) for a in self.config.bootstrap],
            max_peers=self.config.max_peers,
            high_water=max(2, min(48, self.config.max_peers - 2)),
            low_water=max(1, min(32, self.config.max_peers // 2)),
        )

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Run every service until cancelled."""
        from .services import start_services  # the services import the heavy packages

        log.info("node %s starting (chain %s)", self.identity.peer_id, self.genesis.chain_id)
        async with trio.open_nursery() as nursery:
            self.host = GossipHost(
                self.identity, self.gossip_config(), transport=WebsocketTransport()
            )
            await nursery.start(self.host.run)
            await start_services(self, nursery)
            self.write_run_file()
            log.info("node ready: %s", ", ".join(str(a) for a in self.host.listen_addrs))
            self.started.set()
            task_status.started()

    @staticmethod
    def now_ms() -> int:
        return now_ms()

    async def on_local_job(self, job) -> None:
        """A job from ``jobs`` or from this node's own gateway (gossip does not deliver
        our own messages back to us): the worker may claim it."""
        if self.worker is not None:
            await self.worker.on_job(job)

    def status(self) -> dict:
        """The JSON-ready status the API serves at /api/v1/status."""
        from aipg.models import model_id_text
        from aipg.wire import PeerId, format_amount

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

    def metrics(self) -> list:
        from .metrics import Metric

        s = self.chain.state
        jobs: dict[str, float] = {}
        for entry in self.gateway.jobs.values():
            state = self.gateway._status_of(entry.job.id, entry, self.tracker.for_job(entry.job.id))
            jobs[state] = jobs.get(state, 0) + 1
        out = [
            Metric.single(
                "aipg_peers", "Connected peers.", "gauge", len(self.host.connected_peers())
            ),
            Metric.single("aipg_height", "Height of the last finalized block.", "gauge", s.height),
            Metric.single(
                "aipg_mempool_transactions",
                "Transactions waiting for a block.",
                "gauge",
                len(self.chain.mempool),
            ),
            Metric.by_label(
                "aipg_gateway_jobs", "Jobs of this gateway by state.", "gauge", "state", jobs
            ),
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
        ]
        g = self.host.router.stats
        gossip = {
            "published": g.published,
            "delivered": g.delivered,
            "duplicates": g.duplicates,
            "rejected": g.rejected,
            "ignored": g.ignored,
        }
        out.append(
            Metric.by_label(
                "aipg_gossip_messages", "Gossip messages by fate.", "counter", "fate", gossip
            )
        )
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

    def write_run_file(self) -> None:
        """Write where this node listens, atomically, for devnets and scripts."""
        info = {
            "peer_id": str(self.identity.peer_id),
            "pid": os.getpid(),
            "listen": [str(a) for a in self.host.listen_addrs] if self.host else [],
            "api_url": self.api_url,
            "started_ms": now_ms(),
        }
        path = self.data_dir.root / RUN_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(info))
        os.replace(tmp, path)

    def remove_run_file(self) -> None:
        (self.data_dir.root / RUN_FILE).unlink(missing_ok=True)


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


def setup_logging(data_dir: DataDir, level: str) -> None:
    data_dir.logs_dir.mkdir(parents=True, exist_ok=True)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    handlers: list[logging.Handler] = [
        logging.StreamHandler(),
        logging.FileHandler(Path(data_dir.logs_dir) / "node.log.txt"),
    ]
    root = logging.getLogger()
    root.setLevel(level.upper())
    for h in handlers:
        h.setFormatter(fmt)
        root.addHandler(h)
    # Hypercorn logs every request at INFO; keep access logs at debug.
    logging.getLogger("hypercorn.access").setLevel(logging.WARNING)
