"""D84 in the ledger: a paid job on the gateway's latency route (assigned at once, to a
worker of the gateway's choosing, not the beacon's draw) earns its fee and nothing
from the work pool, so routing one's own jobs to one's own worker gains nothing."""

from __future__ import annotations

from aipg.stake.tx import TxKind, make_tx
from aipg.stake.useful_work import drawn_for_pool, fee_charged
from aipg.testing.chainkit import (
    AIPG,
    CHAIN,
    ECONOMY_PARAMS,
    TEST_COST,
    TestChain,
    half_past_the_draw,
    ident,
    make_jobs,
    register_workers,
)


def _registered_chain(workers) -> TestChain:
    """An economy chain where ``workers`` are bonded and registered for TEST_MODEL, at an
    epoch boundary (their registrations snapshotted: the draw exists)."""
    c = TestChain(n_validators=5, economy=True, params=ECONOMY_PARAMS)
    c.next(transactions=c.economy_txs(TEST_COST))
    c.next()
    c.next()
    return register_workers(c, workers)


def test_a_paid_job_routed_past_the_draw_earns_exactly_its_fee():
    ws = [ident(410 + i) for i in range(3)]
    c = _registered_chain(ws)
    alice = c.users[0]
    fee = 16 * AIPG
    specs = [(ws[0], dict(nonce=i, fee=fee, max_tokens=16, output_tokens=8)) for i in range(6)]
    jobs = make_jobs(c, specs)
    n = c.state.account(alice.address.raw).nonce
    escrows = [
        make_tx(alice, CHAIN, TxKind.ESCROW, n + i, amount=fee, job_id=j.id)
        for i, j in enumerate(jobs)
    ]
    c.next(transactions=escrows)
    # even jobs to their drawn worker (the drawn route); odd ones to another registered
    # worker, as the latency route may (the gateway's choice)
    certs = half_past_the_draw(c, jobs, specs, ws)
    assert [drawn_for_pool(c.state, x.job, x.receipt) for x in certs] == [
        i % 2 == 0 for i in range(6)
    ]
    before = {w.public_bytes: c.state.balance(w.address.raw) for w in ws}
    s = c.next(certificates=certs)
    earned = {w.public_bytes: s.balance(w.address.raw) - before[w.public_bytes] for w in ws}
    for i, x in enumerate(certs):
        charged = fee_charged(x.job, x.receipt)
        assert charged == 8 * AIPG  # 8 of 16 tokens: half the escrowed fee
        if i % 2:
            assert s.paid[x.receipt.job_id] == charged  # the fee, not a unit of pool
        else:
            assert s.paid[x.receipt.job_id] > charged  # the fee and a pool share
    # what each worker's balance gained is what it was paid, nothing more
    for key in earned:
        assert earned[key] == sum(
            s.paid[x.receipt.job_id] for x in certs if bytes(x.receipt.signer) == key
        )
    # and the client paid the fee of each job, the rest of each escrow returned
    assert not any(k.endswith(alice.address.raw) for k in s.escrows)
