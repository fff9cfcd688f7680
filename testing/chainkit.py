"""A small chain for tests and benchmarks: validators, funded users, and a way to append
committed blocks; and certificates and fraud evidence for its blocks."""

from __future__ import annotations

from aipg.models import SamplingParams
from aipg.models.cost import COST_KIND_LLM, ModelCost
from aipg.pouw import (
    COMMITTEE_DELAY,
    COMMITTEE_LOOKAHEAD,
    Certificate,
    FraudEvidence,
    FraudReview,
    committee_for,
    job_id,
    needs_commitment,
    receipt_id,
    review_committee,
)
from aipg.pouw import make_commit as commit_verdict
from aipg.stake.assign import drawn_workers
from aipg.stake.audit import appeal_opens, audit_due
from aipg.stake.builder import make_block, make_commit
from aipg.stake.genesis import MAINNET_PARAMS, make_genesis
from aipg.stake.ledger import apply_block
from aipg.stake.reveal import (
    commit_closes,
    commitments,
    review_closes,
    review_commit_blocks,
    review_commitments,
)
from aipg.stake.state import State
from aipg.stake.tx import TxKind, make_tx
from aipg.stake.types import BPS
from aipg.wire import UNITS_PER_AIPG, Identity, encode

from .world import OUTPUT_IDS, signed_assignment, signed_job, signed_receipt, signed_verdict

AIPG = UNITS_PER_AIPG
CHAIN = "aipg-test-1"
TEST_PARAMS = MAINNET_PARAMS.replace(
    epoch_length=4,
    unbonding_period=5,
    escrow_period=10,  # room for commitments: each job is committed blocks before (D56)
    jail_period=3,
    target_block_time_ms=1_000,
    review_period=3,
    verdict_commit_blocks=0,  # verdicts count as they come (tests of commit-reveal set it)
    committee_size=5,  # a test chain has a handful of validators (mainnet sizes for 1e-6)
    # its committees certify with the quorum and seat reserves, as a devnet's (mainnet's
    # supermajority audits and fixed seats, D100-D101: tests/stake/test_mainnet_seats.py)
    audit_quorum_numerator=0,
    audit_quorum_denominator=0,
    committee_reserves=1,
    audit_appeal_blocks=0,
    pool_rate_cap_bps=0,  # pools pay as D61-D63 (the cap's tests set it, D107)
    commit_min_fee=0,  # COMMITs are free here (tests of the fee set it, D83)
    verdict_pool_cap_bps=0,  # and verdicts earn without a budget (D72's tests)
    budget_refill_paid=0,  # budgets fill by the minted pool (D62's tests)
)

# Mainnet's committee rules (D96, D100, D101) at a size a test chain can seat: six seats,
# five valid certify, two invalid convict, no reserves, reviews of twelve; appeals after
# three blocks (a chain with 16 validators seats them all).
SIX_SEATS = TEST_PARAMS.replace(
    committee_size=6,
    audit_committee_size=6,
    audit_quorum_numerator=5,
    audit_quorum_denominator=6,
    committee_reserves=0,
)
SIX_SEATS_APPEALS = SIX_SEATS.replace(audit_appeal_blocks=3, escrow_period=40)

# The model every job of make_work names, and a registered cost for it of one work unit
# per token (no attention term), so a receipt's units are its prompt + output tokens.
TEST_MODEL = b"m" * 32
TEST_COST = ModelCost(
    model_id=TEST_MODEL,
    kind=COST_KIND_LLM,
    token_macs=1_000,
    max_prompt_tokens=1_000,
    max_total_tokens=2_000,
)
# An economy chain's gateway bonds this much (below a validator's minimum, so the
# validator set is the same), its pool cap is 10x its bond share and workers' budgets
# are off: no cap binds unless a test sets one.
GATEWAY_BOND = 9_000 * UNITS_PER_AIPG
ECONOMY_PARAMS = TEST_PARAMS.replace(gateway_pool_cap_bps=10 * BPS, worker_pool_cap_bps=0)


def ident(i: int) -> Identity:
    return Identity.from_seed(i.to_bytes(32, "big"))


