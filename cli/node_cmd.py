"""`aipg-node join` (run a node) and `aipg-node devnet` (a local network)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from aipg.node.config import NodeConfig, load_config

from .errors import CliError

JOIN_DESCRIPTION = """\
Run a node until Ctrl-C (or SIGTERM), then shut down cleanly.

Every flag overrides the key of the same name in <data dir>/config.toml
(--host-model <-> host_model). Roles are flags: --host-model makes the node a worker,
--validator a validator (it needs 10,000 AIPG bonded), --api a gateway.
"""


def add_parser(sub: argparse._SubParsersAction, data_dir_parent: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "join",
        parents=[data_dir_parent],
        help="run a node: join the mesh, host models, verify, serve the API",
        description=JOIN_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    net = p.add_argument_group("network")
    net.add_argument(
        "--listen",
        action="append",
        metavar="MULTIADDR",
        help="where to accept peers (repeatable; default /ip4/0.0.0.0/tcp/4001/ws)",
    )
    net.add_argument(
        "--bootstrap",
        action="append",
        metavar="MULTIADDR",
        help="a peer to dial at start, /ip4/H/tcp/P/ws/p2p/ID (repeatable)",
    )
    net.add_argument("--max-peers", type=int, metavar="N", help="most connected peers (default 50)")
    net.add_argument(
        "--relays",
        type=int,
        metavar="N",
        help="behind NAT: public relays to hold a slot on, each probed and replaced when bad "
        "(default 2)",
    )
    net.add_argument(
        "--genesis",
        metavar="FILE",
        help="genesis of the network (default: the one saved in the data dir)",
    )
    roles = p.add_argument_group("roles")
    roles.add_argument(
        "--host-model",
        action="append",
        metavar="MODEL_ID|DIR",
        help="host a model: a model dir, or the id of a published model to fetch (repeatable)",
    )
    roles.add_argument(
        "--no-worker",
        dest="worker",
        action="store_false",
        default=None,
        help="host models only to verify others' work; claim no jobs",
    )
    roles.add_argument(
        "--threads", type=int, metavar="N", help="ONNX intra-op threads per job (0: one per core)"
    )
    roles.add_argument(
        "--validator",
        action="store_true",
        default=None,
        help="vote in consensus and verification committees",
    )
    roles.add_argument(
        "--api", metavar="HOST:PORT", help="serve the OpenAI-compatible HTTP API (gateway role)"
    )
    roles.add_argument(
        "--free-tier-per-minute",
        type=int,
        metavar="N",
        help="free-tier requests per minute per client (default 30)",
    )
    roles.add_argument(
        "--paid-route",
        choices=("latency", "drawn"),
        help="paid jobs: assigned at once, fee only (latency, the default), or by the "
        "beacon's draw, fee and pool share (drawn)",
    )
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"))
    test = p.add_argument_group(
        "testing only",
        "make this node misbehave, so tests can show the network catching it; never use on a real network",
    )
    test.add_argument(
        "--fault-cheat-tokens",
        action="store_true",
        help="worker: alter an output token after generating",
    )
    test.add_argument(
        "--fault-swap-weights",
        action="store_true",
        help="worker: run the model with other weights of the same shape",
    )
    test.add_argument(
        "--fault-random-votes",
        action="store_true",
        help="validator: vote at random without checking",
    )
    test.add_argument(
        "--fault-double-sign",
        action="store_true",
        help="validator: sign two conflicting prevotes per height",
    )
    test.add_argument(
        "--fault-double-receipt",
        action="store_true",
        help="worker: also gossip a second, altered receipt for each LLM job",
    )
    test.add_argument(
        "--fault-flip-verdicts",
        action="store_true",
        help="validator: also gossip the opposite of each verdict",
    )
    test.add_argument(
        "--fault-accuse",
        action="store_true",
        help="validator: vote every receipt invalid without checking",
    )
    test.add_argument(
        "--fault-copy-verdicts",
        action="store_true",
        help="validator: reveal other members' votes as its own, without committing",
    )
    test.add_argument(
        "--fault-lazy-votes",
        action="store_true",
        help="validator: vote every receipt valid without checking (forced errors catch it)",
    )
    test.add_argument(
        "--fault-skip-forced",
        action="store_true",
        help="worker: never make a forced error's prescribed change",
    )
    test.add_argument(
        "--fault-never-sign",
        action="store_true",
        help="worker: deliver an LLM output early (forced errors on), never sign its receipt",
    )
    test.add_argument(
        "--fault-withhold-latents",
        action="store_true",
        help="worker: serve nobody its latents (it still answers challenges on chain)",
    )
    test.add_argument(
        "--fault-relay",
        choices=("drop", "corrupt"),
        help="relay: drop or corrupt every circuit's frames after the handshake",
    )
    p.set_defaults(func=cmd_join)

    d = sub.add_parser(
        "devnet",
        help="run a local network of N node processes on 127.0.0.1",
        description="Start N real node processes on 127.0.0.1 with a fresh genesis (every node a "
        "validator with 20,000 AIPG bonded, a funded paid-tier client), build the demo models, "
        "host them on every node and show a live view. Ctrl-C stops every process it started.",
    )
    d.add_argument("--nodes", type=int, default=4, help="number of nodes (default 4)")
    d.add_argument(
        "--dir", default=".devnet", help="devnet directory, replaced on each run (default .devnet)"
    )
    d.add_argument(
        "--block-time",
        type=float,
        default=2.0,
        metavar="S",
        help="target block time in seconds (default 2)",
    )
    d.add_argument(
        "--jobs",
        type=int,
        default=0,
        metavar="K",
        help="submit K demo jobs through the API and follow them",
    )
    d.add_argument(
        "--exit-when-done",
        action="store_true",
        help="exit once the jobs are certified in finalized blocks",
    )
    d.add_argument(
        "--timeout",
        type=float,
        default=600.0,
        help="with --jobs: give up on them after this many seconds (default 600)",
    )
    d.add_argument(
        "--gateways",
        type=int,
        default=1,
        metavar="G",
        help="with --jobs: send the free jobs through the APIs of nodes 0..G-1 in turn "
        "(default 1: node 0's; paid jobs always go through node 0, which holds the API key)",
    )
    d.set_defaults(func=cmd_devnet)


def _config_from(args: argparse.Namespace, data_dir) -> NodeConfig:
    base = load_config(data_dir.config_file)
    return base.with_overrides(
        listen=args.listen,
        bootstrap=args.bootstrap,
        max_peers=args.max_peers,
        relays=args.relays,
        genesis=args.genesis,
        host_model=args.host_model,
        threads=args.threads,
        worker=args.worker,
        validator=args.validator,
        api=args.api,
        free_tier_per_minute=args.free_tier_per_minute,
        paid_route=args.paid_route,
        log_level=args.log_level,
    )


def cmd_join(args: argparse.Namespace) -> int:
    import trio

    from aipg.node.app import Node, run_until_signal, setup_logging
    from aipg.node.datadir import DataDir
    from aipg.node.services.faults import Faults
    from aipg.stake.genesis import load_genesis, save_genesis

    data_dir = DataDir.resolve(args.data_dir)
    if not data_dir.exists():
        raise CliError(
            f"no node in {data_dir.root}: run `aipg-node init --data-dir {data_dir.root}` first"
        )
    config = _config_from(args, data_dir)
    saved = data_dir.root / "genesis.toml"
    if config.genesis:
        genesis = load_genesis(config.genesis)
        if saved.exists() and load_genesis(saved).hash != genesis.hash:
            raise CliError(
                f"{config.genesis} is another network's genesis than the one in {saved}; use a fresh --data-dir"
            )
        if not saved.exists():
            save_genesis(genesis, saved)
    elif saved.exists():
        genesis = load_genesis(saved)
    else:
        raise CliError(
            "no genesis: pass --genesis FILE the first time (it is saved in the data dir)"
        )
    faults = Faults(
        cheat_tokens=args.fault_cheat_tokens,
        swap_weights=args.fault_swap_weights,
        random_votes=args.fault_random_votes,
        double_sign=args.fault_double_sign,
        double_receipt=args.fault_double_receipt,
        flip_verdicts=args.fault_flip_verdicts,
        accuse=args.fault_accuse,
        copy_verdicts=args.fault_copy_verdicts,
        withhold_latents=args.fault_withhold_latents,
        lazy_votes=args.fault_lazy_votes,
        skip_forced=args.fault_skip_forced,
        never_sign=args.fault_never_sign,
        relay=args.fault_relay or "",
    )
    setup_logging(data_dir, config.log_level)
    node = Node(data_dir, config, genesis, faults=faults)
    trio.run(run_until_signal, node)
    return 0


def cmd_devnet(args: argparse.Namespace) -> int:
    from aipg.devnet.run import run_devnet_cli

    if args.nodes < 1:
        raise CliError("--nodes must be at least 1")
    if args.block_time <= 0 or args.block_time > 600:
        raise CliError("--block-time must be between 0 and 600 seconds")
    if not 1 <= args.gateways <= args.nodes:
        raise CliError("--gateways must be between 1 and --nodes")
    return run_devnet_cli(
        root=Path(args.dir),
        nodes=args.nodes,
        block_time_ms=int(args.block_time * 1000),
        jobs=args.jobs,
        exit_when_done=args.exit_when_done,
        timeout=args.timeout,
        out=sys.stdout,
        gateways=args.gateways,
    )
