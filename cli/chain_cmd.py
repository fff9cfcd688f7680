"""Offline chain commands: ``aipg-node tokenomics`` and ``aipg-node genesis new``.

:func:`add_parser` registers both on the top-level argparse subparsers; each sets
``func(args) -> int`` (the exit status) as its default.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from aipg.stake.genesis import (
    MAINNET_PARAMS,
    ChainParams,
    GenesisError,
    genesis_to_toml,
    load_genesis,
    make_genesis,
)
from aipg.stake.tokenomics import Emission
from aipg.wire import Address, WireError, format_amount, load_identity, parse_amount
from aipg.wire.keys import KeyFileError


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add ``tokenomics`` and ``genesis`` to the ``aipg-node`` subcommands."""
    tok = subparsers.add_parser(
        "tokenomics",
        help="print the AIPG emission schedule",
        description="Print each era's heights, block reward, operations share and supply.",
    )
    tok.add_argument("--genesis", metavar="FILE", help="a genesis TOML (default: mainnet)")
    tok.set_defaults(func=run_tokenomics)

    gen = subparsers.add_parser("genesis", help="create genesis files")
    gen_sub = gen.add_subparsers(dest="genesis_command", required=True)
    new = gen_sub.add_parser(
        "new",
        help="write a genesis with given allocations and validators",
        description="Write a genesis TOML. Amounts are AIPG (e.g. 10000 or 0.5).",
    )
    new.add_argument("--chain-id", required=True)
    new.add_argument("--operations-wallet", required=True, metavar="ADDRESS")
    new.add_argument(
        "--alloc", action="append", default=[], metavar="ADDRESS=AMOUNT", help="repeatable"
    )
    new.add_argument(
        "--validator",
        action="append",
        default=[],
        metavar="KEY=STAKE",
        help="KEY is a 64-hex-digit public key or a key file; repeatable",
    )
    new.add_argument(
        "--param", action="append", default=[], metavar="NAME=VALUE", help="override a parameter"
    )
    new.add_argument("--genesis-time-ms", type=int, default=0)
    new.add_argument("--out", required=True, metavar="FILE")
    new.add_argument("--force", action="store_true", help="overwrite an existing file")
    new.set_defaults(func=run_genesis_new)


def _fail(message: str) -> int:
    print(f"aipg-node: {message}", file=sys.stderr)
    return 2


def run_tokenomics(args: argparse.Namespace) -> int:
    if args.genesis:
        try:
            g = load_genesis(args.genesis)
        except GenesisError as e:
            return _fail(f"bad genesis {args.genesis}: {e}")
        emission, name = Emission(g.params, g.supply), g.chain_id
    else:
        emission, name = Emission(MAINNET_PARAMS, 0), "mainnet parameters, empty genesis"
    p = emission.params
    print(f"AIPG emission schedule ({name})")
    print(
        f"genesis supply {format_amount(emission.genesis_supply)} AIPG; max supply "
        f"{format_amount(p.max_supply)} AIPG; halving every {p.halving_interval:,} blocks; "
        f"{p.operations_share_bps / 100:g}% of each reward to operations"
    )
    header = (
        f"{'era':>4} {'heights':>27} {'reward/block':>16} {'operations':>14} {'supply at end':>22}"
    )
    print(header)
    for era in emission.eras():
        heights = f"{era.first_height:,}–{era.last_height:,}"
        mark = "  (cap reached)" if era.clipped else ""
        print(
            f"{era.index:>4} {heights:>27} {format_amount(era.reward):>16} "
            f"{format_amount(era.operations_share):>14} {format_amount(era.supply_at_end):>22}{mark}"
        )
    cap = emission.cap_height()
    if cap is not None:
        print(f"the max supply is reached at height {cap:,}; later blocks mint nothing")
    else:
        print(f"supply converges to {format_amount(emission.supply_limit())} AIPG (below the cap)")
    return 0


def _split(text: str, what: str) -> tuple[str, str]:
    key, sep, value = text.rpartition("=")
    if not sep or not key or not value:
        raise ValueError(f"{what} must look like {what.upper()}=VALUE, got {text!r}")
    return key.strip(), value.strip()


def _validator_key(text: str) -> bytes:
    if len(text) == 64:
        try:
            return bytes.fromhex(text)
        except ValueError:
            pass
    path = Path(text)
    if path.exists():
        return load_identity(path).public_bytes
    raise ValueError(f"{text!r} is neither a 64-hex-digit public key nor a key file")


def _params(overrides: list[str]) -> ChainParams:
    values = {}
    for item in overrides:
        name, value = _split(item, "param")
        if not hasattr(MAINNET_PARAMS, name):
            raise ValueError(f"unknown parameter {name!r}")
        if name in ("block_reward", "max_supply", "min_validator_stake"):
            values[name] = parse_amount(value)
        else:
            values[name] = int(value.replace("_", ""))
    return MAINNET_PARAMS.replace(**values)


def run_genesis_new(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.exists() and not args.force:
        return _fail(f"{out} exists; pass --force to overwrite it")
    try:
        allocations = []
        for item in args.alloc:
            addr, amount = _split(item, "alloc")
            allocations.append((Address.from_string(addr), parse_amount(amount)))
        validators = []
        for item in args.validator:
            key, rest = _split(item, "validator")
            validators.append((_validator_key(key), parse_amount(rest), ""))
        genesis = make_genesis(
            args.chain_id,
            operations_wallet=Address.from_string(args.operations_wallet),
            allocations=allocations,
            validators=validators,
            params=_params(args.param),
            genesis_time_ms=args.genesis_time_ms,
        )
    except (ValueError, WireError, GenesisError, KeyFileError) as e:
        return _fail(f"cannot make genesis: {e}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(genesis_to_toml(genesis), encoding="utf-8")
    print(f"wrote {out} (chain {genesis.chain_id}, genesis sha256:{genesis.hash.hex()})")
    return 0