class TestChain:
    """Validators ``ident(1..n)`` bonded with ``stakes`` (10,000 AIPG each unless given),
    users ``ident(100..)`` with 1,000,000 AIPG each, the operations wallet ``ident(99)``,
    and ``params`` (the short periods of ``TEST_PARAMS`` unless given).

    ``economy=True`` also funds the jobs' gateway ``ident(500)`` (with ``ECONOMY_PARAMS``
    unless ``params`` is given): :meth:`economy_txs` bond it and register
    ``TEST_COST``, which certified work needs to earn from the pool."""

    __test__ = False

    def __init__(
        self, n_validators: int = 4, n_users: int = 4, stakes=None, params=None, economy=False
    ):
        self.validators = [ident(i + 1) for i in range(n_validators)]
        self.users = [ident(100 + i) for i in range(n_users)]
        self.ops = ident(99)
        self.gateway = ident(500)
        params = params or (ECONOMY_PARAMS if economy else TEST_PARAMS)
        stakes = stakes or [10_000 * AIPG] * n_validators
        funded = [(u.address, 1_000_000 * AIPG) for u in self.users]
        if economy:
            funded.append((self.gateway.address, 1_000_000 * AIPG))
        self.genesis = make_genesis(
            CHAIN,
            operations_wallet=self.ops.address,
            allocations=funded,
            validators=[
                (v.public_bytes, s, f"v{i}")
                for i, (v, s) in enumerate(zip(self.validators, stakes, strict=True))
            ],
            params=params,
            genesis_time_ms=1_000,
        )
        self.state = State.from_genesis(self.genesis)
        self.blocks = []
        self.commits = []
        self.keys = {i.public_bytes: i for i in [*self.validators, *self.users]}
        self.jobs: dict[tuple, object] = {}  # make_work's jobs, by their arguments

    def economy_txs(self, cost: ModelCost = TEST_COST, bond: int = GATEWAY_BOND):
        """The gateway's BOND of ``bond`` and its REGISTER_MODEL of ``cost``."""
        g = self.gateway
        n = self.state.account(g.address.raw).nonce
        fee = self.state.params.model_registration_fee
        return [
            make_tx(g, CHAIN, TxKind.BOND, n, amount=bond),
            register_tx(g, n + 1, cost, fee),
        ]

    def last_commit(self):
        return self.commits[-1] if self.commits else None

    def build(self, **body):
        proposer = self.keys[self.state.validators.proposer()]
        return make_block(
            self.state,
            proposer,
            time_ms=self.state.time_ms + 1_000,
            last_commit=self.last_commit(),
            **body,
        )

    def commit(self, block, absent=()):
        """Apply ``block`` and sign its commit with every current validator but the
        ``absent`` keys (validators that are down: their precommits are missing)."""
        signers = [
            self.keys[v.key]
            for v in self.state.validators.validators
            if v.key in self.keys and v.key not in absent
        ]
        new_state = apply_block(self.state, block)
        commit = make_commit(CHAIN, block.header.height, block.hash, signers)
        self.state = new_state
        self.blocks.append(block)
        self.commits.append(commit)
        return new_state

    def next(self, absent=(), **body):
        return self.commit(self.build(**body), absent)


def register_tx(who: Identity, nonce: int, cost: ModelCost, fee: int):
    """``who``'s REGISTER_MODEL of ``cost``, burning ``fee``."""
    return make_tx(
        who,
        CHAIN,
        TxKind.REGISTER_MODEL,
        nonce,
        amount=fee,
        job_id=cost.model_id,
        memo=encode(cost),
    )


# --- pouw records for blocks ------------------------------------------------------------


GATEWAY = ident(500)  # signs make_work's jobs and assignments, and commits the jobs


def make_job(
    chain: TestChain,
    *,
    nonce: int = 0,
    fee: int = 0,
    client: Identity | None = None,
    max_tokens: int = 16,
    gateway: Identity | None = None,
    job_over: dict | None = None,
):
    """The job make_work would make (the same arguments give the same job on a chain):
    signed by ``gateway`` (``GATEWAY`` unless given), for ``TEST_MODEL``, with the
    fields of ``job_over`` replaced."""
    gateway = gateway or GATEWAY
    over = job_over or {}
    key = (
        nonce,
        fee,
        (client or chain.users[0]).public_bytes,
        max_tokens,
        gateway.public_bytes,
        tuple(sorted((k, repr(v)) for k, v in over.items())),
    )
    fields = dict(
        model_id=TEST_MODEL,
        llm=SamplingParams(max_tokens=max_tokens),
        tier=1 if fee else 0,
        fee=fee,
        client=(client or chain.users[0]).address.raw,
        created_ms=chain.state.time_ms,
        deadline_ms=chain.state.time_ms + 60_000,
        nonce=nonce,
    )
    job = chain.jobs.get(key) or signed_job(gateway, **(fields | over))
    chain.jobs[key] = job
    return job


