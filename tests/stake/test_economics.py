"""Issue 12 in the ledger: registered model costs pay the work (never the receipt's
figure), the pool is never carried to a later block, and a gateway's pool is capped by
its bond (stake/models.py, stake/pool.py)."""

from __future__ import annotations

import pytest

from aipg.models import DiffusionParams
from aipg.models.cost import COST_KIND_DIFFUSION, ModelCost, llm_job_macs
from aipg.stake.ledger import apply_block, check_transaction
from aipg.stake.models import registered_cost
from aipg.stake.tokenomics import split_reward
from aipg.stake.tx import TxKind, make_tx
from aipg.stake.types import BPS, LedgerError
from aipg.stake.useful_work import drawn_for_pool
from aipg.testing.chainkit import (
    AIPG,
    CHAIN,
    ECONOMY_PARAMS,
    TEST_COST,
    TEST_MODEL,
    TestChain,
    certificates_for,
    half_past_the_draw,
    ident,
    make_certificate,
    make_certificates,
    make_jobs,
    register_tx,
    register_workers,
)
from aipg.wire import encode

WORKER, OTHER = ident(300), ident(301)


def _chain(params=ECONOMY_PARAMS, cost=TEST_COST, n=5) -> TestChain:
    c = TestChain(n_validators=n, economy=True, params=params)
    c.next(transactions=c.economy_txs(cost))
    c.next()
    c.next()
    return c


def _pool(s) -> int:
    return split_reward(s.params, s.params.block_reward).work


def test_a_registration_puts_the_cost_on_chain_and_burns_its_fee():
    c = TestChain(economy=True)
    g = c.gateway
    fee = c.state.params.model_registration_fee
    burned = c.state.burned
    s = c.next(transactions=[register_tx(g, 0, TEST_COST, fee)])
    assert registered_cost(s, TEST_MODEL) == TEST_COST
    assert s.models[TEST_MODEL].registrant == g.public_bytes
    assert s.burned - burned == fee + _pool(s)  # the fee, and the block's unpaid pool
    again = register_tx(g, 1, TEST_COST.replace(token_macs=10**9), fee)
    with pytest.raises(LedgerError, match="already registered; a cost never changes"):
        check_transaction(s, again)
    other = TEST_COST.replace(model_id=b"o" * 32)
    cases = [
        (register_tx(g, 1, other, fee - 1), "burns at least"),
        (make_tx(g, CHAIN, TxKind.REGISTER_MODEL, 1, amount=fee, job_id=b"o" * 32), "not a Model"),
        (
            make_tx(
                g, CHAIN, TxKind.REGISTER_MODEL, 1, amount=fee, job_id=b"x" * 32, memo=encode(other)
            ),
            "for another model",
        ),
        (register_tx(g, 1, other.replace(token_macs=0), fee), "needs token MACs"),
        (register_tx(g, 1, ModelCost(b"d" * 32, COST_KIND_DIFFUSION, step_pixel=5), fee), "limits"),
    ]
    for tx, why in cases:
        with pytest.raises(LedgerError, match=why):
            check_transaction(s, tx)


def test_inflated_work_units_are_paid_the_registered_cost():
    c = _chain()
    honest = make_certificate(c, WORKER, nonce=1, output_tokens=5)
    # the gateway's job claims a million times the cost factor and the receipt the units
    # that go with it: pouw's consistency check passes, the ledger ignores both figures
    greedy = make_certificate(c, OTHER, nonce=2, output_tokens=5, job_over={"cost_milli": 10**9})
    assert greedy.receipt.work_units == 10**6 * honest.receipt.work_units
    s = c.next(certificates=[honest, greedy])
    units = llm_job_macs(TEST_COST, 3, 5) // 1000
    assert units == 8
    assert s.paid[honest.receipt.job_id] == s.paid[greedy.receipt.job_id] == _pool(s) // 2


