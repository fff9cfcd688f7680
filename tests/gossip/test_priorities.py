"""Request priorities (D86): a peer's low-priority requests take its request budget only
above the reserve its high-priority ones keep, so they never crowd those out."""

from __future__ import annotations

import trio

from aipg.gossip import MemoryNetwork, RateLimited
from aipg.testing.gossipkit import config, start_hosts


async def _outcomes(a, b, protocol: str, payload: bytes, n: int) -> list:
    out = []
    for _ in range(n):
        try:
            out.append(await a.request(b.peer_id, protocol, payload))
        except RateLimited:
            out.append("limited")
    return out


async def test_low_priority_requests_leave_the_reserve_to_high_priority_ones(
    nursery, autojump_clock
):
    network = MemoryNetwork()
    make = lambda i: config(i, request_rate=1.0, request_burst=10.0)  # noqa: E731
    a, b = await start_hosts(nursery, 2, network=network, make_config=make)
    await a.connect(b.listen_addrs[0])
    for h in (a, b):  # the hosts' own reach traffic comes first
        await h.reach.published.wait()
    await trio.sleep(12)  # time passes (autojump): the budget refills to its burst of 10

    async def handler(peer, data):
        return b"ok:" + data

    b.set_request_handler("job", handler, priority=lambda data: 1 if data == b"chunk" else 0)
    # chunks take the budget down to the reserve (half the burst) and no further ...
    chunks = await _outcomes(a, b, "job", b"chunk", 8)
    assert chunks == [b"ok:chunk"] * 5 + ["limited"] * 3
    # ... which the results still find whole
    results = await _outcomes(a, b, "job", b"result", 6)
    assert results == [b"ok:result"] * 5 + ["limited"]