def make_work(
    chain: TestChain,
    worker: Identity,
    *,
    nonce: int = 0,
    fee: int = 0,
    valid=True,
    client: Identity | None = None,
    max_tokens: int = 16,
    output_tokens: int | None = None,
    gateway: Identity | None = None,
    job_over: dict | None = None,
    receipt_over: dict | None = None,
):
    """A job from ``client`` (the chain's first user unless given) for ``max_tokens``,
    assigned to ``worker`` at the chain's current height, its receipt, and the verdicts
    of its whole committee (valid or not). A ``fee`` makes it a paid job; ``nonce``
    tells jobs apart, and varies the output tokens the receipt claims (4 + nonce % 5,
    so that jobs pay differently) unless ``output_tokens`` is given. ``gateway`` signs
    the job and its assignment (``GATEWAY`` unless given); ``job_over`` and
    ``receipt_over`` replace fields of the job and the receipt. Returns (job,
    assignment, receipt, verdicts). Commits the job first (from ``GATEWAY``) and
    appends blocks until its committee can be drawn (D56: :func:`commit_job`)."""
    job = make_job(
        chain,
        nonce=nonce,
        fee=fee,
        client=client,
        max_tokens=max_tokens,
        gateway=gateway,
        job_over=job_over,
    )
    commit_job(chain, GATEWAY, job_id(job))
    return work_on(
        chain.state,
        chain.keys,
        job,
        worker,
        valid=valid,
        output_tokens=output_tokens,
        gateway=gateway,
        receipt_over=receipt_over,
    )


def work_on(
    state: State,
    keys,
    job,
    worker: Identity,
    *,
    valid=True,
    output_tokens=None,
    gateway: Identity | None = None,
    receipt_over: dict | None = None,
):
    """(job, assignment, receipt, verdicts) of ``job`` done by ``worker`` on ``state``,
    where the job is committed and its committee's beacon final; ``gateway`` (the
    job's signer, ``GATEWAY`` unless given) signs the assignment and ``keys`` the
    committee's verdicts; ``receipt_over`` replaces fields of the receipt."""
    seed_height = state.commitments[job_id(job)] + COMMITTEE_DELAY
    assert seed_height <= state.height, "the job's committee is not drawn yet"
    height = max(COMMITTEE_LOOKAHEAD, state.height)
    a = signed_assignment(
        gateway or GATEWAY,
        job,
        worker,
        height=height,
        assigned_ms=job.created_ms,
        deadline_ms=job.deadline_ms,
    )
    claimed = len(OUTPUT_IDS) + job.nonce % 5 if output_tokens is None else output_tokens
    r = signed_receipt(
        worker, job, a, extra_output_tokens=claimed - len(OUTPUT_IDS), **(receipt_over or {})
    )
    committee = committee_for(
        job,
        a,
        state.validator_snapshot_at(seed_height),
        state.beacon_at(seed_height),
        rules=state.params.job_committee_rules(),
    )
    verdicts = tuple(signed_verdict(keys[k], r, valid) for k in sorted(committee.members))
    return job, a, r, verdicts


def commit_tx(state: State, jid: bytes, sender: Identity = GATEWAY):
    """The COMMIT transaction of job ``jid`` from ``sender`` at its next nonce."""
    nonce = state.account(sender.address.raw).nonce
    return make_tx(sender, CHAIN, TxKind.COMMIT, nonce, job_id=jid)


def commit_job(chain: TestChain, sender: Identity, jid: bytes) -> int:
    """Commit job ``jid`` in the next block (unless an escrow or commitment already did)
    and append blocks until its committee's beacon is final (D56). Returns the height
    whose beacon and validator set draw the committee."""
    if jid not in chain.state.commitments:
        chain.next(transactions=[commit_tx(chain.state, jid, sender)])
    seed_height = chain.state.commitments[jid] + COMMITTEE_DELAY
    while chain.state.height < seed_height:
        chain.next()
    return seed_height