def test_counts_beyond_the_registered_limits_are_refused():
    c = _chain(cost=TEST_COST.replace(max_prompt_tokens=2, max_total_tokens=6))
    over = make_certificate(c, WORKER, nonce=1)
    with pytest.raises(LedgerError, match=r"certificate 0: 3 prompt .* over the model's limits"):
        apply_block(c.state, c.build(certificates=[over]))
    c = _chain(cost=TEST_COST.replace(max_prompt_tokens=5, max_total_tokens=6))
    long = make_certificate(c, WORKER, nonce=1, output_tokens=4)  # 3 + 4 > 6
    with pytest.raises(LedgerError, match="over the model's limits"):
        apply_block(c.state, c.build(certificates=[long]))
    ok = make_certificate(c, WORKER, nonce=2, output_tokens=3)
    assert c.next(certificates=[ok]).paid[ok.receipt.job_id] > 0


def test_an_unregistered_model_earns_no_pool_but_its_fee():
    c = TestChain(economy=True)
    c.next(transactions=c.economy_txs()[:1])  # the bond, no registration
    c.next()
    c.next()
    alice = c.users[0]
    paid = make_certificate(c, WORKER, nonce=1, fee=2 * AIPG, output_tokens=16, max_tokens=16)
    free = make_certificate(c, OTHER, nonce=2)
    esc = make_tx(alice, CHAIN, TxKind.ESCROW, 0, amount=2 * AIPG, job_id=paid.receipt.job_id)
    c.next(transactions=[esc])
    burned = c.state.burned
    s = c.next(certificates=[paid, free])
    assert s.paid[paid.receipt.job_id] == 2 * AIPG and free.receipt.job_id not in s.paid
    assert s.burned - burned == _pool(s)


def test_a_job_after_an_idle_spell_earns_nothing_extra():
    busy, idle = _chain(), _chain()
    busy.next(certificates=[make_certificate(busy, OTHER, nonce=7)])
    for _ in range(6):  # six blocks without work
        idle.next()
    a = make_certificate(busy, WORKER, nonce=1)
    b = make_certificate(idle, WORKER, nonce=1)
    sa = busy.next(certificates=[a])
    sb = idle.next(certificates=[b])
    assert sa.paid[a.receipt.job_id] == sb.paid[b.receipt.job_id] == _pool(sb)
    assert sb.work_pool == sa.work_pool == 0


def test_a_gateway_earns_at_most_its_bond_share_and_does_not_dilute_others():
    # cap factor 1: a gateway earns at most its share of all bonded stake
    c = _chain(params=ECONOMY_PARAMS.replace(gateway_pool_cap_bps=BPS, pool_budget_blocks=1))
    honest = c.users[1]
    c.next(transactions=[make_tx(honest, CHAIN, TxKind.BOND, 0, amount=9_000 * AIPG)])
    bonded = sum(b.stake for b in c.state.bonds.values())
    pool = _pool(c.state)
    cap = pool * 9_000 * AIPG // bonded
    # the adversary (the economy gateway) invents 20 long jobs for its own worker, the
    # honest gateway (same bond) routes one short job
    specs = [(WORKER, dict(nonce=i, max_tokens=200, output_tokens=200)) for i in range(20)]
    *own, real = make_certificates(c, [*specs, (OTHER, dict(nonce=99, gateway=honest))])
    s = c.next(certificates=[*own, real])
    adversary = sum(s.paid[x.receipt.job_id] for x in own)
    assert cap - 20 <= adversary <= cap  # its cap (less rounding), however much it invents
    assert s.paid[real.receipt.job_id] == cap  # the honest one is capped too, not diluted
    alone = _chain(params=ECONOMY_PARAMS.replace(gateway_pool_cap_bps=BPS, pool_budget_blocks=1))
    alone.next(transactions=[make_tx(honest, CHAIN, TxKind.BOND, 0, amount=9_000 * AIPG)])
    solo = make_certificate(alone, OTHER, nonce=99, gateway=honest)
    assert alone.next(certificates=[solo]).paid[solo.receipt.job_id] == cap
    # a gateway with no bond earns nothing from the pool
    nobody = make_certificate(c, OTHER, nonce=5, gateway=ident(777))
    assert c.next(certificates=[nobody]).paid.get(nobody.receipt.job_id, 0) == 0


