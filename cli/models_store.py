"""`aipg-node models add | list | fetch`: the data dir's model store, filled from a model
directory or from peers over the blob protocol.

Each command is ``func(args) -> int``, registered by :func:`aipg.cli.models_cmd.add_parser`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .models_common import PROG, UsageError, id_text


def _store(args: argparse.Namespace):
    from aipg.models.store import ModelStore
    from aipg.node.datadir import DataDir

    return ModelStore(DataDir.resolve(args.data_dir).blobs_dir)


def cmd_add(args: argparse.Namespace) -> int:
    """``models add MODEL_DIR``: check that the model runs (its graphs against the manifest,
    a tiny job), copy it into the store, hash-checked; print its id."""
    from aipg.models import load_model_dir
    from aipg.models.hf_diffusers import check_runnable

    check_runnable(load_model_dir(Path(args.model_dir)))
    mid = _store(args).add_model_dir(Path(args.model_dir))
    print(id_text(mid))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    """``models list``: the models in the store and whether all their files are there."""
    from aipg.node.datadir import DataDir

    rows = []
    # Listing must not create a data dir that is not there.
    has_store = DataDir.resolve(args.data_dir).blobs_dir.is_dir()
    store = _store(args) if has_store else None
    for mid in store.model_ids() if store else []:
        manifest = store.manifest(mid)
        missing = len(store.missing_files(mid))
        rows.append(
            {
                "model_id": id_text(mid),
                "name": manifest.name,
                "version": manifest.version,
                "kind": manifest.kind,
                "complete": missing == 0,
            }
        )
    if args.json:
        print(json.dumps({"models": rows}))
    else:
        for r in rows:
            state = "" if r["complete"] else "  (incomplete)"
            print(f"{r['model_id']}  {r['kind']:<9} {r['name']} {r['version']}{state}")
    return 0


def cmd_fetch(args: argparse.Namespace) -> int:
    """``models fetch MODEL_ID --peer ADDR``: fetch a model from peers into the store."""
    import trio

    from aipg.wire import Multiaddr, parse_content_id

    mid = parse_content_id(args.model_id)
    peers = [Multiaddr.parse(text) for text in args.peer]
    if any(p.peer_id is None for p in peers):
        raise UsageError("--peer must end with /p2p/<peer id> so the peer is authenticated")
    store = _store(args)
    bar = ProgressBar(sys.stderr)
    trio.run(_fetch, store, mid, peers, args.timeout, bar)
    bar.finish()
    if args.json:
        print(json.dumps({"model_id": id_text(mid), "name": store.manifest(mid).name}))
    else:
        print(id_text(mid))
    return 0


async def _fetch(store, mid: bytes, addrs: list, timeout: float, bar: ProgressBar) -> None:
    """Run a short-lived gossip host (a throwaway identity: fetching needs no node key)."""
    import trio

    from aipg.gossip import GossipConfig, GossipError, GossipHost, WebsocketTransport
    from aipg.models import ModelError
    from aipg.models.blob import BlobFetcher, fetch_manifest, fetch_model
    from aipg.wire import Identity, WireError

    host = GossipHost(Identity.generate(), GossipConfig(), transport=WebsocketTransport())

    async def work() -> None:
        peers = []
        for addr in addrs:
            try:
                peers.append(await host.connect(addr))
            except GossipError as e:
                print(f"{PROG}: cannot reach {addr}: {e}", file=sys.stderr)
        if not peers:
            raise UsageError("none of the peers could be reached")
        fetcher = BlobFetcher(
            store.blobs, host.request, timeout=timeout, transport_errors=(GossipError,)
        )
        manifest = await fetch_manifest(fetcher, mid, peers)
        await fetch_model(store, manifest, fetcher, peers, bar.update)

    # Errors are carried out of the nursery by hand so they stay one-line errors instead of
    # an exception group.
    error: Exception | None = None
    async with trio.open_nursery() as nursery:
        await nursery.start(host.run)
        try:
            await work()
        except (ModelError, WireError, GossipError, UsageError, OSError) as e:
            error = e
        nursery.cancel_scope.cancel()
    if error is not None:
        raise UsageError(str(error))


class ProgressBar:
    """A one-line progress bar on a terminal; silent when the stream is not one."""

    WIDTH = 30

    def __init__(self, stream) -> None:
        self.stream = stream
        self.enabled = stream.isatty()
        self.shown = False

    def update(self, done: int, total: int) -> None:
        if not self.enabled or total <= 0:
            return
        filled = self.WIDTH * done // total
        bar = "#" * filled + "." * (self.WIDTH - filled)
        mib = 1 << 20
        self.stream.write(
            f"\r[{bar}] {100 * done // total:3d}%  {done / mib:.1f}/{total / mib:.1f} MiB"
        )
        self.stream.flush()
        self.shown = True

    def finish(self) -> None:
        if self.shown:
            self.stream.write("\n")
            self.stream.flush()
