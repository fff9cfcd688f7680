"""The ledger state: accounts, bonds, unbonding queues, escrows, pools, validator sets,
liveness.

A state is a handful of scalars plus nine tables (``dict[bytes, tuple]``). Table values are
immutable tuples, so :meth:`State.copy` is a shallow copy of each table and the ledger
replaces entries rather than mutating them. Each copy tracks which keys changed
(``dirty``) so the chain store writes only those rows.

``state_hash`` is the sha256 of a canonical encoding of everything but ``dirty``; it goes
into the next block's header, so every node checks it reached the same state.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import msgpack

from aipg.wire import Address, Units, sha256

from .beacon import genesis_beacon
from .genesis import Genesis
from .tokenomics import Emission
from .types import Height
from .validators import ValidatorSet


class Account(NamedTuple):
    balance: int
    nonce: int  # the nonce the account's next transaction must carry


class Bond(NamedTuple):
    """A key's bonded stake; a validator's voting power and a worker's fraud collateral."""

    stake: int
    jailed_until: int  # not a validator before this height (double-signing jails)


class Escrow(NamedTuple):
    """A paid-tier job's fee, locked until the job is certified, proven fraudulent or expires."""

    payer: bytes  # account address
    amount: int
    expires_at: int


def escrow_key(job_id: bytes, payer: bytes) -> bytes:
    """The ``escrows`` row of ``payer``'s escrow for ``job_id``.

    Keyed by job *and* payer: anyone may lock a fee under any job id (a job id is public
    once its escrow is gossiped), but only the escrow of the job's own client pays it,
    so nobody can take a job's slot first and leave it unpayable.
    """
    return job_id + payer


class Liveness(NamedTuple):
    """A validator's missed heights in the liveness window, or its downtime jail
    (:mod:`.liveness`). No row: nothing missed in the window, not jailed."""

    missed: int  # set bits of ``bitmap``
    bitmap: bytes  # bit (height % window) set: missed that height; b"" when missed is 0
    jailed_until: int  # 0, or jailed for downtime: an UNJAIL is valid from this height


class Conviction(NamedTuple):
    """Fraud evidence a block carried: nobody is slashed until a review decides it
    (:mod:`.review`), or it expires undecided."""

    evidence_digest: bytes  # record digest of the FraudEvidence
    height: int  # the block that carried it (its hash seeds the review)
    escrow: bytes = b""  # a paid job's escrow row, locked until the review decides


class ForcedReview(NamedTuple):
    """The valid votes on a forced error, under review (:mod:`.forced`, D75)."""

    height: int  # the block that carried the ForcedError (its beacon seeds the review)
    receipt_id: bytes


class CommitRow(NamedTuple):
    """A verdict commitment a block carried (:mod:`.reveal`)."""

    commitment: bytes
    height: int
    job_id: bytes = b""  # the job it names (D77: one per job and member)


class Challenge(NamedTuple):
    """A committee member's withholding challenge, open until the worker answers or
    ``deadline`` passes (:mod:`.challenge`)."""

    worker: bytes  # the receipt's signer: answers, or is slashed
    challenger: bytes  # key; its account deposited ``fee``
    commitment: bytes  # the receipt's latent hash-chain head
    steps_digest: bytes  # hash of the asked-for latent indices
    fee: int  # held here until the challenge closes
    deadline: int  # the last height whose block may carry the answer


class RegisteredModel(NamedTuple):
    """A model whose cost is on chain (:mod:`.models`): the encoded
    :class:`~aipg.models.cost.ModelCost`, who registered it and when."""

    cost: bytes
    registrant: bytes  # public key
    height: int


class PoolBudget(NamedTuple):
    """What a gateway or worker may still earn from work pools (:mod:`.pool`) as of
    ``height``. No row: it never earned (its budget starts at one block's worth)."""

    budget: int
    height: int
    # with ``budget_refill_paid``: the asked-pool index (:mod:`.pool`, D99) at ``height``
    index: int = 0