def commit_jobs(chain: TestChain, jobs, sender: Identity = GATEWAY) -> None:
    """Commit ``jobs`` (those not committed yet) in one block, then append blocks until
    their committees can be drawn: many jobs' work for one block (benchmarks)."""
    pending = [job_id(j) for j in jobs if job_id(j) not in chain.state.commitments]
    n = chain.state.account(sender.address.raw).nonce
    if pending:
        txs = [
            make_tx(sender, CHAIN, TxKind.COMMIT, n + i, job_id=jid)
            for i, jid in enumerate(pending)
        ]
        chain.next(transactions=txs)
    for _ in range(COMMITTEE_DELAY):
        chain.next()


_JOB_ARGS = ("nonce", "fee", "client", "max_tokens", "gateway", "job_over")
_WORK_ARGS = ("valid", "output_tokens", "gateway", "receipt_over")


def make_jobs(chain: TestChain, specs) -> list:
    """The jobs of ``specs`` ((worker, make_work keywords) pairs), committed together in
    one block, their committees drawn (:func:`commit_jobs`)."""
    jobs = [make_job(chain, **{k: kw[k] for k in _JOB_ARGS if k in kw}) for _, kw in specs]
    commit_jobs(chain, jobs)
    return jobs


def certificates_for(chain: TestChain, jobs, specs) -> list[Certificate]:
    """The certificates of committed ``jobs`` done by the workers of ``specs`` at the
    chain's current height."""
    return [
        Certificate(
            *work_on(chain.state, chain.keys, job, w, **{k: kw[k] for k in _WORK_ARGS if k in kw})
        )
        for job, (w, kw) in zip(jobs, specs, strict=True)
    ]


def register_workers(chain: TestChain, workers, declared: int = 10**6) -> TestChain:
    """Fund, bond and register ``workers`` for TEST_MODEL (from ``chain.users[3]``), each
    declaring ``declared`` units a block, then run to an epoch boundary: their
    registrations are snapshotted, the draw exists."""
    u = chain.users[3]
    n = chain.state.account(u.address.raw).nonce
    chain.next(
        transactions=[
            make_tx(u, CHAIN, TxKind.TRANSFER, n + i, amount=1_000 * AIPG, recipient=w.address)
            for i, w in enumerate(workers)
        ]
    )
    chain.next(transactions=[make_tx(w, CHAIN, TxKind.BOND, 0, amount=500 * AIPG) for w in workers])
    chain.next(
        transactions=[
            make_tx(w, CHAIN, TxKind.REGISTER_WORKER, 1, job_id=TEST_MODEL, amount=declared)
            for w in workers
        ]
    )
    while chain.state.height % chain.state.params.epoch_length:
        chain.next()
    return chain


def half_past_the_draw(chain: TestChain, jobs, specs, workers) -> list[Certificate]:
    """Certificates of committed ``jobs``: the even ones done by their drawn worker, the
    odd ones by another of ``workers`` (routed past the draw, as a gateway may)."""
    by_key = {w.public_bytes: w for w in workers}
    drawn = [by_key[drawn_workers(chain.state, j)[0]] for j in jobs]
    done = [
        (d if i % 2 == 0 else next(w for w in workers if w is not d), kw)
        for i, ((_, kw), d) in enumerate(zip(specs, drawn, strict=True))
    ]
    return certificates_for(chain, jobs, done)


def make_certificates(chain: TestChain, specs) -> list[Certificate]:
    """One certificate per (worker, make_work keywords) of ``specs``, for one block: their
    jobs committed together (a block of work from many jobs)."""
    return certificates_for(chain, make_jobs(chain, specs), specs)


def make_certificate(chain: TestChain, worker: Identity, **kw) -> Certificate:
    return Certificate(*make_work(chain, worker, **kw))


def make_fraud(chain: TestChain, worker: Identity, **kw) -> FraudEvidence:
    return FraudEvidence(*make_work(chain, worker, valid=False, **kw))


