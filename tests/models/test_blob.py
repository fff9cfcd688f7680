"""The blob protocol over in-process "connections": serving, resuming, lying peers."""

import hashlib

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from aipg.models import LlmRunner, ModelError, load_model_dir
from aipg.models.blob import (
    BLOB_PROTOCOL,
    BlobFetcher,
    BlobRequest,
    BlobResponse,
    BlobServer,
    BlobStatus,
    check_announcement,
    fetch_model,
    sign_announcement,
)
from aipg.models.store import BlobStore, ModelStore
from aipg.wire import Identity, WireError, decode, encode

CHUNK = 64 << 10


class Dropped(ConnectionError):
    """The in-process connection broke."""


class Network:
    """Peers by name, each a BlobServer; ``drop_after`` breaks a peer's connection after
    that many answered requests (once)."""

    def __init__(self) -> None:
        self.servers: dict[str, BlobServer] = {}
        self.drop_after: dict[str, int] = {}
        self.served: dict[str, int] = {}
        self.bytes_requested = 0

    def add(self, name: str, store: BlobStore) -> None:
        self.servers[name] = BlobServer(store)
        self.served[name] = 0

    async def request(self, peer: str, protocol: str, data: bytes, timeout: float) -> bytes:
        assert protocol == BLOB_PROTOCOL
        if self.drop_after.get(peer) == self.served[peer]:
            del self.drop_after[peer]
            raise Dropped(f"connection to {peer} reset")
        self.served[peer] += 1
        self.bytes_requested += decode(data, BlobRequest).length
        with trio.fail_after(timeout):
            return await self.servers[peer].handle(peer, data)


@pytest.fixture
def blob(tmp_path):
    data = hashlib.shake_256(b"blob").digest(1_000_003)  # not a multiple of the chunk size
    return data, hashlib.sha256(data).digest()


def seeded_store(path, data) -> BlobStore:
    store = BlobStore(path)
    store.put_bytes(data)
    return store


async def test_fetch_resumes_after_a_dropped_connection(tmp_path, blob):
    data, digest = blob
    net = Network()
    net.add("a", seeded_store(tmp_path / "a", data))
    net.add("b", seeded_store(tmp_path / "b", data))
    net.drop_after["a"] = 5
    mine = BlobStore(tmp_path / "mine")
    seen = []
    fetcher = BlobFetcher(mine, net.request, chunk_size=CHUNK, retry_backoff=0)
    path = await fetcher.fetch(digest, len(data), ["a", "b"], lambda d, t: seen.append((d, t)))
    assert path.read_bytes() == data and mine.has(digest)
    assert net.served["a"] == 5 and net.served["b"] > 0
    assert net.bytes_requested == len(data)  # resumed: nothing fetched twice
    assert seen[-1] == (len(data), len(data))
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert not mine.partial_path(digest).exists()


async def test_fetch_resumes_a_partial_file_from_an_earlier_run(tmp_path, blob):
    data, digest = blob
    net = Network()
    net.add("a", seeded_store(tmp_path / "a", data))
    mine = BlobStore(tmp_path / "mine")
    mine.partial_path(digest).write_bytes(data[: 3 * CHUNK])
    await BlobFetcher(mine, net.request, chunk_size=CHUNK, retry_backoff=0).fetch(
        digest, len(data), ["a"]
    )
    assert mine.read(digest) == data
    assert net.bytes_requested == len(data) - 3 * CHUNK


async def test_a_lying_peer_is_caught_by_the_hash_and_an_honest_one_completes(tmp_path, blob):
    data, digest = blob
    liar = BlobStore(tmp_path / "liar")
    liar.path(digest).write_bytes(data[:-1] + b"\0")  # same size, wrong content
    net = Network()
    net.add("liar", liar)
    net.add("honest", seeded_store(tmp_path / "honest", data))
    mine = BlobStore(tmp_path / "mine")
    await BlobFetcher(mine, net.request, chunk_size=CHUNK, retry_backoff=0).fetch(
        digest, len(data), ["liar", "honest"]
    )
    assert mine.read(digest) == data


async def test_no_good_peer_is_a_model_error(tmp_path, blob):
    data, digest = blob
    net = Network()
    net.add("empty", BlobStore(tmp_path / "empty"))
    mine = BlobStore(tmp_path / "mine")
    fetcher = BlobFetcher(mine, net.request, chunk_size=CHUNK, retry_backoff=0)
    with pytest.raises(ModelError, match="status 1"):
        await fetcher.fetch(digest, len(data), ["empty"])
    with pytest.raises(ModelError, match="no peer"):
        await fetcher.fetch(digest, len(data), [])
    net.add("full", seeded_store(tmp_path / "full", data))
    with pytest.raises(ModelError, match="bytes, not"):  # the manifest's size is the truth
        await fetcher.fetch(digest, len(data) + 1, ["full"])
    assert not mine.has(digest)


