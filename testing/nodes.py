"""Whole nodes in one trio run: real services, real SQLite stores, the in-memory transport.

:func:`open_node_world` starts ``n`` :class:`aipg.node.app.Node` objects on one
:class:`aipg.gossip.MemoryNetwork`, each with its own data dir, all validators of a fresh
genesis whose first block comes at once. Tests drive the services directly (the
gateway's ``complete``, the tracker, the chain) and wait on the nodes' own events, so a
job's whole path — gateway, claim, assignment, worker, report, committee, certificate,
block — runs in process, without HTTP or subprocesses.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import trio

from aipg.gossip import GossipHost, MemoryNetwork, MemoryTransport, WebsocketTransport
from aipg.node.apikeys import ApiKeyStore
from aipg.node.app import Node
from aipg.node.config import NodeConfig
from aipg.node.datadir import DataDir
from aipg.node.services.faults import Faults
from aipg.node.services.gateway_api import CompletionRequest, ImageRequest, PaidAccount
from aipg.stake.genesis import devnet_params, make_genesis
from aipg.testing.gossipkit import start_reach_network
from aipg.wire import UNITS_PER_AIPG, Identity, save_identity

LOOPBACK_WS = "/ip4/127.0.0.1/tcp/0/ws"
VALIDATOR_STAKE = 10_000 * UNITS_PER_AIPG
BALANCE = 1_000 * UNITS_PER_AIPG
BLOCK_TIME_MS = 250
MAX_BOOTSTRAP = 3  # as the devnet: each node dials the first three (a full mesh up to 4)


@dataclass(frozen=True)
class NodeSpec:
    """How one node of a world runs: its roles and its test-only faults."""

    worker: bool = True
    validator: bool = True
    faults: Faults = field(default_factory=Faults)
    hosts: bool = True  # host the world's models (False: knows them only by announcement)
    stake: int = VALIDATOR_STAKE
    nat: bool = False  # behind a simulated NAT: dials out, nobody can dial in
    max_peers: int = 50


@dataclass
class NodeWorld:
    nodes: list[Node]
    network: MemoryNetwork
    hosts: list[GossipHost] = field(default_factory=list)  # the plain hosts (extra_hosts)
    scopes: list[trio.CancelScope] = field(default_factory=list)  # one a node, as nodes

    def stop(self, i: int) -> None:
        """Kill node ``i`` (its run is cancelled: its connections close, nothing else
        of it goes on); the others keep running."""
        self.scopes[i].cancel()

    async def wait_for_height(self, height: int, timeout: float = 30.0) -> None:
        """Until every node has finalized ``height``."""
        with trio.fail_after(timeout):
            for node in self.nodes:
                while node.chain.height < height:
                    await node.chain.wait_for_block()

    @staticmethod
    async def until(node: Node, done: Callable[[], object], timeout: float = 60.0):
        """Check ``done()`` after each block ``node`` finalizes until it is truthy;
        returns its value. TooSlowError after ``timeout`` seconds."""
        with trio.fail_after(timeout):
            while not (value := done()):
                await node.chain.wait_for_block()
            return value

    async def wait_for_worker(self, gateway: Node, model_id: bytes, timeout: float = 30.0):
        """Until ``gateway`` has heard a live worker announce ``model_id``."""
        await self.until(gateway, lambda: gateway.gateway.live_workers(model_id), timeout)

    async def wait_for_block_with(self, node: Node, job_id: bytes, timeout: float = 60.0):
        """Until ``node`` has seen ``job_id``'s outcome carried by a finalized block;
        returns the tracked work."""

        def carried():
            tracked = node.tracker.for_job(job_id)
            return tracked if tracked is not None and tracked.block_height is not None else None

        return await self.until(node, carried, timeout)

    async def wait_for_settled(self, node: Node, job_id: bytes, timeout: float = 60.0):
        """Until ``node`` has seen ``job_id`` settled: its outcome in a finalized block,
        or its claim paid unaudited (D79); returns the tracked work."""

        def settled():
            t = node.tracker.for_job(job_id)
            return t if t is not None and (t.block_height is not None or t.paid_unaudited) else None

        return await self.until(node, settled, timeout)


@contextlib.asynccontextmanager
async def open_node_world(
    root: Path,
    specs: Sequence[NodeSpec],
    models: Sequence[Path],
    *,
    committee_size: int = 0,
    accounts: Sequence[tuple[Identity, int]] = (),
    loopback: bool = False,
    weight_cap_bps: int = 0,
    forced_error_bps: int = 0,
    extra_hosts: int = 0,
    extra_nat_share: float = 0.3,
    sparse: int = 0,
    block_time_ms: int = BLOCK_TIME_MS,
    seed: int = 1,
    params_over: dict | None = None,
    on_start: Callable[[int, Node], object] | None = None,
) -> AsyncIterator[NodeWorld]:
    """Start one node per spec under ``root``, each hosting ``models`` (directories);
    node 0 first, the others bootstrapping from the first three. ``committee_size`` (0:
    the devnet's) seats per committee; ``accounts`` are funded at genesis with the given
    amounts (for the paid tier: see :func:`add_paid_account`); ``weight_cap_bps`` (0: the
    devnet's) caps a validator's share of a committee draw (10_000: stake alone
    decides, so a heavy validator is seated first); ``forced_error_bps`` turns forced
    errors on (D75; with lazy members slashed 5 %). ``loopback``: the nodes talk over
    real websockets on 127.0.0.1 instead of the in-memory transport. Cancelled on exit.

    ``extra_hosts`` (in memory only): first start that many plain gossip hosts (DHT,
    AutoNAT, relays; no node services; ``extra_nat_share`` of them behind NAT) as
    :func:`aipg.testing.gossipkit.start_reach_network` does, then the nodes, each
    bootstrapping from two random public plain hosts and only the last public node
    before it (a path, so the nodes' topics stay connected while most pairs of nodes
    are not). ``sparse`` (in memory only): each node bootstraps from that many random
    earlier public nodes and the last public node before it, instead of the first three
    (a world of many whole nodes far from a full mesh), the validators started last.
    ``seed`` draws the plain hosts'
    NAT and bootstrap choices. Only the specs with ``validator`` are genesis validators.
    ``params_over`` replaces chain parameters of the genesis. ``on_start(i, node)`` is
    called as each node has started (benchmarks time the joins with it)."""
    dirs = [DataDir.resolve(root / f"node{i}") for i in range(len(specs))]
    n_validators = sum(spec.validator for spec in specs)
    params = devnet_params(block_time_ms, n_validators)
    if committee_size:
        params = params.replace(committee_size=committee_size)
    if weight_cap_bps:
        params = params.replace(committee_weight_cap_bps=weight_cap_bps)
    if forced_error_bps:
        params = params.replace(forced_error_bps=forced_error_bps, lazy_slash_bps=500)
    if params_over:
        params = params.replace(**params_over)
    identities = [d.init() for d in dirs]
    network = MemoryNetwork()
    nodes: list[Node] = []
    rng = random.Random(seed)
    async with trio.open_nursery() as nursery:
        hosts: list[GossipHost] = []
        public_hosts: list[str] = []
        if extra_hosts:
            assert not loopback, "extra_hosts lives on the in-memory network"
            _, hosts, natted = await start_reach_network(
                nursery, extra_hosts, nat_share=extra_nat_share, seed=seed, network=network
            )
            public_hosts = [
                f"{h.listen_addrs[0]}/p2p/{h.peer_id}"
                for i, h in enumerate(hosts)
                if i not in natted
            ]
        genesis = make_genesis(
            "aipg-inprocess",
            operations_wallet=Identity.from_seed(b"\x07" * 32).address,
            allocations=[
                *((ident.address, BALANCE) for ident in identities),
                *((ident.address, amount) for ident, amount in accounts),
            ],
            validators=[
                (ident.public_bytes, spec.stake, f"node{i}")
                for i, (ident, spec) in enumerate(zip(identities, specs, strict=True))
                if spec.validator
            ],
            params=params,
            genesis_time_ms=time.time_ns() // 1_000_000,  # after the plain hosts
        )
        bootstrap: tuple[str, ...] = ()
        last_node: tuple[str, ...] = ()  # with extra_hosts: the last public node started
        public_nodes: list[str] = []
        started: dict[int, Node] = {}
        scopes: dict[int, trio.CancelScope] = {}
        order = list(range(len(specs)))
        if sparse:  # the validators last: no blocks to sync while the others start
            order.sort(key=lambda i: specs[i].validator)
        for i in order:
            data_dir, spec = dirs[i], specs[i]
            if extra_hosts:
                bootstrap = (*last_node, *rng.sample(public_hosts, 2))
            elif sparse:
                earlier = [a for a in public_nodes if a not in last_node]
                bootstrap = (*last_node, *rng.sample(earlier, min(sparse, len(earlier))))
            config = NodeConfig(
                listen=(LOOPBACK_WS,),
                bootstrap=bootstrap,
                api="",
                host_model=tuple(str(m) for m in models) if spec.hosts else (),
                threads=1,
                worker=spec.worker,
                validator=spec.validator,
                max_peers=spec.max_peers,
            )
            transport = WebsocketTransport() if loopback else MemoryTransport(network, nat=spec.nat)
            node = Node(data_dir, config, genesis, spec.faults, transport)
            scopes[i] = await nursery.start(_run_stoppable, node)
            started[i] = node
            if on_start is not None:
                on_start(i, node)
            first = f"{node.host.listen_addrs[0]}/p2p/{node.identity.peer_id}"
            if (extra_hosts or sparse) and not spec.nat:
                last_node = (first,)
                public_nodes.append(first)
            elif not extra_hosts and len(bootstrap) < MAX_BOOTSTRAP and not spec.nat:
                bootstrap = (*bootstrap, first)
        nodes.extend(started[i] for i in range(len(specs)))
        world = NodeWorld(nodes, network, hosts, [scopes[i] for i in range(len(specs))])
        await world.wait_for_height(1)
        yield world
        nursery.cancel_scope.cancel()


async def _run_stoppable(node: Node, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Run ``node`` in a cancel scope of its own, handed to ``started`` once it serves."""
    with trio.CancelScope() as scope:
        await node.run(task_status=_Started(task_status, scope))


class _Started:
    """A task status that hands on ``scope`` instead of the node's value."""

    def __init__(self, status, scope: trio.CancelScope) -> None:
        self._status, self._scope = status, scope

    def started(self, _value=None) -> None:
        self._status.started(self._scope)


def add_paid_account(gateway: Node, identity: Identity, name: str = "client") -> PaidAccount:
    """Custody ``identity``'s account at ``gateway``, as ``aipg-node apikey add`` does:
    its key file in the gateway's data dir, an entry in ``api_keys.json``. Returns the
    account a paid request names (what the HTTP API resolves the API key to)."""
    key_file = Path(gateway.data_dir.root) / f"{name}.key"
    save_identity(identity, key_file)
    ApiKeyStore(gateway.data_dir).add(name, key_file)
    return PaidAccount(str(identity.address), name)


def completion(
    model: str,
    prompt: str,
    *,
    max_tokens: int = 8,
    seed: int | None = 7,
    account: PaidAccount | None = None,
) -> CompletionRequest:
    """A greedy completion request as the HTTP API would hand it over: free tier, or
    paid from ``account``."""
    return CompletionRequest(
        model=model,
        prompt_ids=None,
        prompt=prompt,
        chat=False,
        max_tokens=max_tokens,
        temperature_milli=0,
        top_k=0,
        top_p_milli=1000,
        seed=seed,
        stop=(),
        tier="paid" if account else "free",
        account=account,
        client="127.0.0.1",
    )


def image(model: str, prompt: str, *, seed: int = 3, size: str | None = None) -> ImageRequest:
    """A free-tier image request with the model's default steps and guidance, as the HTTP
    API would hand it over."""
    return ImageRequest(
        model=model,
        prompt=prompt,
        size=size,
        steps=None,
        guidance_milli=None,
        seed=seed,
        tier="free",
        account=None,
        client="127.0.0.1",
    )
