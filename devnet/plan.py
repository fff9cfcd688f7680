"""A local devnet: N real ``aipg-node join`` processes on 127.0.0.1.

:func:`plan_devnet` lays out a fresh devnet directory::

    <root>/devnet.json          what was planned (node dirs, accounts, ports)
    <root>/genesis.toml         a fresh genesis: every node a validator, a funded client
    <root>/wallets/             keys of the operations wallet and the paid-tier client
    <root>/models/{llm,diffusion}   the demo models, built locally from seeded weights
    <root>/node<i>/             each node's data dir (key, config, chain, blobs, logs)

:class:`Devnet` starts the processes (node 0 first, the others bootstrapping from it),
waits for each to report its addresses in ``<data dir>/run.json``, and stops every
process it started on exit, Ctrl-C included.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import trio

from aipg.models import load_model_dir, model_id_text
from aipg.node.datadir import RUN_FILE, DataDir
from aipg.stake.genesis import devnet_params, make_genesis, save_genesis
from aipg.wire import UNITS_PER_AIPG, Identity, Units, save_identity

MARKER = "devnet.json"
VALIDATOR_STAKE = Units(20_000 * UNITS_PER_AIPG)
NODE_BALANCE = Units(5_000 * UNITS_PER_AIPG)
CLIENT_BALANCE = Units(1_000 * UNITS_PER_AIPG)
# How long starting one node process takes on a small machine (imports, models).
GENESIS_DELAY_MS_PER_NODE = 3_000


class DevnetError(Exception):
    """The devnet cannot be planned or started; the message says why."""


@dataclass
class DevnetNodePlan:
    index: int
    data_dir: str
    peer_id: str
    address: str
    api: bool = True
    validator: bool = True
    host_models: list[str] = field(default_factory=list)


@dataclass
class DevnetPlan:
    root: str
    chain_id: str
    genesis: str
    nodes: list[DevnetNodePlan]
    operations_wallet: str
    client_key: str
    client_address: str
    models: dict[str, str]
    block_time_ms: int

    def save(self) -> None:
        Path(self.root, MARKER).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, root: Path) -> DevnetPlan:
        raw = json.loads((root / MARKER).read_text())
        raw["nodes"] = [DevnetNodePlan(**n) for n in raw["nodes"]]
        return cls(**raw)


def _clear_root(root: Path) -> None:
    if not root.exists():
        return
    if not (root / MARKER).exists() and any(root.iterdir()):
        raise DevnetError(f"{root} exists and is not a devnet directory; choose another --dir")
    shutil.rmtree(root)


def plan_devnet(
    root: Path,
    nodes: int,
    *,
    block_time_ms: int = 2_000,
    build_models: Callable[[Path], dict[str, str]] | None = None,
    progress: Callable[[str], None] = lambda _msg: None,
) -> DevnetPlan:
    """Create a fresh devnet directory (replacing a previous devnet there).

    ``build_models(models_dir) -> {"llm": dir, "diffusion": dir}`` builds the demo models;
    every node hosts them.
    """
    if not 1 <= nodes <= 64:
        raise DevnetError(f"--nodes must be between 1 and 64, got {nodes}")
    _clear_root(root)
    root.mkdir(parents=True)
    wallets = root / "wallets"
    operations = Identity.generate()
    client = Identity.generate()
    save_identity(operations, wallets / "operations.key")
    save_identity(client, wallets / "client.key")

    models: dict[str, str] = {}
    if build_models is not None:
        progress("building the demo models")
        models = build_models(root / "models")

    # Node 0 hosts the models from their directories and announces them; the others
    # host them by id, fetching the files from peers over the blob protocol.
    model_ids = sorted(model_id_text(load_model_dir(d).model_id) for d in models.values())
    plans = []
    for i in range(nodes):
        progress(f"creating node {i}")
        dd = DataDir.resolve(root / f"node{i}")
        ident = dd.init()
        plans.append(
            DevnetNodePlan(
                index=i,
                data_dir=str(dd.root),
                peer_id=str(ident.peer_id),
                address=str(ident.address),
                host_models=sorted(models.values()) if i == 0 else model_ids,
            )
        )
    identities = [DataDir.resolve(p.data_dir).load_identity() for p in plans]
    chain_id = f"aipg-devnet-{os.urandom(3).hex()}"
    genesis = make_genesis(
        chain_id,
        operations_wallet=operations.address,
        allocations=[(ident.address, NODE_BALANCE) for ident in identities]
        + [(client.address, CLIENT_BALANCE)],
        validators=[
            (ident.public_bytes, VALIDATOR_STAKE, f"node{i}") for i, ident in enumerate(identities)
        ],
        params=devnet_params(block_time_ms, nodes),
        genesis_time_ms=0,
    )
    genesis_path = root / "genesis.toml"
    # Every node waits for genesis time before consensus: leave time to start them all.
    genesis = genesis.replace(
        genesis_time_ms=time.time_ns() // 1_000_000 + GENESIS_DELAY_MS_PER_NODE * nodes + 2_000
    )
    save_genesis(genesis, genesis_path)
    plan = DevnetPlan(
        root=str(root),
        chain_id=chain_id,
        genesis=str(genesis_path),
        nodes=plans,
        operations_wallet=str(operations.address),
        client_key=str(wallets / "client.key"),
        client_address=str(client.address),
        models=models,
        block_time_ms=block_time_ms,
    )
    plan.save()
    return plan


@dataclass
class RunningNode:
    plan: DevnetNodePlan
    process: trio.Process
    listen: list[str]
    api_url: str


def read_run_file(data_dir: str | Path) -> dict | None:
    path = Path(data_dir) / RUN_FILE
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def join_command(
    node: DevnetNodePlan, plan: DevnetPlan, bootstrap: list[str], extra: list[str]
) -> list[str]:
    cmd = [
        sys.executable, "-m", "aipg.cli", "join",
        "--data-dir", node.data_dir,
        "--genesis", plan.genesis,
        "--listen", "/ip4/127.0.0.1/tcp/0/ws",
    ]  # fmt: skip
    for addr in bootstrap:
        cmd += ["--bootstrap", addr]
    if node.api:
        cmd += ["--api", "127.0.0.1:0"]
    if node.validator:
        cmd += ["--validator"]
    for m in node.host_models:
        cmd += ["--host-model", m]
    return cmd + extra


class Devnet:
    """Starts and stops the processes of a planned devnet. Use ``async with``."""

    def __init__(self, plan: DevnetPlan, *, extra_args: dict[int, list[str]] | None = None):
        self.plan = plan
        self.extra_args = extra_args or {}
        self.nodes: list[RunningNode] = []
        self._logs: list = []

    async def __aenter__(self) -> Devnet:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    async def start_node(self, index: int, *, timeout: float = 60.0) -> RunningNode:
        """Start node ``index`` and wait until it has written its run file."""
        node = self.plan.nodes[index]
        run_file = Path(node.data_dir) / RUN_FILE
        run_file.unlink(missing_ok=True)
        bootstrap = [n.listen[0] for n in self.nodes if n.process.returncode is None][:3]
        log = open(Path(node.data_dir) / "logs" / "node.log", "ab")  # noqa: SIM115 (closed in stop)
        self._logs.append(log)
        cmd = join_command(node, self.plan, bootstrap, self.extra_args.get(index, []))
        proc = await trio.lowlevel.open_process(
            cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        with trio.move_on_after(timeout) as scope:
            while (info := read_run_file(node.data_dir)) is None:
                if proc.poll() is not None:
                    raise DevnetError(
                        f"node{index} exited with status {proc.returncode}; see {node.data_dir}/logs/node.log"
                    )
                await trio.sleep(0.05)  # polling another process's file: nothing to wait on
        if scope.cancelled_caught:
            proc.kill()
            raise DevnetError(
                f"node{index} did not start within {timeout:.0f} s; see its logs/node.log"
            )
        running = RunningNode(node, proc, info["listen"], info.get("api_url", ""))
        self.nodes = [n for n in self.nodes if n.plan.index != index] + [running]
        self.nodes.sort(key=lambda n: n.plan.index)
        return running

    async def start(self, progress: Callable[[str], None] = lambda _m: None) -> None:
        for i in range(len(self.plan.nodes)):
            progress(f"starting node {i}")
            await self.start_node(i)

    async def wait_models_hosted(self, timeout: float = 120.0) -> None:
        """Wait until every running node hosts every model it was asked to host, and the
        gateway (node 0) has heard from a live worker for each of them."""
        import httpx

        async with httpx.AsyncClient(timeout=10) as http:
            with trio.move_on_after(timeout):
                while True:
                    pending = []
                    for n in self.nodes:
                        status = (await http.get(n.api_url + "/api/v1/status")).json()
                        fetched = len(status["hosted_models"]) >= len(n.plan.host_models)
                        served = n.plan.index != 0 or all(status["live_workers"].values())
                        if not (fetched and served):
                            pending.append(n.plan.index)
                    if not pending:
                        return
                    await trio.sleep(0.25)  # polling other processes over HTTP
        raise DevnetError(f"node(s) {pending} did not fetch their models within {timeout:.0f} s")

    def node(self, index: int) -> RunningNode:
        return next(n for n in self.nodes if n.plan.index == index)

    async def kill_node(self, index: int) -> None:
        """SIGKILL one node (crash tests)."""
        n = self.node(index)
        n.process.kill()
        await n.process.wait()

    async def stop(self, *, grace: float = 10.0) -> None:
        """SIGTERM every process, SIGKILL what is left after ``grace`` seconds."""
        with trio.CancelScope(shield=True):
            for n in self.nodes:
                if n.process.returncode is None:
                    n.process.send_signal(signal.SIGTERM)
            with trio.move_on_after(grace):
                for n in self.nodes:
                    await n.process.wait()
            for n in self.nodes:
                if n.process.returncode is None:
                    n.process.kill()
                    await n.process.wait()
            for log in self._logs:
                log.close()
            self._logs.clear()