async def test_server_answers_bad_requests_with_a_status(tmp_path, blob):
    data, digest = blob
    server = BlobServer(seeded_store(tmp_path, data))
    bad = decode(await server.handle("p", b"\x93garbage"), BlobResponse)
    assert bad.status == BlobStatus.BAD_REQUEST
    past_end = BlobRequest(blob_id=digest, offset=len(data), length=10)
    assert (
        decode(await server.handle("p", encode(past_end)), BlobResponse).status
        == BlobStatus.BAD_RANGE
    )
    tail = BlobRequest(blob_id=digest, offset=len(data) - 3, length=10)
    resp = decode(await server.handle("p", encode(tail)), BlobResponse)
    assert resp.status == BlobStatus.OK and resp.data == data[-3:]
    with pytest.raises(WireError, match="length"):
        BlobRequest(blob_id=digest, offset=0, length=(1 << 20) + 1)


async def test_partial_blobs_are_never_served(tmp_path, blob):
    data, digest = blob
    store = BlobStore(tmp_path)
    store.partial_path(digest).write_bytes(data[:100])
    resp = decode(
        await BlobServer(store).handle(
            "p", encode(BlobRequest(blob_id=digest, offset=0, length=10))
        ),
        BlobResponse,
    )
    assert resp.status == BlobStatus.NOT_FOUND


async def test_fetch_a_whole_model_and_run_it(tmp_path, llm_dir):
    publisher = ModelStore(tmp_path / "publisher")
    mid = publisher.add_model_dir(llm_dir)
    net = Network()
    net.add("pub", publisher.blobs)
    net.drop_after["pub"] = 7
    host = ModelStore(tmp_path / "host")
    fetcher = BlobFetcher(host.blobs, net.request, chunk_size=CHUNK, retry_backoff=0)
    manifest = load_model_dir(llm_dir).manifest
    seen = []
    assert await fetch_model(host, manifest, fetcher, ["pub"], lambda d, t: seen.append(d)) == mid
    assert seen[-1] == sum(f.size for f in manifest.files)
    runner = LlmRunner(host.open_model(mid))
    assert runner.model.model_id == mid


def test_announcements_are_signed_and_checked(llm_dir):
    manifest = load_model_dir(llm_dir).manifest
    ann = sign_announcement(manifest, Identity.generate(), timestamp_ms=1_700_000_000_000)
    assert check_announcement(encode(ann)) == ann
    forged = ann.replace(manifest=manifest.replace(name="other"))
    with pytest.raises(WireError, match="signature"):
        check_announcement(encode(forged))


@settings(deadline=None)  # the machine is shared: wall time is noise
@given(
    blob_id=st.binary(min_size=32, max_size=32),
    offset=st.integers(0, 2**64 - 1),
    length=st.integers(1, 1 << 20),
    data=st.binary(max_size=256),
    status=st.integers(0, 255),
)
def test_blob_records_round_trip(blob_id, offset, length, data, status):
    req = BlobRequest(blob_id=blob_id, offset=offset, length=length)
    assert decode(encode(req), BlobRequest) == req
    resp = BlobResponse(blob_id=blob_id, offset=offset, total_size=length, status=status, data=data)
    assert decode(encode(resp), BlobResponse) == resp


async def test_a_failing_peer_is_retried_with_backoff(tmp_path, blob, autojump_clock):
    data, digest = blob
    calls = []

    async def always_down(peer, protocol, payload, timeout):
        calls.append(trio.current_time())
        raise Dropped("connection refused")

    fetcher = BlobFetcher(BlobStore(tmp_path), always_down, retry_backoff=1.0)
    with pytest.raises(ModelError, match="Dropped"):
        await fetcher.fetch(digest, len(data), ["down"])
    assert [round(t - calls[0], 3) for t in calls] == [0.0, 1.0, 3.0]


async def test_concurrent_fetches_of_one_blob_fetch_it_once(tmp_path, blob):
    data, digest = blob
    net = Network()
    net.add("a", seeded_store(tmp_path / "a", data))
    fetcher = BlobFetcher(BlobStore(tmp_path / "mine"), net.request, chunk_size=CHUNK)
    results = []

    async def fetch_one() -> None:
        results.append(await fetcher.fetch(digest, len(data), ["a"]))

    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(fetch_one)
    assert len(set(results)) == 1 and results[0].read_bytes() == data
    assert net.bytes_requested == len(data)


async def test_a_corrupted_file_is_removed_and_fetched_again(tmp_path, llm_dir):
    publisher = ModelStore(tmp_path / "publisher")
    mid = publisher.add_model_dir(llm_dir)
    host = ModelStore(tmp_path / "host")
    host.add_model_dir(llm_dir)
    decoder = host.manifest(mid).files[0]
    path = host.blobs.path(decoder.sha256)
    path.write_bytes(path.read_bytes()[:-1] + b"\0")
    with pytest.raises(ModelError, match="sha256"):
        LlmRunner(host.open_model(mid))
    assert host.verify_model(mid) == [decoder]
    net = Network()
    net.add("pub", publisher.blobs)
    fetcher = BlobFetcher(host.blobs, net.request, chunk_size=CHUNK, retry_backoff=0)
    await fetch_model(host, host.manifest(mid), fetcher, ["pub"])
    assert net.bytes_requested == decoder.size  # only the bad file came again
    assert LlmRunner(host.open_model(mid)).model.model_id == mid
