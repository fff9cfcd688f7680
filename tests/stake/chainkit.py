"""A small test chain: validators, funded users, and a way to append committed blocks."""

from __future__ import annotations

from aipg.stake.builder import make_block, make_commit
from aipg.stake.genesis import MAINNET_PARAMS, make_genesis
from aipg.stake.ledger import apply_block
from aipg.stake.state import State
from aipg.wire import UNITS_PER_AIPG, Identity

AIPG = UNITS_PER_AIPG
CHAIN = "aipg-test-1"
TEST_PARAMS = MAINNET_PARAMS.replace(
    epoch_length=4,
    unbonding_period=5,
    escrow_period=3,
    jail_period=3,
    target_block_time_ms=1_000,
)


def ident(i: int) -> Identity:
    return Identity.from_seed(i.to_bytes(32, "big"))


class TestChain:
    """Validators ``ident(1..n)``, users ``ident(100..)`` with 1,000,000 AIPG each."""

    __test__ = False

    def __init__(self, n_validators: int = 4, n_users: int = 4, stakes=None, params=TEST_PARAMS):
        self.validators = [ident(i + 1) for i in range(n_validators)]
        self.users = [ident(100 + i) for i in range(n_users)]
        self.ops = ident(99)
        stakes = stakes or [10_000 * AIPG] * n_validators
        self.genesis = make_genesis(
            CHAIN,
            operations_wallet=self.ops.address,
            allocations=[(u.address, 1_000_000 * AIPG) for u in self.users],
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

    def last_commit(self):
        return self.commits[-1] if self.commits else None

    def build(self, **body):
        proposer = self.state.validators.proposer()
        return make_block(
            self.state,
            proposer,
            time_ms=self.state.time_ms + 1_000,
            last_commit=self.last_commit(),
            **body,
        )

    def commit(self, block):
        """Apply ``block`` and sign its commit with every current validator."""
        signers = [self.keys[v.key] for v in self.state.validators.validators if v.key in self.keys]
        new_state = apply_block(self.state, block)
        commit = make_commit(CHAIN, block.header.height, block.hash, signers)
        self.state = new_state
        self.blocks.append(block)
        self.commits.append(commit)
        return new_state

    def next(self, **body):
        return self.commit(self.build(**body))


# --- pouw records for blocks ------------------------------------------------------------


def make_work(chain: TestChain, worker, *, nonce: int = 0, fee: int = 0, valid: bool = True):
    """A job assigned to ``worker`` at the chain's current height, its receipt, and the
    verdicts of its whole committee (valid or not). Returns (job, assignment, receipt,
    verdicts)."""
    from aipg.models import ExecutionProfile, SamplingParams
    from aipg.pouw import (
        COMMITTEE_LOOKAHEAD,
        Assignment,
        Job,
        Receipt,
        VerdictReason,
        assignment_id,
        committee_for,
        job_id,
        make_verdict,
        params_hash,
        work_units,
    )
    from aipg.pouw.records import input_hash_llm, output_hash_tokens
    from aipg.wire import sign

    gateway = ident(500)
    job = sign(
        Job(
            model_id=b"m" * 32,
            prompt="hello grid",
            llm=SamplingParams(max_tokens=16),
            diffusion=None,
            seed=7,
            tier=1 if fee else 0,
            fee=fee,
            client=chain.users[0].address.raw,
            cost_milli=1000,
            created_ms=chain.state.time_ms,
            deadline_ms=chain.state.time_ms + 60_000,
            nonce=nonce,
        ),
        gateway,
    )
    height = max(COMMITTEE_LOOKAHEAD, chain.state.height)
    a = sign(
        Assignment(job_id(job), worker.public_bytes, height, 0, job.created_ms, job.deadline_ms),
        gateway,
    )
    counts = dict(prompt_tokens=3, output_tokens=4 + nonce % 5, steps=0, latent_pixels=0)
    r = sign(
        Receipt(
            job_id=job_id(job),
            model_id=job.model_id,
            assignment_id=assignment_id(a),
            input_hash=input_hash_llm([5, 6, 7]),
            params_hash=params_hash(job),
            seed=job.seed,
            profile=ExecutionProfile("1.0", "CPUExecutionProvider", 99, 1, True, job.model_id),
            output_hash=output_hash_tokens([9, 10, 11, 12]),
            **counts,
            work_units=work_units(job.kind, job.cost_milli, **counts),
            elapsed_ms=100,
            first_output_ms=10,
            commitment=bytes(32),
        ),
        worker,
    )
    seed_height = height - COMMITTEE_LOOKAHEAD
    snapshot = chain.state.validator_snapshot_at(seed_height)
    committee = committee_for(
        job_id(job),
        a,
        snapshot,
        chain.state.block_hash_at,
        size=chain.state.params.committee_size,
    )
    reason = VerdictReason.OK if valid else VerdictReason.TOKEN_MISMATCH
    verdicts = tuple(
        make_verdict(chain.keys[k], r, reason, recomputed=b"check") for k in sorted(committee)
    )
    return job, a, r, verdicts


def make_certificate(chain: TestChain, worker, **kw):
    from aipg.pouw import Certificate

    return Certificate(*make_work(chain, worker, **kw))


def make_fraud(chain: TestChain, worker, **kw):
    from aipg.pouw import FraudEvidence

    return FraudEvidence(*make_work(chain, worker, valid=False, **kw))


def reference_chain(n_blocks: int) -> TestChain:
    """A deterministic chain with transfers, bonds and certificates in its blocks."""
    from aipg.stake.tx import TxKind, make_tx

    c = TestChain(n_validators=4, n_users=4)
    for h in range(1, n_blocks + 1):
        a, b = c.users[h % 4], c.users[(h + 1) % 4]
        nonce = c.state.account(a.address.raw).nonce
        txs = [
            make_tx(a, CHAIN, TxKind.TRANSFER, nonce, fee=h, amount=1000 + h, recipient=b.address)
        ]
        if h % 7 == 0:
            txs.append(make_tx(a, CHAIN, TxKind.BOND, nonce + 1, amount=10**6))
        certs = [make_certificate(c, c.users[h % 4], nonce=h)] if h % 5 == 0 else []
        c.next(transactions=txs, certificates=certs)
    return c
