"""An adversarial economic simulation over the real ledger, scheduler and committees.

Operators each hold one key that is a validator, a worker and a gateway; an adversary
holds a fraction ``x`` of both the stake and the compute, spread over a few keys, and
plays one strategy. Every block the honest clients send jobs to gateways (in proportion
to their stake) and commit them on chain (COMMIT, or the paid tier's ESCROW); every
host is a registered worker (REGISTER_WORKER) and claims every job; gateways schedule
them with the real :class:`~aipg.pouw.Scheduler` in the chain's draw order
(:func:`~aipg.stake.assign.claim_order`, from the beacon two blocks after the
commitment); workers run them at their capacity (the ONNX compute is modeled by
the model's registered cost in MACs); committees are drawn with the real
:func:`~aipg.pouw.committee_for` (the commitment's beacon, the genesis rules) and decide with the real
:class:`~aipg.pouw.VoteCollector`; fraud evidence is reviewed by the real review
committee; and blocks are built by :func:`~aipg.stake.proposal.prepare_block` and
applied by :func:`~aipg.stake.ledger.apply_block`. Honest demand pauses for a few blocks
every ``idle_every`` blocks, so that timing attacks have idle spells to aim at.

What is measured: every operator's net worth (balance, bond, unbonding) gained over the
run; the adversary's share of what all operators gained, over its fair share ``x``, is
its ``reward_ratio``. Also the honest keys slashed, the heights at which no block could
be built, and validators' checking compute over workers' compute.

Pure and deterministic (one seeded ``random.Random``); ``bench/economics.py`` runs the
full grid, tests run a few blocks of every strategy.
"""

from __future__ import annotations

import contextlib
import random

from aipg.models import SamplingParams
from aipg.models.cost import WORK_UNIT_MACS, diffusion_job_macs, llm_job_macs
from aipg.pouw import (
    COMMITTEE_DELAY,
    Claim,
    PouwError,
    Scheduler,
    SchedulerConfig,
    work_units,
)
from aipg.pouw.records import Certificate, FraudEvidence, Job
from aipg.stake.assign import claim_order
from aipg.stake.builder import make_commit
from aipg.stake.genesis import make_genesis
from aipg.stake.ledger import apply_block
from aipg.stake.proposal import Candidates, prepare_block
from aipg.stake.state import State
from aipg.stake.tokenomics import split_reward
from aipg.stake.tx import TxKind, make_tx
from aipg.stake.types import LedgerError
from aipg.stake.useful_work import drawn_for_pool, fee_charged
from aipg.wire import Identity, encode, sign

from .economy_adversary import AdversaryMoves
from .economy_committee import Committees
from .economy_world import (
    AIPG,
    CHAIN,
    FRACTIONS,
    HONEST_OPERATORS,
    IMAGE,
    IMAGE_COST,
    IMAGE_MODEL,
    IMAGE_SHARE,
    JOB_DEADLINE_MS,
    LLM_COST,
    LLM_MODEL,
    PARAMS,
    STRATEGIES,
    TINY_CLAIMED,
    TINY_MODEL,
    TOTAL_STAKE,
    TRUE_COSTS,
    Config,
    Operator,
    Outcome,
    ident,
    low_key,
)
from .world import signed_receipt

__all__ = ["FRACTIONS", "STRATEGIES", "Config", "Economy", "Outcome"]