class Registration(NamedTuple):
    """A worker's registration for a model (:mod:`.assign`, D58)."""

    declared: int  # work units per block the worker says it can do
    height: int  # registered at


class Capacity(NamedTuple):
    """A worker's measured capacity (:mod:`.assign`, D58)."""

    # work units certified to the worker for jobs it was drawn for, a sum losing 1/64
    # a block (its rate a block is this / 64, D97)
    recent: int
    height: int  # when ``recent`` and ``missed`` were last brought up to date
    # work units of free jobs it was drawn for that another worker did (decaying alike)
    missed: int = 0


class ClaimRow(NamedTuple):
    """A receipt claimed on chain, waiting for its audit draw or, audited, for its
    certificate (:mod:`.audit`, D79)."""

    receipt_id: bytes
    height: int  # the block that carried the claim; its draw is AUDIT_DELAY later
    worker: bytes  # key (the receipt's signer)
    gateway: bytes  # key (the job's signer)
    units: int  # what it earns from the pool (0: routed past the draw, D64)
    escrow: bytes  # a paid job's escrows row, or b""
    charged: int  # the fee its tokens cost (paid from the escrow)
    rate_bps: int  # its audit probability, fixed when it was claimed
    audited: int  # 0: the draw is pending; 1: audited, a certificate must pay it
    deadline: int  # the last block time at which it can be certified


class AuditRecord(NamedTuple):
    """A worker's audit record (:mod:`.audit`): the clean jobs its certified audits
    stand for (each counts 1 / its audit probability), reset by a conviction."""

    score: int
    height: int


EMPTY_ACCOUNT = Account(0, 0)
EMPTY_BOND = Bond(0, 0)

# key → value tables. unbonding: key → ((release_height, amount), ...);
# escrows: escrow_key(job id, payer) → Escrow;
# certified: job id → last block time it could be certified (forgotten after); punished: evidence key → height punished;
# epochs: epoch index (8 bytes) → ((validator key, power), ...), the sets pouw committees
# were drawn from; block_hashes: height (8 bytes) → hash, for committee seeds.
# The last two keep only what a certificate young enough to be included can refer to.
# liveness: validator key → Liveness, only for keys with misses or a downtime jail.
# convictions: receipt id → Conviction, fraud evidence a block carried, awaiting review.
# verdict_commits: receipt id + member key → CommitRow; commit_windows: receipt id → the
# height of the block that carried its first commitment (its commit phase opened);
# challenges: receipt id + challenger key → Challenge (open withholding challenges).
# models: model id → RegisteredModel, the cost every certificate of the model is paid by.
# pool_budgets: b"g"/b"w" + key → PoolBudget, each gateway's and worker's pool budget.
# beacons: height (8 bytes) → the beacon after that block (D55), kept like block_hashes.
# commitments: job id → the height of the block that committed it (D56), for
# ``escrow_period`` blocks.
# workers: worker key + model id → (declared capacity, height) (stake/assign.py, D58);
# capacity: worker key → (decayed sums of delivered units, height, missed units) (D97);
# worker_epochs: epoch (8 bytes) → ((worker key + model id, draw weight), ...).
# claims: job id → ClaimRow (audit sampling, D79); audit_records: worker key → AuditRecord.
TABLES = (
    "accounts",
    "bonds",
    "unbonding",
    "escrows",
    "certified",
    "punished",
    "epochs",
    "block_hashes",
    "liveness",
    "convictions",
    "models",
    "pool_budgets",
    "beacons",
    "commitments",
    "workers",
    "capacity",
    "worker_epochs",
    "verdict_commits",
    "commit_windows",
    "challenges",
    "forced_reviews",
    "commit_jobs",
    "commit_counts",
    "review_commits",
    "review_windows",
    "claims",
    "audit_records",
)
_TUPLE_TYPES: dict[str, Any] = {
    "accounts": Account,
    "bonds": Bond,
    "escrows": Escrow,
    "liveness": Liveness,
    "convictions": Conviction,
    "models": RegisteredModel,
    "pool_budgets": PoolBudget,
    "workers": Registration,
    "capacity": Capacity,
    "verdict_commits": CommitRow,
    "review_commits": CommitRow,
    "forced_reviews": ForcedReview,
    "challenges": Challenge,
    "claims": ClaimRow,
    "audit_records": AuditRecord,
}


