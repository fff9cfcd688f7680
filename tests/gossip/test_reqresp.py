"""Request/response: multiplexing, handlers, timeouts, size limits, rate limits."""

from __future__ import annotations

import pytest
import trio

from aipg.gossip import (
    MemoryNetwork,
    NoHandler,
    NotConnected,
    PeerDisconnected,
    RateLimited,
    RemoteError,
    RequestTimeout,
    RequestTooLarge,
)
from aipg.testing.gossipkit import config, start_hosts

pytestmark = pytest.mark.timeout(60)


async def _pair(nursery, **cfg):
    network = MemoryNetwork()
    a, b = await start_hosts(nursery, 2, network=network, make_config=lambda i: config(i, **cfg))
    await a.connect(b.listen_addrs[0])
    return a, b


async def test_concurrent_requests_are_multiplexed_and_matched(nursery, autojump_clock):
    a, b = await _pair(nursery)

    async def echo_slowly(peer, data):
        # later requests answer first, so responses arrive out of order
        await trio.sleep(1.0 / (1 + int(data)))
        return b"echo " + data + b" from " + str(peer).encode()

    b.set_request_handler("sync", echo_slowly)
    results = {}

    async def ask(i):
        results[i] = await a.request(b.peer_id, "sync", b"%d" % i, timeout=5)

    async with trio.open_nursery() as n:
        for i in range(20):
            n.start_soon(ask, i)
    assert results == {i: b"echo %d from %s" % (i, str(a.peer_id).encode()) for i in range(20)}


async def test_timeout_no_handler_not_connected(nursery, autojump_clock):
    a, b = await _pair(nursery)

    async def never(peer, data):
        await trio.sleep_forever()

    b.set_request_handler("job", never)
    with pytest.raises(RequestTimeout, match="timed out"):
        await a.request(b.peer_id, "job", b"x", timeout=2)
    with pytest.raises(NoHandler):
        await a.request(b.peer_id, "blob", b"x", timeout=2)
    with pytest.raises(NotConnected):
        await b.request(b.peer_id, "job", b"x", timeout=2)


async def test_handler_failure_and_timeout_are_remote_errors(nursery, autojump_clock):
    a, b = await _pair(nursery, handler_timeout=3.0)

    async def broken(peer, data):
        raise KeyError("bug in the handler")

    async def slow(peer, data):
        await trio.sleep(10)
        return b"too late"

    b.set_request_handler("broken", broken)
    b.set_request_handler("slow", slow)
    with pytest.raises(RemoteError):
        await a.request(b.peer_id, "broken", b"x", timeout=5)
    with pytest.raises(RemoteError):
        await a.request(b.peer_id, "slow", b"x", timeout=5)
    # the host survived its handler's bug
    assert a.is_connected(b.peer_id)


async def test_size_limits(nursery, autojump_clock):
    a, b = await _pair(nursery)

    async def handler(peer, data):
        return b"r" * len(data)

    b.set_request_handler("blob", handler, max_request_size=1000, max_response_size=500)
    assert await a.request(b.peer_id, "blob", b"q" * 400) == b"r" * 400
    with pytest.raises(RequestTooLarge):
        await a.request(b.peer_id, "blob", b"q" * 1001)
    with pytest.raises(RemoteError):  # the response would be over its limit
        await a.request(b.peer_id, "blob", b"q" * 600)
    with pytest.raises(RequestTooLarge):
        await a.request(b.peer_id, "blob", b"q" * (5 << 20))


async def test_per_peer_rate_limit(nursery, autojump_clock):
    a, b = await _pair(nursery, request_rate=1.0, request_burst=5.0)
    for h in (a, b):  # the hosts' own reach traffic (AutoNAT, DHT self-lookup) comes first
        await h.reach.published.wait()
    await trio.sleep(6)  # and the bucket refills from it at one token a second

    async def handler(peer, data):
        return b"ok"

    b.set_request_handler("sync", handler)
    outcomes = []
    for _ in range(8):
        try:
            outcomes.append(await a.request(b.peer_id, "sync", b""))
        except RateLimited:
            outcomes.append("limited")
    assert outcomes == [b"ok"] * 5 + ["limited"] * 3
    await trio.sleep(2.5)  # the bucket refills at one token a second
    assert await a.request(b.peer_id, "sync", b"") == b"ok"


async def test_pending_request_fails_when_the_peer_goes_away(nursery, autojump_clock):
    a, b = await _pair(nursery)
    entered = trio.Event()

    async def stall(peer, data):
        entered.set()
        await trio.sleep_forever()

    b.set_request_handler("sync", stall)

    async def close_b():
        await entered.wait()
        await b.aclose()

    nursery.start_soon(close_b)
    with pytest.raises(PeerDisconnected):
        await a.request(b.peer_id, "sync", b"", timeout=30)


async def test_large_requests_cross_the_secure_channel_in_fragments(nursery):
    a, b = await start_hosts(nursery, 2)  # real websockets: each Noise fragment is one frame
    await a.connect(b.listen_addrs[0])

    async def reverse(peer, data):
        return data[::-1]

    b.set_request_handler("blob", reverse, max_request_size=1 << 20)
    payload = bytes(range(256)) * 1200  # 300 KiB: five Noise messages each way
    assert await a.request(b.peer_id, "blob", payload, timeout=10) == payload[::-1]