def test_paid_work_earns_its_fee_plus_its_pool_share():
    c = _chain()
    alice = c.users[0]
    paid = make_certificate(c, WORKER, nonce=1, fee=16 * AIPG, output_tokens=8, max_tokens=16)
    free = make_certificate(c, OTHER, nonce=2, output_tokens=8)
    esc = make_tx(alice, CHAIN, TxKind.ESCROW, 0, amount=16 * AIPG, job_id=paid.receipt.job_id)
    c.next(transactions=[esc])
    s = c.next(certificates=[paid, free])
    share = s.paid[free.receipt.job_id]
    assert share == _pool(s) // 2
    assert s.paid[paid.receipt.job_id] == 8 * AIPG + share


def test_diffusion_latent_pixels_follow_the_job():
    cost = ModelCost(
        TEST_MODEL,
        COST_KIND_DIFFUSION,
        step_pixel=1_000,
        max_steps=50,
        max_latent_pixels=4096,
        vae_scale_factor=8,
    )
    c = _chain(cost=cost)
    image = {"llm": None, "diffusion": DiffusionParams(steps=4, guidance_milli=1000)}

    def counts(pixels):  # the receipt's work units follow its counts (pouw checks that)
        return {"latent_pixels": pixels, "work_units": 4 * pixels}

    ok = make_certificate(c, WORKER, nonce=1, job_over=image, receipt_over=counts(64))
    lie = make_certificate(c, OTHER, nonce=2, job_over=image, receipt_over=counts(4096))
    with pytest.raises(LedgerError, match="4096 latent pixels; the job's are 64"):
        apply_block(c.state, c.build(certificates=[lie]))
    assert c.next(certificates=[ok]).paid[ok.receipt.job_id] == _pool(c.state)


def test_a_worker_earns_at_most_its_bond_share_over_any_stretch():
    params = ECONOMY_PARAMS.replace(worker_pool_cap_bps=BPS, pool_budget_blocks=2)
    c = _chain(params=params)
    worker = c.users[2]
    c.next(transactions=[make_tx(worker, CHAIN, TxKind.BOND, 0, amount=9_000 * AIPG)])
    pool = _pool(c.state)
    rate = pool * 9_000 * AIPG // sum(b.stake for b in c.state.bonds.values())
    paid = []
    specs = [[(worker, dict(nonce=10 * i + j)) for j in range(3)] for i in range(5)]
    jobs = make_jobs(c, [x for round_ in specs for x in round_])
    for i in range(5):  # however much it does, a block pays it at most its budget
        certs = certificates_for(c, jobs[3 * i : 3 * i + 3], specs[i])
        s = c.next(certificates=certs)
        paid.append(sum(s.paid.get(x.receipt.job_id, 0) for x in certs))
    assert all(rate - 3 <= p <= rate for p in paid)  # a new key starts with one block's
    #                                                   worth, and earns one a block
    for _ in range(10):  # idle: the budget refills, but to two blocks' worth only
        c.next()
    cert = make_certificate(c, worker, nonce=99)
    assert 2 * rate - 1 <= c.next(certificates=[cert]).paid[cert.receipt.job_id] <= 2 * rate
    assert b"w" + worker.public_bytes in c.state.pool_budgets  # spent: a row until it refills


def test_a_job_routed_past_the_draw_earns_its_fee_only():
    # D64: with workers registered for the model, only the drawn one earns pool shares
    c = _chain()
    ws = [ident(400 + i) for i in range(3)]
    register_workers(c, ws)
    specs = [(ws[0], dict(nonce=i, output_tokens=8)) for i in range(6)]
    jobs = make_jobs(c, specs)
    # half the jobs to their drawn worker, half to another registered one
    certs = half_past_the_draw(c, jobs, specs, ws)
    assert [drawn_for_pool(c.state, x.job, x.receipt) for x in certs] == [
        i % 2 == 0 for i in range(6)
    ]
    s = c.next(certificates=certs)
    for i, x in enumerate(certs):
        paid = s.paid.get(x.receipt.job_id, 0)
        assert (paid == 0) if i % 2 else (paid > 0)  # a free job routed past it: nothing
    assert s.burned > 0  # the routed jobs' would-be shares are not handed to anyone
    # with nobody registered for a model there is no draw: budgets alone bound it
    bare = _chain()
    [cert] = make_certificates(bare, [(OTHER, dict(nonce=1))])
    assert drawn_for_pool(bare.state, cert.job, cert.receipt)
    assert bare.next(certificates=[cert]).paid[cert.receipt.job_id] > 0
