"""End to end: real `aipg-node join` processes on 127.0.0.1, driven like a user would.

Each test plans a fresh devnet (4 validators that also host the demo models), starts the
processes, talks to node 0's gateway through the official ``openai`` client and raw
HTTP, and reads the result back from the API and from the nodes' chain stores.
"""

from __future__ import annotations

import base64
import sys
from fractions import Fraction
from pathlib import Path

import httpx
import openai
import pytest
import trio

from aipg.devnet.plan import Devnet, plan_devnet
from aipg.devnet.run import aipg_job_id, build_demo_models
from aipg.models.cost import ModelCost
from aipg.node.apikeys import ApiKeyStore
from aipg.node.datadir import DataDir
from aipg.pouw import Tier
from aipg.stake.genesis import load_genesis
from aipg.stake.ledger import apply_block
from aipg.stake.state import State
from aipg.stake.store import ChainStore
from aipg.stake.tx import TxKind
from aipg.stake.useful_work import drawn_for_pool
from aipg.wire import Address, decode, load_identity, parse_amount

pytestmark = pytest.mark.slow

NODES = 4
BLOCK_TIME_MS = 1000


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> dict[str, str]:
    return build_demo_models(tmp_path_factory.mktemp("models"))


def plan(tmp_path: Path, models: dict[str, str]):
    """A fresh devnet whose node 0 hosts the (prebuilt) demo models from their
    directories; the other nodes fetch them by id from the mesh."""
    return plan_devnet(
        tmp_path / "devnet", NODES, block_time_ms=BLOCK_TIME_MS, build_models=lambda _dir: models
    )


async def get(url: str) -> dict:
    async with httpx.AsyncClient(timeout=30) as c:
        r = await c.get(url)
        r.raise_for_status()
        return r.json()


async def wait_for(predicate, what: str, timeout: float = 90.0, poll: float = 0.25):
    """Poll another process's state (over HTTP) until ``predicate()`` returns truthy."""
    with trio.move_on_after(timeout):
        while True:
            value = await predicate()
            if value:
                return value
            await trio.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


async def job_in_block(api: str, job_id: str, timeout: float = 90.0) -> dict:
    async def check():
        view = await get(f"{api}/api/v1/jobs/{job_id}")
        return view if view.get("block_height") is not None else None

    return await wait_for(check, f"job {job_id[:12]} in a finalized block", timeout)


def openai_client(api: str, key: str = "free") -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{api}/v1", api_key=key, max_retries=0, timeout=120)


# ------------------------------------------------------------------ tokenomics replay


