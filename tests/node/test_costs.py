"""A hosting node's side of model costs (node/services/costs.py): its mempool refuses a
registration of another cost than its files give, and it registers what it hosts."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from aipg.models.cost import measure_cost
from aipg.node.services.catalog import ModelCatalog
from aipg.node.services.costs import ModelCosts
from aipg.node.services.mempool import Mempool
from aipg.node.services.verifier import VerifierService
from aipg.pouw import VerdictReason
from aipg.stake.models import registered_cost
from aipg.stake.types import LedgerError
from aipg.testing.chainkit import TestChain, register_tx


class _Chain:
    """The chain service's two members the costs service uses, over a TestChain."""

    def __init__(self, chain: TestChain, pool: Mempool):
        self.chain, self.pool, self.sent = chain, pool, []

    @property
    def state(self):
        return self.chain.state

    async def submit_tx(self, tx):
        self.sent.append(tx)
        return self.pool.admit(tx)


def _node(demo_models):
    c = TestChain(economy=True)
    catalog = ModelCatalog()
    llm, diffusion = (catalog.host(p) for p in demo_models)
    pool = Mempool(c.state, c.validators[0].public_bytes)
    chain = _Chain(c, pool)
    costs = ModelCosts(c.gateway, catalog, chain, pool.sign)
    pool.extra_check = costs.check
    return c, pool, chain, costs, llm, diffusion


def test_a_host_refuses_a_wrong_cost_of_its_model(demo_models):
    c, pool, _, _, llm, _ = _node(demo_models)
    fee = c.state.params.model_registration_fee
    true = measure_cost(llm.model_dir)
    inflated = true.replace(token_macs=true.token_macs * 10_000)
    with pytest.raises(LedgerError, match=r"registered cost differs .* token_macs"):
        pool.admit(register_tx(c.gateway, 0, inflated, fee))
    assert len(pool) == 0
    pool.admit(register_tx(c.gateway, 0, true, fee))  # the true cost is pooled
    assert len(pool) == 1
    other = true.replace(model_id=b"z" * 32, token_macs=1)  # not hosted here: not ours to judge
    pool.admit(register_tx(c.gateway, 1, other, fee))


async def test_a_host_registers_what_it_hosts_and_the_ledger_pays_by_it(demo_models):
    c, pool, _, costs, llm, diffusion = _node(demo_models)
    done = await costs.register_hosted()
    assert set(done) == {llm.id, diffusion.id}
    c.next(transactions=pool.transactions())
    assert registered_cost(c.state, llm.id) == measure_cost(llm.model_dir)
    assert registered_cost(c.state, diffusion.id).step_pixel > 0
    assert await costs.register_hosted() == []  # nothing left to register


async def test_a_wrong_cost_on_chain_stops_the_host_serving_and_certifying(demo_models):
    c, _, _, costs, llm, _ = _node(demo_models)
    fee = c.state.params.model_registration_fee
    true = measure_cost(llm.model_dir)
    # a proposer that does not host the model let a wrong cost in: the ledger cannot tell
    c.next(transactions=[register_tx(c.gateway, 0, true.replace(token_macs=1), fee)])
    costs.refresh()
    assert "token_macs" in llm.cost_refused
    verifier = VerifierService(c.validators[0], None, costs.catalog, None)
    report = SimpleNamespace(job=SimpleNamespace(model_id=llm.id))
    check, _ = await verifier._check(report)
    assert check.reason == VerdictReason.BINDING and "wrong" in check.detail
