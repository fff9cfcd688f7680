"""`aipg-node init` and `aipg-node keys show|import|export`."""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import json
import os
import sys
from pathlib import Path

from aipg.node.datadir import DataDir
from aipg.wire import Identity, WireError

from .errors import CliError


def add_parser(sub: argparse._SubParsersAction, data_dir_parent: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "init",
        parents=[data_dir_parent],
        help="create a data dir with a new node key and a commented config.toml",
        description="Create the data dir, a new Ed25519 node key (mode 0600) and a commented "
        "config.toml. Refuses to overwrite an existing key.",
    )
    p.add_argument("--json", action="store_true", help="print the identity as JSON")
    p.set_defaults(func=cmd_init)

    keys = sub.add_parser(
        "keys",
        help="show, import or export the node key",
        description="Manage the node's Ed25519 key.",
    )
    ksub = keys.add_subparsers(dest="keys_command", metavar="COMMAND", required=True)

    show = ksub.add_parser(
        "show", parents=[data_dir_parent], help="print the peer ID and account address"
    )
    show.add_argument("--json", action="store_true", help="print one JSON object")
    show.set_defaults(func=cmd_show)

    imp = ksub.add_parser(
        "import",
        parents=[data_dir_parent],
        help="install a libp2p Ed25519 private key as the node key",
        description="Read libp2p's protobuf PrivateKey encoding (raw bytes, base64 or hex) from FILE "
        "('-' for stdin) and install it as the node key.",
    )
    imp.add_argument("file", metavar="FILE", help="key file, or - for stdin")
    imp.add_argument("--force", action="store_true", help="replace an existing node key")
    imp.set_defaults(func=cmd_import)

    exp = ksub.add_parser(
        "export",
        parents=[data_dir_parent],
        help="write the node key in libp2p's protobuf encoding",
        description="Print the node key as base64 of libp2p's protobuf PrivateKey (as go-libp2p and "
        "IPFS configs store it), or write the raw protobuf to --out with mode 0600. This is your "
        "secret key: anyone who has it is your node.",
    )
    exp.add_argument("--out", metavar="FILE", help="write raw protobuf bytes to FILE (mode 0600)")
    exp.set_defaults(func=cmd_export)

    add_apikey_parser(sub, data_dir_parent)


def add_apikey_parser(
    sub: argparse._SubParsersAction, data_dir_parent: argparse.ArgumentParser
) -> None:
    p = sub.add_parser(
        "apikey",
        parents=[data_dir_parent],
        help="create a paid-tier API key on this gateway",
        description="Bind a new API key to the account whose key file is given: paid-tier requests "
        "with `Authorization: Bearer <key>` escrow their fees from that account. The gateway keeps "
        "the account key (custodial) and only a hash of the API key; the key is printed once. A "
        "running node picks the key up at its next request.",
    )
    p.add_argument(
        "--account-key",
        required=True,
        metavar="FILE",
        help="the paying account's key file (mode 0600)",
    )
    p.add_argument("--name", default="client", help="a label for the key (default: client)")
    p.set_defaults(func=cmd_apikey)


def cmd_apikey(args: argparse.Namespace) -> int:
    from aipg.node.apikeys import ApiKeyStore

    data_dir = DataDir.resolve(args.data_dir)
    if not data_dir.exists():
        raise CliError(f"no node in {data_dir.root}: run `aipg-node init` first")
    key = ApiKeyStore(data_dir).add(args.name, args.account_key)
    print(key)
    print("shown once: keep it; requests send it as `Authorization: Bearer <key>`", file=sys.stderr)
    return 0


def identity_summary(identity: Identity) -> dict[str, str]:
    return {
        "peer_id": str(identity.peer_id),
        "address": str(identity.address),
        "public_key": identity.public_bytes.hex(),
    }


def _print_identity(identity: Identity, as_json: bool, data_dir: DataDir) -> None:
    info = identity_summary(identity) | {"data_dir": str(data_dir.root)}
    if as_json:
        print(json.dumps(info))
    else:
        print(f"peer id:    {info['peer_id']}")
        print(f"address:    {info['address']}")
        print(f"public key: {info['public_key']}")
        print(f"data dir:   {info['data_dir']}")


def cmd_init(args: argparse.Namespace) -> int:
    data_dir = DataDir.resolve(args.data_dir)
    identity = data_dir.init()
    if not args.json:
        print(f"created {data_dir.root}")
    _print_identity(identity, args.json, data_dir)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    data_dir = DataDir.resolve(args.data_dir)
    _print_identity(data_dir.load_identity(), args.json, data_dir)
    return 0


def _parse_key_material(data: bytes) -> Identity:
    attempts = [data]
    text = data.strip()
    with contextlib.suppress(binascii.Error, ValueError):
        attempts.append(base64.b64decode(text, validate=True))
    with contextlib.suppress(UnicodeDecodeError, ValueError):
        attempts.append(bytes.fromhex(text.decode("ascii")))
    last: WireError | None = None
    for candidate in attempts:
        try:
            return Identity.from_libp2p_protobuf(candidate)
        except WireError as e:
            last = e
    raise CliError(f"not a libp2p Ed25519 private key (raw protobuf, base64 or hex): {last}")


def cmd_import(args: argparse.Namespace) -> int:
    data_dir = DataDir.resolve(args.data_dir)
    data = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
    identity = _parse_key_material(data)
    if data_dir.key_file.exists() and not args.force:
        raise CliError(
            f"{data_dir.key_file} already exists; pass --force to replace it (the old key is lost)"
        )
    if not data_dir.exists() and not data_dir.config_file.exists():
        data_dir.init(identity)
    else:
        data_dir.replace_identity(identity)
    print(f"imported key for {identity.peer_id} into {data_dir.root}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    data_dir = DataDir.resolve(args.data_dir)
    identity = data_dir.load_identity()
    blob = identity.to_libp2p_protobuf()
    if args.out:
        fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
        print(f"wrote the key of {identity.peer_id} to {args.out} (mode 0600)", file=sys.stderr)
    else:
        print(base64.b64encode(blob).decode())
    return 0