def expected_balances(
    store_path: Path, genesis_path: Path
) -> tuple[dict[bytes, int], dict[bytes, int], int, dict[bytes, int]]:
    """Replay the finalized chain with plain arithmetic from the genesis parameters:
    the operations share, the work pool (each block's own, paid by the registered costs
    within the gateways' and workers' budgets, the rest burned: :func:`_pool_payments`), the
    validators' share (proposer bonus, the rest to the verdict pool, paid to valid votes
    in certificates by the work units they checked, carried while none earns it), and
    escrows (locked by the payer; on certification of a paid job its client's escrow
    pays the worker the fee pro rata to the output tokens, the rest back). Returns the
    expected and actual balances, the height, and what each certified job paid."""
    genesis = load_genesis(genesis_path)
    p = genesis.params
    balances = {a.address: a.amount for a in genesis.allocations}
    stakes = {v.public_key: v.stake for v in genesis.validators}
    pool = 0
    verdict_pool = 0
    costs: dict[bytes, ModelCost] = {}  # registered model costs
    budgets: dict[bytes, tuple[int, int]] = {}  # role + key -> (budget, height)
    escrows: dict[tuple[bytes, bytes], int] = {}  # (job id, payer) -> amount
    job_paid: dict[bytes, int] = {}
    store = ChainStore(store_path, genesis)
    height = store.height
    # Only whether a certificate's worker is the one the beacon drew (D64) comes from
    # the real ledger's states (the draw is D58's, tested in tests/stake); the money is
    # replayed below with plain arithmetic.
    state = State.from_genesis(genesis)
    try:
        for fb in store.finalized_range(1, height):
            block = fb.block
            parent, state = state, apply_block(state, block)
            proposer = Address.from_public_key(block.header.proposer).raw
            for tx in block.body.transactions:
                balances[tx.sender] -= tx.fee
                balances[proposer] = balances.get(proposer, 0) + tx.fee
                assert tx.kind in (
                    TxKind.ESCROW,
                    TxKind.TRANSFER,
                    TxKind.COMMIT,
                    TxKind.REGISTER_WORKER,
                    TxKind.REGISTER_MODEL,
                ), "the test and the nodes send no other kind"
                if tx.kind in (TxKind.COMMIT, TxKind.REGISTER_WORKER):
                    continue  # a job's commitment, a worker's registration (D56, D58): no money
                balances[tx.sender] -= tx.amount
                if tx.kind == TxKind.REGISTER_MODEL:  # the nodes register their models
                    costs[tx.job_id] = decode(tx.memo, ModelCost)  # (the fee is burned)
                elif tx.kind == TxKind.ESCROW:
                    escrows[tx.job_id, tx.sender] = tx.amount
                else:
                    balances[tx.recipient] = balances.get(tx.recipient, 0) + tx.amount
            work: dict[bytes, tuple[bytes, int, bytes, bytes]] = {}  # job -> worker, units, ...
            checked: dict[bytes, int] = {}  # job -> its units by the registered cost
            for cert in block.body.certificates:
                if not cert.verdicts:  # a claim (D79): a devnet's new workers are all
                    assert cert.receipt.job_id not in parent.certified  # audited, so a
                    continue  # certificate pays it (asserted below: no job paid unaudited)
                worker = Address.from_public_key(cert.receipt.signer).raw
                job_paid[cert.receipt.job_id] = 0
                if cert.job.tier == Tier.PAID:
                    amount = escrows.pop((cert.receipt.job_id, cert.job.client))
                    fee = cert.job.fee  # an image costs its whole fee, text its tokens
                    if cert.job.llm is not None:
                        fee = fee * cert.receipt.output_tokens // cert.job.llm.max_tokens
                    balances[worker] = balances.get(worker, 0) + fee
                    balances[cert.job.client] += amount - fee
                    job_paid[cert.receipt.job_id] = fee
                units = _units(costs.get(cert.job.model_id), cert.job, cert.receipt)
                checked[cert.receipt.job_id] = units  # the members checked its real cost
                if not drawn_for_pool(parent, cert.job, cert.receipt):
                    units = 0  # routed past the draw: its fee only (D64)
                work[cert.receipt.job_id] = (worker, units, cert.job.signer, cert.receipt.signer)
            assert not block.body.frauds, "an honest devnet convicts nobody"
            assert block.height < p.halving_interval  # a test devnet never leaves era 0
            reward = p.block_reward
            operations = reward * p.operations_share_bps // 10_000
            rest = reward - operations
            to_work = rest * p.work_share_bps // 10_000
            to_validators = rest - to_work
            balances[genesis.operations_wallet] = (
                balances.get(genesis.operations_wallet, 0) + operations
            )
            for job, (addr, share) in _pool_payments(
                p, to_work, work, stakes, budgets, block.height
            ).items():
                balances[addr] = balances.get(addr, 0) + share
                job_paid[job] += share
            # Validators: the proposer's bonus; the rest to the verdict pool, paid to
            # the valid votes in the block's certificates by the work units checked (D72).
            bonus = to_validators * p.proposer_bonus_bps // 10_000
            balances[proposer] = balances.get(proposer, 0) + bonus
            verdict_pool += to_validators - bonus
            weights: dict[bytes, int] = {}
            for cert in block.body.certificates:
                for v in cert.verdicts:
                    if v.valid:
                        weights[v.signer] = weights.get(v.signer, 0) + checked[cert.receipt.job_id]
            total = sum(weights.values())
            start = verdict_pool
            for key in sorted(weights):
                share = start * weights[key] // total
                addr = Address.from_public_key(key).raw
                balances[addr] = balances.get(addr, 0) + share
                verdict_pool -= share
        state = store.load_state()
    finally:
        store.close()
    actual = {addr: acct.balance for addr, acct in state.accounts.items()}
    assert state.work_pool == pool == 0  # never carried (D61)
    assert state.verdict_pool == verdict_pool
    assert state.minted == p.block_reward * height
    expected = {a: b for a, b in balances.items() if b}
    return expected, {a: b for a, b in actual.items() if b}, height, job_paid


