"""Block sync between two stores, over a transport-agnostic request function."""

import pytest

from aipg.stake.block import Commit
from aipg.stake.chain import Chain
from aipg.stake.state import state_hash
from aipg.stake.sync import (
    SYNC_PROTOCOL,
    SyncError,
    SyncRequest,
    SyncResponse,
    SyncServer,
    sync_from,
)
from aipg.testing.chainkit import reference_chain
from aipg.wire import WireError, decode, encode


@pytest.fixture(scope="module")
def source():
    return reference_chain(25)


def _served_chain(tmp_path, c, n=None):
    chain = Chain.open(tmp_path / "peer.sqlite", c.genesis)
    for block, commit in list(zip(c.blocks, c.commits, strict=True))[:n]:
        chain.finalize(block, commit)
    return chain


async def test_fresh_store_syncs_from_a_peer(tmp_path, source):
    peer_chain = _served_chain(tmp_path, source)
    server = SyncServer(peer_chain.store)
    calls = []

    async def request(peer, protocol, data, timeout):
        assert protocol == SYNC_PROTOCOL and peer == "peer-a"
        calls.append(decode(data, SyncRequest))
        return server.handle(data)

    fresh = Chain.open(tmp_path / "fresh.sqlite", source.genesis)
    applied = await sync_from(fresh, request, "peer-a", batch=7)
    assert applied == 25 and fresh.height == 25
    assert [r.start for r in calls] == [1, 8, 15, 22]
    assert state_hash(fresh.state) == state_hash(peer_chain.state)
    assert fresh.store.finalized(25).block.hash == source.blocks[-1].hash
    assert await sync_from(fresh, request, "peer-a") == 0  # already caught up
    fresh.close()
    peer_chain.close()


async def test_bad_peers_are_caught(tmp_path, source):
    peer_chain = _served_chain(tmp_path, source, 5)
    good = SyncServer(peer_chain.store)

    def weaken(resp: SyncResponse) -> SyncResponse:
        fb = resp.blocks[0]
        c = fb.commit
        weak = Commit(c.height, c.round, c.block_hash, c.precommits[:2])
        return resp.replace(blocks=(fb.replace(commit=weak), *resp.blocks[1:]))

    def swap(resp):
        return resp.replace(blocks=resp.blocks[1:])

    cases = [
        (lambda data: b"\x93garbage", "malformed sync response"),
        (lambda data: encode(weaken(decode(good.handle(data), SyncResponse))), "more than 2/3"),
        (lambda data: encode(swap(decode(good.handle(data), SyncResponse))), "does not follow"),
    ]
    for answer, message in cases:
        fresh = Chain.open(tmp_path / f"fresh-{len(message)}.sqlite", source.genesis)

        async def request(peer, protocol, data, timeout, answer=answer):
            return answer(data)

        with pytest.raises(SyncError, match=message):
            await sync_from(fresh, request, "peer-b")
        assert fresh.height == 0  # nothing unverified was applied
        fresh.close()
    peer_chain.close()


def test_server_rejects_malformed_requests(tmp_path, source):
    peer_chain = _served_chain(tmp_path, source, 3)
    server = SyncServer(peer_chain.store)
    for bad in [b"", b"\x00", encode(SyncRequest(1, 1))[:-1]]:
        with pytest.raises(WireError):
            server.handle(bad)
    with pytest.raises(WireError):
        SyncRequest(1, 10_000)
    resp = decode(server.handle(encode(SyncRequest(2, 100))), SyncResponse)
    assert resp.head == 3 and [fb.block.height for fb in resp.blocks] == [2, 3]
    # The hand-built response is exactly the canonical encoding.
    assert server.handle(encode(SyncRequest(2, 100))) == encode(resp)
    peer_chain.close()


async def test_sync_with_bulk_signature_checks(tmp_path, source):
    from concurrent.futures import ThreadPoolExecutor

    from aipg.wire.keys import forget_verified

    peer_chain = _served_chain(tmp_path, source, 12)
    server = SyncServer(peer_chain.store)

    async def request(peer, protocol, data, timeout):
        return server.handle(data)

    forget_verified()
    fresh = Chain.open(tmp_path / "fresh.sqlite", source.genesis)
    with ThreadPoolExecutor(2) as pool:
        assert await sync_from(fresh, request, "p", batch=5, verify_map=pool.map) == 12
    assert state_hash(fresh.state) == state_hash(peer_chain.state)
    fresh.close()
    peer_chain.close()