@dataclasses.dataclass
class State:
    genesis: Genesis
    height: Height
    time_ms: int
    last_block_hash: bytes
    validators: ValidatorSet  # the set that votes on block height + 1
    last_validators: ValidatorSet  # the set that signed block ``height`` (checks last_commit)
    work_pool: int  # the work share of rewards not yet paid (blocks without certified work)
    minted: int
    burned: int
    accounts: dict[bytes, Account]
    bonds: dict[bytes, Bond]
    unbonding: dict[bytes, tuple[tuple[int, int], ...]]
    escrows: dict[bytes, Escrow]
    certified: dict[bytes, int]
    punished: dict[bytes, int]
    epochs: dict[bytes, tuple[tuple[bytes, int], ...]]
    block_hashes: dict[bytes, bytes]
    liveness: dict[bytes, Liveness]
    convictions: dict[bytes, Conviction]
    models: dict[bytes, RegisteredModel] = dataclasses.field(default_factory=dict)
    pool_budgets: dict[bytes, PoolBudget] = dataclasses.field(default_factory=dict)
    beacons: dict[bytes, bytes] = dataclasses.field(default_factory=dict)
    commitments: dict[bytes, int] = dataclasses.field(default_factory=dict)
    workers: dict[bytes, Registration] = dataclasses.field(default_factory=dict)
    capacity: dict[bytes, Capacity] = dataclasses.field(default_factory=dict)
    worker_epochs: dict[bytes, tuple] = dataclasses.field(default_factory=dict)
    beacon: bytes = b""  # the randomness beacon after block ``height`` (D55)
    verdict_commits: dict[bytes, CommitRow] = dataclasses.field(default_factory=dict)
    commit_windows: dict[bytes, int] = dataclasses.field(default_factory=dict)
    challenges: dict[bytes, Challenge] = dataclasses.field(default_factory=dict)
    # forced_reviews: digest of a FraudEvidence holding the valid votes on a forced
    # error -> the height of the block that carried the ForcedError (stake/forced.py).
    forced_reviews: dict[bytes, ForcedReview] = dataclasses.field(default_factory=dict)
    # commit_jobs: job id + member key -> the receipt ids it committed on (a few per job
    # and member); commit_counts: member key -> its rows in verdict_commits (D77).
    commit_jobs: dict[bytes, tuple] = dataclasses.field(default_factory=dict)
    commit_counts: dict[bytes, int] = dataclasses.field(default_factory=dict)
    # review_commits: receipt id + reviewer key -> CommitRow; review_windows: receipt id
    # -> the height whose block carried the review's first commitment (D76).
    review_commits: dict[bytes, CommitRow] = dataclasses.field(default_factory=dict)
    review_windows: dict[bytes, int] = dataclasses.field(default_factory=dict)
    claims: dict[bytes, ClaimRow] = dataclasses.field(default_factory=dict)
    audit_records: dict[bytes, AuditRecord] = dataclasses.field(default_factory=dict)
    # The validators' part of rewards not yet paid to verdicts agreeing with an outcome
    # (blocks without certified work carry it forward, as the work pool).
    verdict_pool: int = 0
    dirty: dict[str, set[bytes]] = dataclasses.field(default_factory=lambda: _no_dirt())
    # What each job certified by the block that led to this state paid its worker (its
    # escrowed fee plus its share of the work pool), for the API. Like ``dirty``, neither
    # hashed nor stored: it describes the last block, not the ledger.
    paid: dict[bytes, int] = dataclasses.field(default_factory=dict)
    # The verdicts this block found agreeing with an outcome, as (member key, work units
    # it checked): what the verdict pool pays (:mod:`.verdict_rewards`). Transient too.
    agreed: list[tuple[bytes, int]] = dataclasses.field(default_factory=list)

    # --- construction ---------------------------------------------------------------------

    @classmethod
    def from_genesis(cls, genesis: Genesis) -> State:
        """The state at height 0: allocations as balances, genesis validators bonded."""
        accounts = {a.address: Account(a.amount, 0) for a in genesis.allocations}
        bonds = {v.public_key: Bond(v.stake, 0) for v in genesis.validators}
        vset = ValidatorSet.new({v.public_key: v.stake for v in genesis.validators})
        state = cls(
            genesis=genesis,
            height=Height(0),
            time_ms=genesis.genesis_time_ms,
            last_block_hash=genesis.hash,
            validators=vset,
            last_validators=vset,
            work_pool=0,
            minted=0,
            burned=0,
            accounts=accounts,
            bonds=bonds,
            unbonding={},
            escrows={},
            certified={},
            punished={},
            epochs={height_key(0): _snapshot_rows(vset)},
            block_hashes={height_key(0): genesis.hash},
            liveness={},
            convictions={},
            beacons={height_key(0): genesis_beacon(genesis.hash)},
            beacon=genesis_beacon(genesis.hash),
        )
        for table in TABLES:
            state.dirty[table] = set(getattr(state, table))
        return state

    def copy(self) -> State:
        """A copy to apply the next block to; its ``dirty`` sets start empty."""
        tables = {t: dict(getattr(self, t)) for t in TABLES}
        return dataclasses.replace(self, **tables, dirty=_no_dirt(), paid={}, agreed=[])

    # --- views ----------------------------------------------------------------------------

    @property
    def params(self):
        return self.genesis.params

    @property
    def chain_id(self) -> str:
        return self.genesis.chain_id

    @property
    def emission(self) -> Emission:
        e = self.__dict__.get("_emission")
        if e is None or e.params is not self.genesis.params:
            e = Emission(self.genesis.params, self.genesis.supply)
            self.__dict__["_emission"] = e
        return e

    def account(self, address: bytes) -> Account:
        return self.accounts.get(address, EMPTY_ACCOUNT)

    def balance(self, address: Address | bytes) -> Units:
        raw = address.raw if isinstance(address, Address) else address
        return Units(self.account(raw).balance)

    def bond(self, key: bytes) -> Bond:
        return self.bonds.get(key, EMPTY_BOND)

    def unbonding_total(self, key: bytes) -> int:
        return sum(amount for _, amount in self.unbonding.get(key, ()))

    def total_holdings(self) -> int:
        """Balances + bonds + unbonding + escrows + challenge deposits + both pools."""
        return (
            sum(a.balance for a in self.accounts.values())
            + sum(b.stake for b in self.bonds.values())
            + sum(amount for q in self.unbonding.values() for _, amount in q)
            + sum(e.amount for e in self.escrows.values())
            + sum(c.fee for c in self.challenges.values())
            + self.work_pool
            + self.verdict_pool
        )

    def expected_supply(self) -> int:
        """Genesis supply + minted - burned: what :meth:`total_holdings` must equal."""
        return self.genesis.supply + self.minted - self.burned

    def epoch_of(self, height: int) -> int:
        """The epoch whose validator set votes on block ``height`` (genesis: epoch 0)."""
        return max(0, height - 1) // self.params.epoch_length

    def validator_snapshot_at(self, height: int) -> dict[bytes, int] | None:
        """{key: stake} of the set that voted on block ``height``; None if forgotten."""
        rows = self.epochs.get(height_key(self.epoch_of(height)))
        return None if rows is None else dict(rows)

    def beacon_at(self, height: int) -> bytes | None:
        """The beacon after finalized block ``height`` (D55); None if not kept."""
        return self.beacons.get(height_key(height))

    def block_hash_at(self, height: int) -> bytes | None:
        """The hash of finalized block ``height`` (genesis hash at 0); None if not kept."""
        return self.block_hashes.get(height_key(height))

    def validator_powers(self) -> dict[bytes, int]:
        """Who should be a validator now: bonds of at least the minimum stake, neither
        jailed for double-signing nor waiting to unjail after downtime."""
        minimum = self.params.min_validator_stake
        return {
            k: b.stake
            for k, b in self.bonds.items()
            if b.stake >= minimum
            and b.jailed_until <= self.height
            and not self.downtime_jailed_until(k)
        }

    def downtime_jailed_until(self, key: bytes) -> int:
        """0, or the height from which ``key`` may send UNJAIL (jailed for downtime)."""
        row = self.liveness.get(key)
        return row.jailed_until if row is not None else 0

    # --- writes (through these, so ``dirty`` is right) -------------------------------------

    def put(self, table: str, key: bytes, value: Any) -> None:
        """Set (or with None, delete) one row of ``table``."""
        rows = getattr(self, table)
        if value is None:
            rows.pop(key, None)
        else:
            rows[key] = value
        self.dirty[table].add(key)

    # --- hashing and (de)serialization ----------------------------------------------------

    def scalars(self) -> bytes:
        """The scalar part of the state, canonically encoded."""
        return msgpack.packb(
            [
                self.height,
                self.time_ms,
                self.last_block_hash,
                self.work_pool,
                self.minted,
                self.burned,
                self.validators.encode(),
                self.last_validators.encode(),
                self.beacon,
                self.verdict_pool,
            ],
            use_bin_type=True,
        )

    @classmethod
    def from_rows(
        cls, genesis: Genesis, scalars: bytes, rows: dict[str, dict[bytes, Any]]
    ) -> State:
        """Rebuild a state from :meth:`scalars` and decoded table rows (the chain store)."""
        h, t, last, pool, minted, burned, vs, lvs, beacon, *rest = msgpack.unpackb(
            scalars, raw=False
        )
        tables = {}
        for table in TABLES:
            kind = _TUPLE_TYPES.get(table)
            src = rows.get(table, {})
            if table in ("unbonding", "epochs", "worker_epochs"):
                tables[table] = {k: tuple(tuple(e) for e in v) for k, v in src.items()}
            elif table == "commit_jobs":
                tables[table] = {k: tuple(v) for k, v in src.items()}
            elif kind is not None:
                tables[table] = {k: kind(*v) for k, v in src.items()}
            else:
                tables[table] = dict(src)
        return cls(
            genesis,
            Height(h),
            t,
            last,
            ValidatorSet.decode(vs),
            ValidatorSet.decode(lvs),
            pool,
            minted,
            burned,
            **tables,
            beacon=beacon,
            verdict_pool=rest[0] if rest else 0,
        )