def _units(cost: ModelCost | None, job, receipt) -> int:
    """Work units by the registered cost (thousands of MACs); none without one."""
    if cost is None:
        return 0
    if job.llm is not None:
        n = receipt.prompt_tokens + receipt.output_tokens
        return (n * cost.token_macs + cost.pair_macs * n * (n + 1) // 2) // 1000
    p, passes = receipt.latent_pixels, 2 if job.diffusion.guidance_milli > 1000 else 1
    unet = cost.step_fixed + cost.step_pixel * p + cost.step_pixel2 * p * p
    decode_ = cost.decode_fixed + cost.decode_pixel * p + cost.decode_pixel2 * p * p
    return (receipt.steps * passes * unet + passes * cost.text_macs + decode_) // 1000


def _pool_payments(p, pool, work, stakes, budgets, height) -> dict[bytes, tuple[bytes, int]]:
    """job -> (worker account, pool share): gateways water-filled within their budgets
    by work units, then each worker at most its budget (D62, D63). Budgets fill by the
    cap factor x the key's stake share per block, ``pool_budget_blocks`` deep, starting
    at one block's worth. Nobody bonds or is slashed in this devnet: stakes are fixed."""
    total = sum(stakes.values())

    def have(role: bytes, key: bytes) -> tuple[int, int]:
        bps = p.gateway_pool_cap_bps if role == b"g" else p.worker_pool_cap_bps
        rate = pool * stakes.get(key, 0) * bps // (total * 10_000)
        most = rate * p.pool_budget_blocks
        if role + key not in budgets:
            return min(rate, most), most
        left, at = budgets[role + key]
        return min(most, left + rate * (height - at)), most

    units: dict[bytes, int] = {}
    for _, u, gw, _ in work.values():
        if u:
            units[gw] = units.get(gw, 0) + u
    caps = {g: have(b"g", g)[0] for g in units}
    left, weight, alloc = pool, sum(units.values()), {}
    for g in sorted(units, key=lambda g: (Fraction(min(pool, caps[g]), units[g]), g)):
        alloc[g] = min(caps[g], left * units[g] // weight)
        left, weight = left - alloc[g], weight - units[g]
        budgets[b"g" + g] = (caps[g] - alloc[g], height)
    share = {j: alloc[gw] * u // units[gw] for j, (_, u, gw, _) in work.items() if u}
    earned: dict[bytes, int] = {}
    for j in share:
        earned[work[j][3]] = earned.get(work[j][3], 0) + share[j]
    paid = {}
    for key in earned:
        budget = have(b"w", key)[0]
        paid[key] = min(budget, earned[key])
        budgets[b"w" + key] = (budget - paid[key], height)
    return {
        j: (work[j][0], s * paid[work[j][3]] // earned[work[j][3]] if earned[work[j][3]] else 0)
        for j, s in share.items()
    }


# ------------------------------------------------------------------------------ tests


async def test_honest_devnet_runs_verifies_pays_and_survives_a_crash(tmp_path, models_dir):
    p = plan(tmp_path, models_dir)
    api_key = ApiKeyStore(DataDir.resolve(p.nodes[0].data_dir)).add("e2e client", p.client_key)
    client_address = p.client_address
    async with Devnet(p) as devnet:
        await devnet.start()
        await devnet.wait_models_hosted()
        api = devnet.node(0).api_url
        models = {m["kind"]: m for m in (await get(f"{api}/v1/models"))["data"]}
        assert set(models) == {"llm", "diffusion"}
        client_before = (await get(f"{api}/api/v1/accounts/{client_address}"))["balance_units"]

        free = openai_client(api)
        paid = openai_client(api, api_key)
        completion = await free.completions.create(
            model=models["llm"]["id"], prompt="The grid pays for", max_tokens=12, seed=3
        )
        assert completion.choices[0].text and completion.usage.completion_tokens >= 1
        stream = await free.chat.completions.create(
            model=models["llm"]["id"],
            messages=[{"role": "user", "content": "hello"}],
            max_tokens=10,
            stream=True,
            seed=4,
        )
        pieces, streamed_id = [], ""
        async for chunk in stream:
            streamed_id = aipg_job_id(chunk) or streamed_id
            if chunk.choices and chunk.choices[0].delta.content:
                pieces.append(chunk.choices[0].delta.content)
        assert "".join(pieces)
        image = await free.images.generate(
            model=models["diffusion"]["id"],
            prompt="a lighthouse",
            size="64x64",
            response_format="b64_json",
        )
        assert base64.b64decode(image.data[0].b64_json).startswith(b"\x89PNG\r\n\x1a\n")
        paid_completion = await paid.completions.create(
            model=models["llm"]["id"], prompt="Validators check", max_tokens=8, seed=5
        )

        jobs = [
            aipg_job_id(completion),
            streamed_id,
            aipg_job_id(image),
            aipg_job_id(paid_completion),
        ]
        assert all(jobs), jobs
        views = [await job_in_block(api, j) for j in jobs]
        for view in views:
            assert view["status"] == "paid"
            valid = [v for v in view["verdicts"] if v["valid"]]
            assert 3 * len(valid) >= 2 * len(view["committee"]), view
        paid_view = views[-1]
        assert paid_view["tier"] == "paid"
        client_after = (await get(f"{api}/api/v1/accounts/{client_address}"))["balance_units"]
        fee_units = client_before - client_after
        assert fee_units > 0 and paid_view["fee"] != "0"

        # Bad requests get 4xx JSON errors, never a 5xx.
        async with httpx.AsyncClient(base_url=api, timeout=30) as http:
            cases = [
                (
                    http.post(
                        "/v1/completions",
                        content=b"{not json",
                        headers={"content-type": "application/json"},
                    ),
                    400,
                ),
                (http.post("/v1/completions", json={"model": "no-such-model", "prompt": "x"}), 404),
                (
                    http.post(
                        "/v1/completions",
                        json={
                            "model": models["llm"]["id"],
                            "prompt": "word " * 5000,
                            "max_tokens": 4,
                        },
                    ),
                    400,
                ),
                (
                    http.post(
                        "/v1/completions",
                        json={"model": models["llm"]["id"], "prompt": "x"},
                        headers={"Authorization": "Bearer aipg-sk-wrong"},
                    ),
                    401,
                ),
                (http.get("/api/v1/jobs/" + "ab" * 32), 404),
            ]
            for request, status in cases:
                r = await request
                assert r.status_code == status, (r.status_code, r.text[:200])
                assert "message" in r.json()["error"]

        async with httpx.AsyncClient(timeout=30) as http:
            metrics = (await http.get(f"{api}/metrics")).text
        for family in (
            "aipg_height",
            "aipg_peers",
            "aipg_gateway_jobs",
            "aipg_verifications",
            "aipg_gossip_messages",
        ):
            assert f"# TYPE {family}" in metrics, family

        # The CLI talks to the node: a fresh account cannot bond below the validator
        # minimum, and `submit --wait-verified` follows a job to its block.
        client_dir = DataDir.resolve(tmp_path / "client")
        client_dir.init(load_identity(p.client_key))
        r = await aipg_cli("stake", "5000", "--data-dir", str(client_dir.root), "--node", api)
        assert r.returncode == 1
        assert "a validator needs at least 10,000 AIPG (you have 0 bonded)" in r.stderr.decode()
        r = await aipg_cli(
            "submit",
            "--model",
            "aipg-demo-llm",
            "--prompt",
            "hi",
            "--max-tokens",
            "4",
            "--wait-verified",
            "--node",
            api,
        )
        assert r.returncode == 0, r.stderr
        assert "certified in block" in r.stderr.decode()

        # A validator killed with SIGKILL restarts, syncs and agrees on every block.
        await devnet.kill_node(2)
        before = (await get(f"{api}/api/v1/status"))["height"]
        await wait_for(
            lambda: _height_at_least(api, before + 3), "the chain to go on without node 2"
        )
        restarted = await devnet.start_node(2)
        target = (await get(f"{api}/api/v1/status"))["height"]
        await wait_for(
            lambda: _height_at_least(restarted.api_url, target), "node 2 to catch up", timeout=60
        )
        for h in sorted({1, before - 1, before + 1, target}):
            a = await get(f"{api}/api/v1/blocks/{h}")
            b = await get(f"{restarted.api_url}/api/v1/blocks/{h}")
            assert a["hash"] == b["hash"], h

    # With every process stopped, the balances are exactly what the tokenomics say.
    node0 = DataDir.resolve(p.nodes[0].data_dir)
    expected, actual, height, job_paid = expected_balances(node0.chain_file, Path(p.genesis))
    assert height >= 5
    assert actual == expected
    # The reward the API reported for each job is what the replay says the block paid it.
    for view in views:
        assert parse_amount(view["reward"]) == job_paid[bytes.fromhex(view["id"])], view["id"]


async def aipg_cli(*args: str):
    return await trio.run_process(
        [sys.executable, "-m", "aipg.cli", *args],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )


async def _height_at_least(api: str, height: int) -> bool:
    try:
        return (await get(f"{api}/api/v1/status"))["height"] >= height
    except httpx.HTTPError:
        return False


async def test_byzantine_nodes_are_caught_slashed_and_the_paid_client_refunded(
    tmp_path, models_dir
):
    """Node 1 runs jobs with swapped weights, node 3 alters output tokens, node 2
    double-signs prevotes; node 0 is an honest gateway. Both cheating workers are
    convicted by their committees and slashed, the paid client gets its fees back with a
    share of each slashed bond, and the double signer is slashed from evidence."""
    p = plan(tmp_path, models_dir)
    api_key = ApiKeyStore(DataDir.resolve(p.nodes[0].data_dir)).add("e2e client", p.client_key)
    extra = {
        0: ["--no-worker"],
        1: ["--fault-swap-weights"],
        2: ["--no-worker", "--fault-double-sign"],
        3: ["--fault-cheat-tokens"],
    }
    params = load_genesis(p.genesis).params
    async with Devnet(p, extra_args=extra) as devnet:
        await devnet.start()
        await devnet.wait_models_hosted()
        api = devnet.node(0).api_url
        llm = next(m for m in (await get(f"{api}/v1/models"))["data"] if m["kind"] == "llm")

        async def account(i: int | None = None) -> dict:
            address = p.client_address if i is None else p.nodes[i].address
            return await get(f"{api}/api/v1/accounts/{address}")

        client_before = (await account())["balance_units"]
        cheaters = {p.nodes[1].peer_id: 1, p.nodes[3].peer_id: 3}
        bonds_before = {i: (await account(i))["bonded_units"] for i in cheaters.values()}
        refunds = 0
        convicted = set()
        for prompt in ("Validators check every", "A worker that cheats"):
            # After the first conviction the gateway bars that worker: the second job goes
            # to the other cheater.
            r = await openai_client(api, api_key).completions.create(
                model=llm["id"], prompt=prompt, max_tokens=8, seed=9
            )
            view = await job_in_block(api, aipg_job_id(r))
            assert view["status"] in ("reviewing", "slashed"), view  # reviewed, then slashed
            invalid = [v for v in view["verdicts"] if not v["valid"]]
            assert 3 * len(invalid) > len(view["committee"]), view
            i = cheaters[view["worker"]]
            convicted.add(i)
            slashed = bonds_before[i] * params.fraud_slash_bps // 10_000
            refunds += slashed * params.fraud_refund_bps // 10_000
        assert convicted == {1, 3}
        for i in convicted:
            slashed = bonds_before[i] * params.fraud_slash_bps // 10_000

            async def reviewed(i=i, slashed=slashed) -> bool:
                return (await account(i))["bonded_units"] == bonds_before[i] - slashed

            await wait_for(reviewed, f"the review to uphold node {i}'s conviction", timeout=60)
        # Each escrowed fee comes back with the client's share of the slashed bond.
        assert (await account())["balance_units"] == client_before + refunds

        async def double_sign_in_a_block():
            height = (await get(f"{api}/api/v1/status"))["height"]
            for h in range(1, height + 1):
                if (await get(f"{api}/api/v1/blocks/{h}"))["double_signs"]:
                    return h
            return None

        await wait_for(
            double_sign_in_a_block, "double-sign evidence in a block", timeout=60, poll=1.0
        )
        node2 = await account(2)
        assert node2["bonded_units"] < 20_000 * 10**8
