"""The blob protocol between two real nodes (GossipHost, websockets on 127.0.0.1), with the
serving node's connection dropped mid-transfer and the node coming back."""

import hashlib
import json
import sys

import pytest
import trio

from aipg.gossip import GossipError, GossipHost, WebsocketTransport
from aipg.models.blob import BLOB_PROTOCOL, BlobFetcher, BlobServer
from aipg.models.store import BlobStore
from aipg.testing.gossipkit import config, identity

pytestmark = pytest.mark.timeout(60)

CHUNK = 64 << 10
DROP_AFTER = 6


def make_host(seed: int) -> GossipHost:
    """Host ``seed`` on websockets (a new one with the same seed is the node restarted)."""
    return GossipHost(identity(seed), config(seed), transport=WebsocketTransport())


async def test_fetch_over_two_real_nodes_survives_a_dropped_connection(nursery, tmp_path):
    data = hashlib.shake_256(b"real nodes").digest(1_500_007)
    digest = hashlib.sha256(data).digest()
    seeder_store = BlobStore(tmp_path / "seeder")
    seeder_store.put_bytes(data)
    server = BlobServer(seeder_store)
    served = 0
    drop = trio.Event()

    async def serve_then_hang(peer, request: bytes) -> bytes:
        """Serve DROP_AFTER chunks; then the node goes down mid-transfer."""
        nonlocal served
        if served == DROP_AFTER and not drop.is_set():
            drop.set()
            await trio.sleep_forever()  # cancelled when the host closes
        served += 1
        return await server.handle(peer, request)

    seeder = make_host(1)
    seeder.set_request_handler(BLOB_PROTOCOL, serve_then_hang)
    await nursery.start(seeder.run)
    fetcher_host = make_host(2)
    await nursery.start(fetcher_host.run)
    addresses = {seeder.peer_id: seeder.listen_addrs[0]}
    back_up = trio.Event()

    async def request(peer, protocol: str, payload: bytes, timeout: float) -> bytes:
        """What a node does: dial the peer when not connected (waiting for it to restart)."""
        if not fetcher_host.is_connected(peer):
            if drop.is_set():
                await back_up.wait()
            await fetcher_host.connect(addresses[peer])
        return await fetcher_host.request(peer, protocol, payload, timeout)

    async def drop_and_restart() -> None:
        await drop.wait()
        await seeder.aclose()  # the connection drops with a request in flight
        restarted = make_host(1)
        restarted.set_request_handler(BLOB_PROTOCOL, server.handle)
        await nursery.start(restarted.run)
        addresses[restarted.peer_id] = restarted.listen_addrs[0]
        back_up.set()

    nursery.start_soon(drop_and_restart)
    mine = BlobStore(tmp_path / "mine")
    fetcher = BlobFetcher(
        mine,
        request,
        chunk_size=CHUNK,
        timeout=10,
        transport_errors=(GossipError,),
        retry_backoff=0.05,
    )
    offsets = []
    with trio.fail_after(30):
        path = await fetcher.fetch(
            digest, len(data), [seeder.peer_id], lambda d, _t: offsets.append(d)
        )
    assert drop.is_set() and back_up.is_set()
    assert hashlib.sha256(path.read_bytes()).digest() == digest
    # Resumed where the drop left it, not from zero.
    assert offsets.count(DROP_AFTER * CHUNK) == 2 and offsets.count(0) == 1


async def test_cli_fetch_pulls_a_model_from_a_real_node(nursery, tmp_path, llm_dir):
    from aipg.models import load_model_dir, model_id_text
    from aipg.models.store import ModelStore

    seed_store = ModelStore(tmp_path / "seed")
    mid = seed_store.add_model_dir(llm_dir)
    seeder = make_host(3)
    seeder.set_request_handler(BLOB_PROTOCOL, BlobServer(seed_store.blobs).handle)
    await nursery.start(seeder.run)
    command = [
        sys.executable,
        "-m",
        "aipg.cli",
        "models",
        "fetch",
        model_id_text(mid),
        "--peer",
        str(seeder.listen_addrs[0]),
        "--data-dir",
        str(tmp_path / "node"),
        "--json",
    ]
    with trio.fail_after(60):
        done = await trio.run_process(
            command, capture_stdout=True, capture_stderr=True, check=False
        )
    assert done.returncode == 0, done.stderr.decode()
    assert json.loads(done.stdout)["model_id"] == model_id_text(mid)
    fetched = ModelStore(tmp_path / "node" / "blobs")
    assert fetched.model_ids() == [mid] and fetched.missing_files(mid) == []
    assert fetched.verify_model(mid) == []
    assert fetched.manifest(mid) == load_model_dir(llm_dir).manifest

    unknown = model_id_text(bytes(32))
    command[5] = unknown
    with trio.fail_after(60):
        done = await trio.run_process(
            command, capture_stdout=True, capture_stderr=True, check=False
        )
    err = done.stderr.decode()
    assert done.returncode == 1 and "could not fetch manifest" in err and "Traceback" not in err