def reference_chain(n_blocks: int) -> TestChain:
    """A deterministic chain with transfers, bonds and certificates in its blocks."""
    c = TestChain(n_validators=4, n_users=4)
    while c.state.height < n_blocks:
        h = c.state.height + 1
        # a certificate takes its commitment and two blocks before it (D56)
        certs = []
        if h % 5 == 0 and h + COMMITTEE_DELAY + 1 <= n_blocks:
            certs = [make_certificate(c, c.users[h % 4], nonce=h)]
        a, b = c.users[h % 4], c.users[(h + 1) % 4]
        nonce = c.state.account(a.address.raw).nonce
        txs = [
            make_tx(a, CHAIN, TxKind.TRANSFER, nonce, fee=h, amount=1000 + h, recipient=b.address)
        ]
        if h % 7 == 0:
            txs.append(make_tx(a, CHAIN, TxKind.BOND, nonce + 1, amount=10**6))
        c.next(transactions=txs, certificates=certs)
    return c


def make_review(chain: TestChain, evidence: FraudEvidence, *, upheld: bool = True) -> FraudReview:
    """The review of ``evidence``, which the chain's last block carried: every seated
    reviewer votes invalid (``upheld``) or valid."""
    height = chain.state.height
    validators = chain.state.validator_snapshot_at(height)
    committee = review_committee(
        evidence,
        validators,
        chain.state.beacon_at(height),
        chain.state.params.committee_size,
        chain.state.params.committee_rules(),
    )
    receipt = evidence.receipt
    verdicts = tuple(
        signed_verdict(chain.keys[k], receipt, not upheld) for k in sorted(committee.members)
    )
    return FraudReview(evidence, verdicts)


def apply_review(chain: TestChain, review: FraudReview):
    """Put ``review`` in a block the way reviewers do (D76): with commit-reveal on, their
    commitments first, then blocks until the review's commit phase closes; returns the
    state after the block carrying the review."""
    n = review_commit_blocks(chain.state) if chain.state.params.verdict_commit_blocks else 0
    if n:
        commits = [
            commit_verdict(chain.keys[v.signer], v, review=True)
            for v in review.verdicts
            if needs_commitment(v)
        ]
        chain.next(verdict_commits=commits)
        for _ in range(n):
            chain.next()
    return chain.next(reviews=[review])


class TrackerChain:
    """What a node's work tracker reads of a chain (``aipg.node.services.work.ChainView``),
    over a :class:`TestChain`'s current state."""

    def __init__(self, chain: TestChain):
        self.c = chain

    @property
    def committee_size(self) -> int:
        return self.c.state.params.committee_size

    def validator_snapshot_at(self, height: int):
        return self.c.state.validator_snapshot_at(height)

    def finalized_hash(self, height: int):
        return self.c.state.block_hash_at(height)

    @property
    def height(self) -> int:
        return self.c.state.height

    @property
    def commit_reveal(self) -> bool:
        return self.c.state.params.verdict_commit_blocks > 0

    def committed(self, receipt_id: bytes, member: bytes, job_id: bytes | None = None):
        lookup = commitments(self.c.state, job_id)
        return None if lookup is None else lookup(receipt_id, member)

    def commit_closes(self, receipt_id: bytes):
        return commit_closes(self.c.state, receipt_id)

    @property
    def challenge_period(self) -> int:
        return self.c.state.params.challenge_period

    @property
    def committee_rules(self):
        return self.c.state.params.committee_rules()

    @property
    def job_committee_rules(self):
        return self.c.state.params.job_committee_rules()

    def beacon_at(self, height: int):
        return self.c.state.beacon_at(height)

    def committed_at(self, job_id: bytes):
        return self.c.state.commitments.get(job_id)

    def review_committed(self, evidence, member: bytes):
        lookup = review_commitments(self.c.state, evidence)
        return None if lookup is None else lookup(receipt_id(evidence.receipt), member)

    @property
    def forced_error_bps(self) -> int:
        return self.c.state.params.forced_error_bps

    def review_closes(self, receipt_id_: bytes):
        return review_closes(self.c.state, receipt_id_)

    def audit_due(self, job, receipt):
        return audit_due(self.c.state, job, receipt)

    def paid_unaudited(self, job_id: bytes) -> bool:
        s = self.c.state
        return job_id in s.certified and job_id not in s.claims

    def appeal_opens(self, job_id: bytes, receipt_id: bytes) -> int | None:
        return appeal_opens(self.c.state, job_id, receipt_id)

    def under_review(self, receipt_id: bytes) -> bool:
        return receipt_id in self.c.state.convictions