def encode_row(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def decode_row(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False)


# ``block_hashes`` is left out of the state hash: it only repeats the hashes of the
# chain's last blocks, which every header already commits to through ``parent_hash``,
# and hashing its ~1,400 rows would be most of the cost of hashing a small state.
# ``beacons`` likewise: each is the beacon scalar of an earlier state, fixed by the
# headers' VRF proofs.
HASHED_TABLES = tuple(t for t in TABLES if t not in ("block_hashes", "beacons"))


def state_hash(state: State) -> bytes:
    """sha256 over the scalars and every table but ``block_hashes``, in key order.

    Remembered on the state object: a state is never changed once the ledger returned it
    (the ledger works on copies), so the hash of a finished state is computed once.
    """
    cached = state.__dict__.get("_state_hash")
    if cached is not None and cached[0] == state.height:
        return cached[1]
    parts = [state.genesis.hash, state.scalars()]
    for table in HASHED_TABLES:
        rows = getattr(state, table)
        parts.append(msgpack.packb([[k, rows[k]] for k in sorted(rows)], use_bin_type=True))
    digest = sha256(b"".join(sha256(p) for p in parts))
    state.__dict__["_state_hash"] = (state.height, digest)
    return digest


def height_key(height: int) -> bytes:
    return height.to_bytes(8, "big")


def _snapshot_rows(vset: ValidatorSet) -> tuple[tuple[bytes, int], ...]:
    return tuple((v.key, v.power) for v in vset.validators)


def _no_dirt() -> dict[str, set[bytes]]:
    return {t: set() for t in TABLES}