class Economy(AdversaryMoves, Committees):
    def __init__(self, cfg: Config):
        self.cfg = cfg
        # Honest demand draws from its own stream, the same whatever the adversary plays
        # (so strategies are compared on the same jobs).
        self.rng = random.Random(f"{cfg.seed}/{cfg.fraction}")
        x = cfg.fraction
        n_adv = {0.01: 3, 0.1: 4, 0.3: 6}.get(x, 3)  # gateway, worker, validators
        # The adversary's gateway and extra validators bond the minimum; its worker the
        # rest (a worker earns from the pool by its own key's bond).
        small = PARAMS.min_validator_stake
        adv_stakes = [small] * (n_adv - 1) + [int(TOTAL_STAKE * x) - small * (n_adv - 1)]
        if cfg.strategy == "grinding":  # committee seats need stake on validator keys:
            mine = int(TOTAL_STAKE * x)  # the gateway and worker bond little
            gw, worker = max(small, mine // 20), max(small, mine // 10)
            adv_stakes = [gw] + [(mine - gw - worker) // (n_adv - 2)] * (n_adv - 2)
            adv_stakes.append(mine - sum(adv_stakes))
        honest_stake = (TOTAL_STAKE - sum(adv_stakes)) // HONEST_OPERATORS
        image = diffusion_job_macs(IMAGE_COST, IMAGE.steps, 16, True)
        text = sum(llm_job_macs(LLM_COST, n, 64) for n in range(16, 257)) // 241
        mean_job = IMAGE_SHARE * image + (1 - IMAGE_SHARE) * text
        capacity = int(cfg.jobs_per_block * mean_job / cfg.load)
        self.operators: list[Operator] = []
        for i in range(HONEST_OPERATORS):
            share = capacity * honest_stake // TOTAL_STAKE
            self.operators.append(Operator(ident(f"honest/{i}"), False, share))
        for i in range(n_adv):  # one worker with all its compute; the rest stake
            share = int(capacity * x) if i == n_adv - 1 else 0
            self.operators.append(Operator(ident(f"adversary/{i}"), True, share))
        stakes = {o.key: honest_stake for o in self.operators[:HONEST_OPERATORS]}
        stakes |= {
            o.key: s for o, s in zip(self.operators[HONEST_OPERATORS:], adv_stakes, strict=True)
        }
        self.by_key = {o.key: o for o in self.operators}
        self.adversary = [o for o in self.operators if o.adversary]
        self.sybils: list[Operator] = []
        self._sybil_gateways: dict[bytes, Identity] = {}
        if cfg.strategy == "sybil_claims":  # the adversary's compute, behind low keys
            cap = sum(o.capacity for o in self.adversary) // 4
            for i in range(4):
                self.sybils.append(Operator(low_key(f"sybil/{i}"), True, cap))
            for o in self.adversary:
                o.capacity = 0
        self.clients = [ident(f"client/{i}") for i in range(4)]
        self.adv_client = ident("adversary/client")
        self.ops = ident("operations")
        funded = [(o.identity.address, 100_000 * AIPG) for o in (*self.operators, *self.sybils)]
        funded += [(c.address, 10_000_000 * AIPG) for c in (*self.clients, self.adv_client)]
        self.genesis = make_genesis(
            CHAIN,
            operations_wallet=self.ops.address,
            allocations=funded,
            validators=[(k, s, "") for k, s in stakes.items()],
            params=PARAMS,
            genesis_time_ms=1_000,
        )
        self.state = State.from_genesis(self.genesis)
        self.last_commit = None
        self.schedulers = {
            o.key: Scheduler(
                o.identity,
                lambda k: self.state.bond(k).stake,
                config=SchedulerConfig(
                    claim_window_ms=0, attempt_timeout_ms=JOB_DEADLINE_MS, draw_wait_ms=10_000
                ),
                order=self._claim_order,  # the chain's draw (D58)
            )
            for o in self.operators
        }
        self.pending: dict[str, list] = {
            "tx": [], "cert": [], "fraud": [], "review": [], "challenge": [], "commit": []
        }  # fmt: skip
        self.revealing: list = []  # (collector, committed votes) waiting for the reveal
        self.reviewing: list = []  # (fraud evidence, committed review votes) likewise
        self.claimed: dict[bytes, tuple] = {}  # job id -> (worker, job, a, r, forged, withheld)
        self.audits = 0  # claims drawn for audit
        self.challenged = 0  # withholding challenges put on chain
        self.convictions = 0  # fraud evidence blocks carried
        self.history: list[tuple[int, int]] = []  # (validator, worker) MACs after each block
        self.waiting: list = []  # (worker, job) invented, waiting for their draw (D56)
        self.grinds: list[Job] = []  # jobs committed to be ground once their beacon is out
        self.ground = 0  # how many
        self.routed = self.routed_paid = 0  # certified past the draw, and their pool pay
        self.frauds: dict[bytes, FraudEvidence] = {}
        self.nonce = 0  # honest jobs'
        self.adversary_nonce = 1 << 40  # the adversary's invented and ground jobs'
        self.halted = 0
        self.validator_macs = 0
        self.worker_macs = 0
        # one member's check of each audited claim, and of each review (D98: what the
        # overhead is at other committee sizes, mainnet's above all)
        self.audit_check_macs = 0
        self.review_check_macs = 0
        self.check_history: list[tuple[int, int]] = []
        self.sniped: list = []
        self.jobs_done: dict[bytes, int] = {}  # certified jobs by worker
        self.pool_to: dict[bytes, int] = {}  # what they were paid from work pools
        self.certified: set[bytes] = set()
        self.forged: set[bytes] = set()  # jobs never run that got a committee's votes
        self.forged_paid = 0
        self._bound = self._bound_first = 0
        regs = [(LLM_COST, self.operators[0]), (IMAGE_COST, self.operators[1])]
        if cfg.strategy == "fake_cost_model":
            regs.append((TINY_CLAIMED, self.adversary[0]))
        for cost, who in regs:
            self._tx(who.identity, TxKind.REGISTER_MODEL, amount=PARAMS.model_registration_fee,
                     job_id=cost.model_id, memo=encode(cost))  # fmt: skip
        # Every worker registers for the models it hosts (D58), declaring its capacity in
        # work units a block; the Sybils bond the least a worker needs first.
        for w in (*self.operators, *self.sybils):
            if not w.capacity:
                continue
            if w in self.sybils:
                self._tx(w.identity, TxKind.BOND, amount=PARAMS.min_worker_bond)
            models = [LLM_MODEL, IMAGE_MODEL] + ([TINY_MODEL] if w.adversary else [])
            for m in models:
                self._tx(w.identity, TxKind.REGISTER_WORKER, job_id=m,
                         amount=max(1, w.capacity // WORK_UNIT_MACS))  # fmt: skip
        self.start = self._worth()

    # --- accounting ------------------------------------------------------------------------

    def _group(self) -> dict[bytes, bool]:
        out = {o.identity.address.raw: o.adversary for o in (*self.operators, *self.sybils)}
        out[self.adv_client.address.raw] = True
        return out

    def _worth(self) -> dict[bytes, int]:
        s = self.state
        out = {}
        for o in (*self.operators, *self.sybils):
            out[o.identity.address.raw] = (
                s.balance(o.identity.address) + s.bond(o.key).stake + s.unbonding_total(o.key)
            )
        out[self.adv_client.address.raw] = s.balance(self.adv_client.address)
        return out

    def outcome(self) -> Outcome:
        end, group = self._worth(), self._group()
        gain = {a: end[a] - self.start[a] for a in end}
        adv = sum(g for a, g in gain.items() if group[a])
        total = sum(gain.values())
        honest = total - adv
        ratio = adv / (self.cfg.fraction * (max(adv, 0) + honest)) if honest > 0 else 0.0
        slashed = sum(
            1
            for o in self.operators
            if not o.adversary and self.state.bond(o.key).stake < self.genesis_stake(o.key)
        )
        return Outcome(ratio, slashed, self.halted, self.validator_macs, self.worker_macs)

    def pool_bound(self) -> int:
        """The most the adversary's keys can have earned from work pools (D62, D63):
        each block, their cap factor x their bonds' share of its pool (summed as the
        blocks were applied), plus one block's worth each key started with."""
        return self._bound + self._bound_first

    def _add_bound(self, s: State) -> None:
        total = sum(b.stake for b in s.bonds.values())
        bonds = sum(s.bond(o.key).stake for o in (*self.adversary, *self.sybils))
        pool = split_reward(PARAMS, s.emission.block_reward(s.height + 1)).work
        one = pool * bonds * PARAMS.worker_pool_cap_bps // (total * 10_000)
        self._bound += one
        self._bound_first = max(self._bound_first, one)

    def adversary_pool(self) -> int:
        keys = {o.key for o in (*self.adversary, *self.sybils)}
        return sum(v for k, v in self.pool_to.items() if k in keys)

    def genesis_stake(self, key: bytes) -> int:
        return next(v.stake for v in self.genesis.validators if v.public_key == key)

    # --- the loop --------------------------------------------------------------------------

    def run(self) -> Outcome:
        for _ in range(self.cfg.blocks):
            self.step()
            self.history.append((self.validator_macs, self.worker_macs))
            self.check_history.append((self.audit_check_macs, self.review_check_macs))
        return self.outcome()

    def overhead(self, start: int = 0) -> float:
        """Validators' checking compute over workers' compute from block ``start`` on."""
        v0, w0 = self.history[start - 1] if start > 0 else (0, 0)
        v1, w1 = self.history[-1]
        return (v1 - v0) / (w1 - w0) if w1 > w0 else 0.0

    def overhead_at(self, audit_seats: int, review_seats: int, start: int = 0) -> float:
        """The overhead from block ``start`` on had every audited claim been checked by
        ``audit_seats`` members and every review by ``review_seats`` (D98)."""
        a0, r0 = self.check_history[start - 1] if start > 0 else (0, 0)
        a1, r1 = self.check_history[-1]
        w0 = self.history[start - 1][1] if start > 0 else 0
        w1 = self.history[-1][1]
        checks = (a1 - a0) * audit_seats + (r1 - r0) * review_seats
        return checks / (w1 - w0) if w1 > w0 else 0.0

    def _tx(self, who: Identity, kind: TxKind, **kw) -> None:
        pending = sum(1 for t in self.pending["tx"] if t.signer == who.public_bytes)
        nonce = self.state.account(who.address.raw).nonce + pending
        self.pending["tx"].append(make_tx(who, CHAIN, kind, nonce, **kw))

    def step(self) -> None:
        s = self.state
        now = s.time_ms + PARAMS.target_block_time_ms
        h = s.height
        strategy = self.cfg.strategy
        idle = h % self.cfg.idle_every >= self.cfg.idle_every - self.cfg.idle_blocks
        if h >= 3:
            if not idle:
                for _ in range(self.cfg.jobs_per_block):
                    self._honest_job(now)
            if strategy in ("self_dealing", "sybil_gateways", "fake_cost_model"):
                self._self_deal(now, TINY_MODEL if strategy == "fake_cost_model" else LLM_MODEL)
            elif strategy == "pool_sniping":
                self._snipe(now, idle)
            elif strategy == "grinding":
                self._grind(now, h % 4 == 0)
            self._release(now)
            for sched in self.schedulers.values():
                for a in sched.tick(now, h):
                    worker = self.by_key.get(a.worker) or self._sybil(a.worker)
                    job = sched._jobs[a.job_id].job
                    worker.queue.append([job, a, self._macs(job)])
            for w in (*self.operators, *self.sybils):
                self._work(w, now)
        self._block(now)

    def _claim_order(self, job: Job, claimants):
        return claim_order(self.state, job, claimants)

    def _commit(self, job: Job, who: Identity | None = None) -> None:
        """Commit ``job`` on chain (D56): its committee and worker are drawn from the
        beacon ``COMMITTEE_DELAY`` blocks after the block that carries this."""
        self._tx(who or self.adv_client, TxKind.COMMIT, job_id=job.id, fee=PARAMS.commit_min_fee)

    def _drawn(self, job: Job) -> bool:
        """Whether ``job``'s commitment is final and its seed block's beacon out."""
        c = self.state.commitments.get(job.id)
        return c is not None and c + COMMITTEE_DELAY <= self.state.height

    def _sybil(self, key: bytes) -> Operator:
        return next(o for o in self.sybils if o.key == key)

    def _macs(self, job: Job) -> int:
        cost = TRUE_COSTS[job.model_id]
        if job.llm is not None:
            return llm_job_macs(cost, len(job.prompt), job.llm.max_tokens)
        d = job.diffusion
        return diffusion_job_macs(cost, d.steps, (d.width // 8) * (d.height // 8), True)

    def _job(
        self, gateway: Identity, now: int, model: bytes, *, client: bytes, fee=0, honest=False, **kw
    ):
        # Honest demand numbers its jobs apart from the adversary's moves, so that every
        # strategy meets the same honest jobs (ids, draws) as the honest run of its seed:
        # strategies differ by what they do, not by a redrawn world.
        if honest:
            self.nonce += 1
            nonce = self.nonce
        else:
            self.adversary_nonce += 1
            nonce = self.adversary_nonce
        fields = dict(
            model_id=model,
            prompt="",
            llm=None,
            diffusion=None,
            seed=nonce,
            tier=1 if fee else 0,
            fee=fee,
            client=client,
            cost_milli=1000,
            created_ms=now,
            deadline_ms=now + JOB_DEADLINE_MS,
            nonce=nonce,
        )
        fields.update(kw)
        return sign(Job(**fields), gateway)

    def _honest_job(self, now: int) -> None:
        weights = [self.state.bond(o.key).stake for o in self.operators]
        gw = self.rng.choices(self.operators, weights)[0]
        client = self.rng.choice(self.clients)
        image = self.rng.random() < IMAGE_SHARE
        prompt = "p" * self.rng.randint(16, 256)
        over = {"prompt": prompt, "llm": SamplingParams(max_tokens=self.rng.randint(8, 120))}
        if image:
            over = {"prompt": prompt, "llm": None, "diffusion": IMAGE}
        fee = 0
        if not image and self.rng.random() < 0.1:
            fee = 120 * 10_000
        job = self._job(gw.identity, now, IMAGE_MODEL if image else LLM_MODEL,
                        client=client.address.raw, fee=fee, honest=True, **over)  # fmt: skip
        if fee:  # an escrow commits its job too
            self._tx(client, TxKind.ESCROW, amount=fee, job_id=job.id)
        else:
            self._commit(job, gw.identity)
        sched = self.schedulers[gw.key]
        sched.submit(job, now)
        # Every host claims; the chain's draw (weighted by measured capacity) decides.
        claimants = [w for w in (*self.operators, *self.sybils) if w.capacity]
        for w in claimants:
            lying = self.cfg.strategy == "sybil_claims" and w.adversary
            queue = 0 if lying else len(w.queue)
            claim = sign(Claim(job.id, job.model_id, queue, now), w.identity)
            with contextlib.suppress(PouwError):  # banned, or enough claims
                sched.on_claim(claim, now)

    def _work(self, w: Operator, now: int) -> None:
        budget = w.capacity
        while w.queue and budget > 0:
            item = w.queue[0]
            job, a, left = item
            if now > a.deadline_ms:
                w.queue.popleft()
                continue
            if self._gambles(w, job):  # never run: claimed as if done
                w.queue.popleft()
                self._finish(w, job, a, now, forged=True)
                continue
            done = min(left, budget)
            budget -= done
            item[2] -= done
            self.worker_macs += done
            if item[2] == 0:
                w.queue.popleft()
                self._finish(w, job, a, now)

    # --- receipts and committees --------------------------------------------------------

    def _finish(self, w: Operator, job: Job, a, now: int, *, forged: bool = False) -> None:
        strategy = self.cfg.strategy
        withheld = strategy == "withholding" and w.adversary and job.diffusion is not None
        forged = forged or withheld
        if forged:
            self.forged.add(job.id)
        if job.llm is not None:
            n, m = len(job.prompt), job.llm.max_tokens
            counts = dict(prompt_tokens=n, output_tokens=m, steps=0, latent_pixels=0)
        else:
            d = job.diffusion
            px = (d.width // 8) * (d.height // 8)
            counts = dict(prompt_tokens=0, output_tokens=0, steps=d.steps, latent_pixels=px)
        units = work_units(job.kind, job.cost_milli, **counts)
        r = signed_receipt(w.identity, job, a, **counts, work_units=units, elapsed_ms=now % 997)
        sched = self.schedulers.get(job.signer)
        if sched is not None and a.job_id in sched._jobs:
            try:
                sched.on_receipt(r, now)
            except PouwError:
                return  # too late: the gateway gave the job to someone else
        if self._committee(job, a) is None:
            return  # not committed, or too old for any block to certify
        # The receipt goes on chain as a claim; the beacon two blocks after the block
        # carrying it draws whether the committee checks it (D79).
        self.pending["cert"].append(Certificate(job, a, r, ()))
        self.claimed[job.id] = (w, job, a, r, forged, withheld)
        if strategy == "duplicate_receipts" and w.adversary:  # the same work, re-timed
            r2 = sign(r.replace(elapsed_ms=r.elapsed_ms + 1), w.identity)
            self.pending["cert"].append(Certificate(job, a, r2, ()))

    # --- blocks -------------------------------------------------------------------------

    def _block(self, now: int) -> None:
        s = self.state
        proposer = self.by_key[s.validators.proposer()].identity  # it proves the beacon
        p = self.pending
        cand = Candidates(transactions=p["tx"], certificates=p["cert"], frauds=p["fraud"],
                          reviews=p["review"], challenges=p["challenge"],
                          verdict_commits=p["commit"])  # fmt: skip
        try:
            prepared = prepare_block(s, proposer, cand, time_ms=now, last_commit=self.last_commit)
            new = apply_block(s, prepared.block, verified_parent_commit=self.last_commit)
        except LedgerError:
            self.halted += 1
            return
        block = prepared.block
        self._add_bound(s)
        kept = {id(x) for x in (*block.body.transactions, *block.body.certificates,
                                *block.body.frauds, *block.body.reviews,
                                *block.body.challenges, *block.body.verdict_commits)}  # fmt: skip
        # What the ledger refused for good is dropped; the rest waits for the next block.
        refused = {id(item) for item, _ in prepared.refused}
        for name in p:
            p[name] = [x for x in p[name] if id(x) not in kept and id(x) not in refused]
        for item, _ in prepared.refused:  # a claim the ledger refused is never drawn
            if isinstance(item, Certificate) and not item.verdicts:
                info = self.claimed.get(item.receipt.job_id)
                if info is not None and info[3] is item.receipt:
                    del self.claimed[item.receipt.job_id]
        signers = [self.by_key[v.key].identity for v in s.validators.validators]
        self.last_commit = make_commit(CHAIN, block.header.height, block.hash, signers)
        self.state = new
        self._reviews(block)
        self._reveal()
        self._reveal_reviews()
        settled = [c for c in block.body.certificates if c.verdicts]
        for jid, info in list(self.claimed.items()):
            row = new.claims.get(jid)
            if row is not None:
                if row.audited:  # drawn for audit: its committee checks it now
                    del self.claimed[jid]
                    self.audits += 1
                    self._audit(*info)
                continue
            if jid in new.certified and jid not in self.certified:  # paid unaudited
                del self.claimed[jid]
                settled.append(Certificate(info[1], info[2], info[3], ()))
        for cert in settled:  # gateways learn their workers' records
            w = cert.receipt.signer
            jid = cert.receipt.job_id
            assert jid not in self.certified, "a job was paid twice"
            self.certified.add(jid)
            self.jobs_done[w] = self.jobs_done.get(w, 0) + 1
            fee = fee_charged(cert.job, cert.receipt) if cert.job.tier else 0
            if not drawn_for_pool(s, cert.job, cert.receipt):  # routed past the draw (D64)
                self.routed += 1
                self.routed_paid += new.paid.get(jid, 0) - fee
            self.pool_to[w] = self.pool_to.get(w, 0) + new.paid.get(jid, 0) - fee
            if jid in self.forged:
                self.forged_paid += 1
            sched = self.schedulers.get(cert.job.signer)
            if sched is not None:
                sched.on_certified(cert.receipt.signer)
