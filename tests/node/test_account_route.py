"""``GET /api/v1/accounts/{address}`` reports a downtime jail (what `aipg-node unjail`
reads before it sends anything)."""

from __future__ import annotations

from aipg.node.http.routes_chain import chain_routes
from aipg.testing.apikit import app_for, running_api
from aipg.testing.chainkit import TEST_PARAMS, TestChain

from .apiclient import http

SHORT = TEST_PARAMS.replace(
    signed_blocks_window=8, min_signed_per_window_bps=5_000, downtime_jail_period=5
)


class FakeChainService:
    def __init__(self, state):
        self.chain = None
        self.state = state

    def next_nonce(self, address: bytes) -> int:
        return self.state.account(address).nonce

    async def submit_tx(self, tx):
        raise AssertionError("not used")


async def test_account_shows_when_a_validator_jailed_for_downtime_may_unjail(gateway):
    c = TestChain(params=SHORT)
    down, up = c.validators[3], c.validators[0]
    for _ in range(6):
        c.next(absent={down.public_bytes})
    app = app_for(gateway, extra_routes=chain_routes(FakeChainService(c.state), None))
    async with running_api(app) as api, http(api) as h:
        jailed = (await h.get(f"/api/v1/accounts/{down.address}")).json()
        fine = (await h.get(f"/api/v1/accounts/{up.address}")).json()
    assert jailed["downtime_jailed_until"] == 11 and jailed["height"] == 6
    assert fine["downtime_jailed_until"] is None
