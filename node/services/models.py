"""The node's models: its content-addressed store, the ``blob`` protocol, announcements
on ``/aipg/1/models``, and fetching the models it was asked to host.

- ``--host-model DIR`` imports the directory into the store (every file hash-checked)
  and hosts it at once;
- ``--host-model sha256:<id>`` hosts a published model: the manifest and then every
  missing file are fetched from peers (announcers first) in the background, resuming
  after broken connections, and the model is hosted once every file verifies;
- every hosted model is announced, signed by this node, when it is added and then
  periodically, so that nodes joining later learn what the network serves;
- every node serves the blobs it has over ``blob``.
"""

from __future__ import annotations

import logging
import random
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio

from aipg.gossip import GossipError, GossipHost
from aipg.models import (
    BlobFetcher,
    BlobServer,
    ModelAnnouncement,
    ModelError,
    ModelStore,
    fetch_manifest,
    fetch_model,
    model_id_text,
    sign_announcement,
)
from aipg.node.protocol.messages import topic
from aipg.pouw.bounds import evict_over
from aipg.wire import Identity, PeerId, WireError, encode, parse_content_id

from .catalog import KnownModel, ModelCatalog

log = logging.getLogger("aipg.node.models")

ANNOUNCE_INTERVAL_S = 10.0
# Others heard announcing a model within one interval that make our own announcement of
# it redundant (D88): however many nodes host a model, the network carries a few
# announcements of it per interval, not one per host.
ANNOUNCE_ENOUGH = 3
FETCH_RETRY_S = 2.0
# Peers remembered per model as its announcers (asked first for its files), the least
# recently heard dropped first: a few are enough to fetch from, and strangers are free.
MAX_ANNOUNCERS_PER_MODEL = 16


class ModelService:
    def __init__(
        self, identity: Identity, host: GossipHost, catalog: ModelCatalog, blobs_dir: Path
    ):
        self.identity = identity
        self.host = host
        self.catalog = catalog
        self.store = ModelStore(blobs_dir)
        self.server = BlobServer(self.store.blobs)
        self.fetcher = BlobFetcher(self.store.blobs, host.request, transport_errors=(GossipError,))
        # model id -> its announcers, least recently heard first; only models the catalog
        # knows (so bounded as the catalog is)
        self.announcers: dict[bytes, OrderedDict[PeerId, None]] = {}
        self.fetching: dict[bytes, str] = {}  # model id -> progress text
        self._nursery: trio.Nursery | None = None
        # model id -> other announcers heard since our last periodic announcement
        # (at most ANNOUNCE_ENOUGH each; only models the catalog knows)
        self._heard: dict[bytes, set[PeerId]] = {}
        self.announcements_skipped = 0

    async def run(self, specs: tuple[str, ...], *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for spec in specs:
                if spec.startswith("sha256:"):
                    mid = parse_content_id(spec)
                    nursery.start_soon(self._fetch_and_host, mid)
                else:
                    self.host_dir(Path(spec))
            task_status.started()
            await self._announce_forever()

    # -- hosting ---------------------------------------------------------------------------

    def host_dir(self, path: Path) -> KnownModel:
        """Import a model directory into the store and host it. Raises ModelError."""
        mid = self.store.add_model_dir(path)
        return self._host(mid)

    def _host(self, mid: bytes) -> KnownModel:
        model = self.catalog.host_model(self.store.open_model(mid))
        log.info("hosting %s (%s)", model.manifest.name, model.id_text)
        return model

    async def publish(self, path: Path) -> KnownModel:
        """``aipg-node publish``: store, host and announce a model directory now."""
        model = await trio.to_thread.run_sync(self.host_dir, path)
        await self._announce(model)
        return model

    async def _fetch_and_host(self, mid: bytes) -> None:
        """Fetch a published model from peers until it is complete, then host it."""
        name = model_id_text(mid)
        while True:
            peers = self._peers_for(mid)
            if peers:
                try:
                    if mid not in self.store.model_ids():
                        manifest = await fetch_manifest(self.fetcher, mid, peers)
                    else:
                        manifest = self.store.manifest(mid)
                    self.fetching[mid] = "0%"
                    await fetch_model(
                        self.store,
                        manifest,
                        self.fetcher,
                        peers,
                        self._progress(mid, manifest.name),
                    )
                    self.fetching.pop(mid, None)
                    model = self._host(mid)
                    await self._announce(model)
                    return
                except ModelError as e:
                    log.info("fetching %s: %s; retrying", name, e)
            await trio.sleep(FETCH_RETRY_S)  # no peer has it yet: ask again after a while

    def _peers_for(self, mid: bytes) -> list[PeerId]:
        connected = self.host.connected_peers()
        first = [p for p in self.announcers.get(mid, ()) if p in connected]
        return first + [p for p in connected if p not in first]

    def _progress(self, mid: bytes, name: str) -> Callable[[int, int], None]:
        last = [-1]

        def progress(done: int, total: int) -> None:
            pct = 100 * done // total if total else 100
            self.fetching[mid] = f"{pct}%"
            if pct // 25 != last[0]:
                last[0] = pct // 25
                log.info("fetching %s: %d%% of %.1f MiB", name, pct, total / (1 << 20))

        return progress

    # -- announcements ---------------------------------------------------------------------

    async def _announce(self, model: KnownModel) -> None:
        ann = sign_announcement(model.manifest, self.identity, time.time_ns() // 1_000_000)
        await self.host.publish(topic("models"), encode(ann))

    async def _announce_forever(self) -> None:
        """Announce every hosted model each interval (jittered, so that hosts take
        turns), unless ANNOUNCE_ENOUGH others announced it since our last turn."""
        rng = random.Random()  # jitter only: nothing here needs to be reproducible
        while True:
            await trio.sleep(ANNOUNCE_INTERVAL_S * rng.uniform(0.75, 1.25))
            heard, self._heard = self._heard, {}
            for model in self.catalog.hosted():
                if len(heard.get(model.id, ())) >= ANNOUNCE_ENOUGH:
                    self.announcements_skipped += 1
                    continue
                await self._announce(model)

    def on_announcement(self, ann: ModelAnnouncement, author: PeerId) -> None:
        model = self.catalog.announce(ann.manifest)
        peers = self.announcers.setdefault(model.id, OrderedDict())
        peers[author] = None
        peers.move_to_end(author)
        evict_over(peers, MAX_ANNOUNCERS_PER_MODEL)
        heard = self._heard.setdefault(model.id, set())
        if len(heard) < ANNOUNCE_ENOUGH:
            heard.add(author)
        for mid in [m for m in self.announcers if self.catalog.get(m) is None]:
            del self.announcers[mid]  # the catalog forgot the model
            self._heard.pop(mid, None)

    # -- blob protocol ---------------------------------------------------------------------

    async def serve_blob(self, peer: PeerId, request: bytes) -> bytes:
        return await self.server.handle(peer, request)


Handler = Callable[[PeerId, bytes], Awaitable[bytes]]
__all__ = ["ModelService", "WireError"]
