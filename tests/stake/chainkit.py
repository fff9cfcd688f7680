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
