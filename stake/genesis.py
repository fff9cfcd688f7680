"""The genesis: chain id, parameters, initial allocations and initial validators.

A genesis is a record (so it has one canonical encoding and a hash that names the chain)
and is kept on disk as TOML. Amounts in the file are AIPG written as decimal strings
(``"10000"``, ``"0.5"``), parsed exactly into base units; parameters counted in blocks,
milliseconds or basis points are plain integers.
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any

from aipg.pouw import CommitteeRules
from aipg.wire import (
    U16,
    U64,
    UNITS_PER_AIPG,
    Address,
    AddressBytes,
    MaxLen,
    PublicKeyBytes,
    Range,
    Record,
    Units,
    UnitsField,
    WireError,
    encode,
    format_amount,
    parse_amount,
    record,
    sha256,
)

from .types import BPS

BpsField = Annotated[int, Range(0, BPS)]
Positive = Annotated[int, Range(1, 2**63 - 1)]

MAX_ALLOCATIONS = 1_000_000  # every PoW-era balance carries over
MAX_GENESIS_VALIDATORS = 10_000
# A liveness window is a bitmap of this many bits per validator with misses in it
# (12.5 KB at most); longer windows would make every state hash slow.
MAX_SIGNED_BLOCKS_WINDOW = 100_000
DEVNET_COMMITTEE_SIZE = 5


class GenesisError(Exception):
    """A genesis file is malformed or inconsistent; the message says what to fix."""


@record(tag=400)
class ChainParams(Record):
    """Protocol parameters fixed at genesis. Amounts in base units, durations in blocks
    unless named ``_ms``, shares in basis points."""

    block_reward: UnitsField
    halving_interval: Positive
    max_supply: UnitsField
    operations_share_bps: BpsField  # of every block reward, to the operations wallet
    work_share_bps: BpsField  # of the rest, to verified work (the remainder to validators)
    proposer_bonus_bps: BpsField  # of the validators' part, to the block's proposer
    target_block_time_ms: Positive
    min_validator_stake: UnitsField
    unbonding_period: Positive  # also the age limit of double-sign evidence
    epoch_length: Positive  # validator-set changes take effect at multiples of this
    committee_size: Annotated[int, Range(1, 1000)]
    quorum_numerator: Annotated[int, Range(1, 100)]
    quorum_denominator: Annotated[int, Range(1, 100)]
    double_sign_slash_bps: BpsField
    fraud_slash_bps: BpsField
    fraud_refund_bps: BpsField  # of a worker's slashed bond, to the defrauded payer
    jail_period: Positive
    escrow_period: Positive  # a paid job's fee stays locked this long before it can be reclaimed
    timeout_propose_ms: Positive
    timeout_vote_ms: Positive
    timeout_delta_ms: U64  # each round's timeouts grow by this much
    # Liveness (stake/liveness.py): the last ``signed_blocks_window`` heights of each
    # validator are counted; one that signed less than ``min_signed_per_window_bps`` of
    # them is jailed for ``downtime_jail_period`` blocks, slashed ``downtime_slash_bps``,
    # and needs an UNJAIL transaction to return.
    signed_blocks_window: Annotated[int, Range(1, MAX_SIGNED_BLOCKS_WINDOW)]
    min_signed_per_window_bps: BpsField  # 0 turns liveness jailing off
    downtime_jail_period: Positive
    downtime_slash_bps: BpsField
    # Reviews (stake/review.py): fraud evidence slashes nobody until a second, larger
    # committee decides it within ``review_period`` blocks; accusers it overturns lose
    # ``false_accusation_slash_bps`` of their bonds.
    review_period: Positive
    false_accusation_slash_bps: BpsField
    # Commit, then reveal (pouw/reveal.py, stake/reveal.py): a receipt's commit phase
    # closes this many blocks after the block carrying its first verdict commitment;
    # only commitments carried by then count. 0 turns commit-reveal off (verdicts count
    # as they arrive).
    verdict_commit_blocks: Annotated[int, Range(0, 10_000)] = 0
    # Withholding challenges (stake/challenge.py): a worker must answer a committee
    # member's challenge within ``challenge_period`` blocks or lose
    # ``withholding_slash_bps`` of its bond; the challenger deposits ``challenge_fee``,
    # which goes to the worker when it answers.
    challenge_period: Positive = 10
    challenge_fee: UnitsField = 0
    withholding_slash_bps: BpsField = 0
    # Economics (stake/models.py, stake/pool.py; issue 12): registering a model's cost
    # burns ``model_registration_fee``. What a gateway's jobs, and what a worker, earn
    # from work pools is a budget that fills by ``gateway_pool_cap_bps`` (resp.
    # ``worker_pool_cap_bps``) x the key's share of all bonded stake of each block's pool
    # and holds at most ``pool_budget_blocks`` blocks of that; 0 turns a budget off.
    model_registration_fee: UnitsField = 10 * UNITS_PER_AIPG
    gateway_pool_cap_bps: Annotated[int, Range(0, 10 * BPS)] = 10_500
    worker_pool_cap_bps: Annotated[int, Range(0, 10 * BPS)] = 10_500
    pool_budget_blocks: Annotated[int, Range(1, 100_000)] = 100
    # A block's pool pays each work unit at most this times the chain's usual rate (an
    # average of past blocks' pool per unit, D107); the rest burns, so work timed into a
    # block with little other work (after an idle spell) earns no windfall. 0: no cap.
    pool_rate_cap_bps: Annotated[int, Range(0, 100 * BPS)] = 0
    # Committees (pouw/sizing.py, D57): no validator holds more than this share of a
    # committee draw's weight; with the quorum above it sizes ``committee_size``.
    committee_weight_cap_bps: Annotated[int, Range(1, BPS)] = BPS
    # The least bond of a worker registered for drawn, pool-earning jobs (D58).
    min_worker_bond: UnitsField = 100 * UNITS_PER_AIPG
    # Forced errors (pouw/forced.py, stake/forced.py, D75): a worker's VRF over each
    # assignment makes this share of LLM jobs known-bad receipts; a committee member whose
    # revealed vote on one is valid loses ``lazy_slash_bps`` of its bond (after a review)
    # and is jailed ``jail_period``. 0 turns forced errors off.
    forced_error_bps: BpsField = 0
    lazy_slash_bps: BpsField = 0
    # Verdict commitments (stake/reveal.py, D77): the most rows one member may hold in
    # the ledger at once (each leaves when an outcome counts it, or at the horizon);
    # beyond it that member's commitments are refused, nobody else's.
    max_open_commits: Annotated[int, Range(1, 1_000_000)] = 4_096
    # Audit sampling (stake/audit.py, D79-D82): a claimed receipt is re-checked by its
    # committee with a probability that starts at 100 % and falls, once a worker has
    # ``audit_full_jobs`` certified audits, as (audit_full_jobs / record)^2 down to
    # ``audit_floor_bps``; never below what makes the expected slash twice the claim's
    # worth. BPS (the default): every claim is audited.
    audit_floor_bps: Annotated[int, Range(1, BPS)] = BPS
    audit_full_jobs: Annotated[int, Range(1, 1_000_000)] = 8
    # The least fee of a COMMIT (free-tier commitments are otherwise free to spam, D83).
    commit_min_fee: UnitsField = 0
    # What a validator earns from the verdict pool is a budget like a worker's (D63) at
    # this factor of its bond share of each block's verdict-pool income; 0: none (D83).
    verdict_pool_cap_bps: Annotated[int, Range(0, 10 * BPS)] = 0
    # 1: work-pool budgets (D62, D63) fill by what the previous block paid out, not by
    # what it minted, so pool the honest keys could not use (idle spells) buys no
    # budget for invented work (D83); 0: by the minted pool.
    budget_refill_paid: Annotated[int, Range(0, 1)] = 0
    # The seats of a job's committee, which checks an audited claim and certifies it or
    # opens fraud evidence (D98); reviews, which decide every conviction, keep
    # ``committee_size``. 0: ``committee_size``; never more than it.
    audit_committee_size: Annotated[int, Range(0, 1000)] = 0
    # The share of a job committee's seats whose valid votes certify (D100): 0/0, the
    # genesis quorum; at least that, below 1. Invalid votes on more than the rest open
    # fraud evidence (every conviction is still decided by a review, at the genesis
    # quorum).
    audit_quorum_numerator: Annotated[int, Range(0, 100)] = 0
    audit_quorum_denominator: Annotated[int, Range(0, 100)] = 0
    # 1: committees and reviews draw reserves, and an abstaining member's seat passes to
    # the next (pouw/committee.py); 0: their seats are fixed, an abstention is a seat
    # without a vote, so honest members that cannot check raise nobody's share (D100).
    committee_reserves: Annotated[int, Range(0, 1)] = 1
    # An audited claim its committee has not decided this many blocks after its draw
    # may be appealed: fraud evidence without verdicts opens a review, which pays it or
    # convicts its worker (D96). 0: no appeals (the claim stays unpaid, as before).
    audit_appeal_blocks: Annotated[int, Range(0, 100_000)] = 0

    def committee_rules(self) -> CommitteeRules:
        """The committee parameters pouw draws and tallies with: reviews (convictions)."""
        return CommitteeRules(
            self.committee_size,
            (self.quorum_numerator, self.quorum_denominator),
            self.committee_weight_cap_bps,
            spares=bool(self.committee_reserves),
        )

    def job_committee_size(self) -> int:
        """The seats of a job's committee (D98)."""
        return min(self.audit_committee_size or self.committee_size, self.committee_size)

    def job_committee_quorum(self) -> tuple[int, int]:
        """The share of a job committee's seats that certifies (D100)."""
        if self.audit_quorum_numerator:
            return (self.audit_quorum_numerator, self.audit_quorum_denominator)
        return (self.quorum_numerator, self.quorum_denominator)

    def job_committee_rules(self) -> CommitteeRules:
        """The committee parameters of a job's committee (D98, D100): its seats, its
        quorum, its reserves, the same weight cap."""
        return dataclasses.replace(
            self.committee_rules(),
            size=self.job_committee_size(),
            quorum=self.job_committee_quorum(),
        )


MAINNET_PARAMS = ChainParams(
    block_reward=500 * UNITS_PER_AIPG,
    halving_interval=100_000,
    max_supply=200_000_000 * UNITS_PER_AIPG,
    operations_share_bps=500,  # 5 %
    work_share_bps=7_000,  # 70 % of the remaining 95 % pays verified work
    proposer_bonus_bps=1_000,
    target_block_time_ms=60_000,
    min_validator_stake=10_000 * UNITS_PER_AIPG,
    unbonding_period=20_160,  # 14 days of 60 s blocks
    epoch_length=100,
    # 68 seats with a 0.5 % cap: an adversary with 1/3 of the draw weight holds 2/3 of
    # the seats with probability 4.4e-7 (pouw/sizing.py). The least size below 1e-6 is
    # 62, but the bound is not monotone (the quorum rounds up): 63, 64, 66 exceed it.
    committee_size=68,
    # A job's committee (the audit of a claim: certify, or open fraud evidence) has 22
    # seats and certifies with 5/6 of them, 19 (D98, D101): an adversary with 1/3 of the
    # capped weight holds 19 with probability 5.5e-7, and 22 x 0.1 % = 0.022 member
    # checks a job at the floor (68 seats: 0.068, above the 5 % target). Invalid votes
    # on 4 seats open fraud evidence, which the review of 2 x 68 seats decides.
    audit_committee_size=22,
    audit_quorum_numerator=5,
    audit_quorum_denominator=6,
    # Seats are fixed (D100): with reserves, honest members that cannot check a model
    # pass their seats on and the adversary's share of the seated grows (68 seats with
    # 44 reserves, a third of the honest hosting the model: captured about 1 in 50).
    committee_reserves=0,
    # Four silent seats of 22 leave an audit undecided: after half an hour its claim may
    # go to the review of 2 x 68 seats (D96), which a third of silent stake blocks far
    # less often.
    audit_appeal_blocks=30,
    # Twice the usual pool per unit at most (D107): a thin block after an idle spell
    # pays its work no more than twice what a busy one would.
    pool_rate_cap_bps=20_000,
    quorum_numerator=2,
    quorum_denominator=3,
    double_sign_slash_bps=500,
    fraud_slash_bps=5_000,
    fraud_refund_bps=5_000,
    jail_period=1_440,  # a day
    escrow_period=1_440,
    timeout_propose_ms=3_000,
    timeout_vote_ms=1_000,
    timeout_delta_ms=500,
    signed_blocks_window=720,  # 12 hours of 60 s blocks
    min_signed_per_window_bps=500,  # jailed after missing more than 95 % of them
    downtime_jail_period=60,  # an hour; it returns at the epoch boundary after its UNJAIL
    downtime_slash_bps=0,  # downtime is a fault, not an attack: jailing is the cost
    review_period=60,  # an hour: time for the review committee to re-check and vote
    false_accusation_slash_bps=5_000,  # accusing an honest worker costs what fraud does
    # 5 minutes to check and commit after the first commitment: room for a member the
    # worker did not serve to challenge it and re-check from the answer (3 + 2 blocks)
    verdict_commit_blocks=5,
    challenge_period=3,  # 3 minutes to put the asked-for latents in a block
    challenge_fee=1 * UNITS_PER_AIPG,  # a challenge costs this when the worker answers
    withholding_slash_bps=100,  # 1 % of the bond per unanswered challenge
    committee_weight_cap_bps=50,
    # One LLM job in 200 is a forced error: a validator on every committee of a busy
    # chain meets one within hours, and its expected loss per unchecked vote, 0.5 % x
    # 5 % = 2.5e-4 of its bond (2.5 AIPG at the minimum stake), is well above what a
    # seat's verdict share pays; the compute wasted is 0.5 % of LLM work.
    forced_error_bps=50,
    lazy_slash_bps=500,  # what a double sign costs: it vouched for work it did not check
    # 0.1 %: 68 seats x 0.1 % = 0.068 member checks per job at the floor, which binds
    # from 1.33M AIPG bonded; below, the claim's worth sets the rate (D80, D81).
    audit_floor_bps=10,
    commit_min_fee=UNITS_PER_AIPG // 1_000,  # 0.001 AIPG (D83)
    verdict_pool_cap_bps=10_500,  # as the work pool's budgets (D83)
    budget_refill_paid=1,
)


def devnet_params(block_time_ms: int, nodes: int) -> ChainParams:
    """Mainnet parameters with devnet timing: short blocks, short periods, a committee
    that fits the number of validators."""
    return MAINNET_PARAMS.replace(
        target_block_time_ms=block_time_ms,
        unbonding_period=50,
        epoch_length=10,
        # A devnet has a handful of validators: its committees are small (at most 5,
        # every other node) and carry no 1e-6 bound; mainnet sizes them (D57).
        committee_size=min(DEVNET_COMMITTEE_SIZE, max(1, nodes - 1)),
        # and certify at the genesis quorum, abstentions seating reserves: five seats at
        # mainnet's 5/6 would need all five (D100, D101 size mainnet's)
        audit_quorum_numerator=0,
        audit_quorum_denominator=0,
        committee_reserves=1,
        audit_appeal_blocks=0,
        # a handful of demo jobs makes no usual rate (its e2e test replays the pools)
        pool_rate_cap_bps=0,
        jail_period=20,
        escrow_period=200,
        timeout_propose_ms=max(500, block_time_ms),
        timeout_vote_ms=max(250, block_time_ms // 2),
        timeout_delta_ms=250,
        # Long enough that a node restarted in a test is never jailed, short enough to
        # see a stopped one jailed within minutes (after 96 missed blocks).
        signed_blocks_window=100,
        downtime_jail_period=20,
        review_period=20,
        # Twenty seconds for the whole committee to check and commit, a withholding
        # challenge's ten and its re-check included (small devnets reveal sooner: once
        # every candidate has committed or abstained).
        verdict_commit_blocks=max(5, -(-20_000 // block_time_ms)),
        challenge_period=max(3, -(-10_000 // block_time_ms)),
        # Off on a devnet unless asked for (tests set it, up to every LLM job): the node's
        # other gateways still count a forced job's honest evidence as fraud and ban its
        # worker until the ForcedError lands, and a dozen-job demo would show it as such.
        forced_error_bps=0,
        # (its end-to-end test replays both pools by plain arithmetic)
        verdict_pool_cap_bps=0,
        budget_refill_paid=0,
    )


@record(tag=401)
class Allocation(Record):
    """A balance at genesis (carried over from the PoW era)."""

    address: AddressBytes
    amount: UnitsField


@record(tag=402)
class GenesisValidator(Record):
    """A validator bonded at genesis with ``stake`` base units."""

    public_key: PublicKeyBytes
    stake: UnitsField
    name: Annotated[str, MaxLen(64)] = ""


@record(tag=403, max_size=32 << 20)
class Genesis(Record):
    chain_id: Annotated[str, MaxLen(64)]
    genesis_time_ms: U64
    operations_wallet: AddressBytes
    params: ChainParams
    allocations: Annotated[tuple[Allocation, ...], MaxLen(MAX_ALLOCATIONS)]
    validators: Annotated[tuple[GenesisValidator, ...], MaxLen(MAX_GENESIS_VALIDATORS)]
    version: U16 = 1

    @property
    def supply(self) -> Units:
        """Genesis supply: every allocation plus every validator's bonded stake."""
        return Units(
            sum(a.amount for a in self.allocations) + sum(v.stake for v in self.validators)
        )

    @property
    def hash(self) -> bytes:
        return sha256(encode(self))


def check_genesis(genesis: Genesis) -> Genesis:
    """Return ``genesis`` if it is consistent; raise GenesisError saying what is not."""
    p = genesis.params
    if not genesis.chain_id or not genesis.chain_id.isprintable() or " " in genesis.chain_id:
        raise GenesisError(f"chain_id {genesis.chain_id!r} must be non-empty, without spaces")
    if p.quorum_numerator * 2 <= p.quorum_denominator or p.quorum_numerator >= p.quorum_denominator:
        raise GenesisError("quorum must be above 1/2 and below 1 (BFT needs more than 2/3)")
    if p.audit_quorum_numerator or p.audit_quorum_denominator:
        an, ad = p.audit_quorum_numerator, p.audit_quorum_denominator
        if not (an < ad and an * p.quorum_denominator >= p.quorum_numerator * ad):
            raise GenesisError(
                "audit quorum must be at least the quorum and below 1 (0/0: the quorum)"
            )
    addresses = [a.address for a in genesis.allocations]
    if len(set(addresses)) != len(addresses):
        raise GenesisError("an address is allocated twice; merge its allocations")
    keys = [v.public_key for v in genesis.validators]
    if len(set(keys)) != len(keys):
        raise GenesisError("a validator is listed twice")
    if not genesis.validators:
        raise GenesisError("a genesis needs at least one validator")
    for v in genesis.validators:
        if v.stake < p.min_validator_stake:
            raise GenesisError(
                f"validator {v.name or v.public_key.hex()} bonds {format_amount(v.stake)} AIPG; "
                f"a validator needs at least {format_amount(p.min_validator_stake)} AIPG"
            )
    if not p.review_period <= min(p.escrow_period, p.unbonding_period - 1):
        raise GenesisError(
            "review_period must be at most escrow_period (the seed block and validator set "
            "of a review must still be kept) and below unbonding_period (no accused bond "
            "may leave before its review)"
        )
    if p.verdict_commit_blocks >= p.escrow_period:
        raise GenesisError(
            "verdict_commit_blocks must be below escrow_period (a certificate must still "
            "be includable after its commit phase closes)"
        )
    if genesis.supply > p.max_supply:
        raise GenesisError(
            f"genesis supply {format_amount(genesis.supply)} AIPG is above the max supply "
            f"{format_amount(p.max_supply)} AIPG"
        )
    return genesis


def make_genesis(
    chain_id: str,
    *,
    operations_wallet: Address,
    allocations: Iterable[tuple[Address, Units]],
    validators: Iterable[tuple[bytes, Units, str]],
    params: ChainParams = MAINNET_PARAMS,
    genesis_time_ms: int = 0,
) -> Genesis:
    """Build and check a genesis; allocations are sorted by address (one canonical form)."""
    allocs = tuple(
        sorted((Allocation(a.raw, int(n)) for a, n in allocations), key=lambda a: a.address)
    )
    vals = tuple(
        sorted(
            (GenesisValidator(bytes(k), int(s), name) for k, s, name in validators),
            key=lambda v: v.public_key,
        )
    )
    try:
        g = Genesis(chain_id, genesis_time_ms, operations_wallet.raw, params, allocs, vals)
    except WireError as e:
        raise GenesisError(str(e)) from None
    return check_genesis(g)


# --- TOML ---------------------------------------------------------------------------

_AMOUNT_PARAMS = {"block_reward", "max_supply", "min_validator_stake", "model_registration_fee"}


def _amount(text: Any, where: str) -> int:
    if not isinstance(text, str):
        raise GenesisError(f'{where}: write amounts as quoted AIPG, e.g. "10000" or "0.5"')
    try:
        return parse_amount(text)
    except WireError as e:
        raise GenesisError(f"{where}: {e}") from None


def _params_from(table: dict[str, Any]) -> ChainParams:
    names = [f.name for f in ChainParams.__wire_fields__]
    unknown = set(table) - set(names)
    if unknown:
        raise GenesisError(f"[params]: unknown parameter(s) {', '.join(sorted(unknown))}")
    values = {}
    for name in names:
        v = table.get(name, getattr(MAINNET_PARAMS, name))
        if name in _AMOUNT_PARAMS and name in table:
            v = _amount(v, f"params.{name}")
        values[name] = v
    try:
        return ChainParams(**values)
    except WireError as e:
        raise GenesisError(f"[params]: {e}") from None


def genesis_from_toml(text: str) -> Genesis:
    """Parse and check a genesis TOML document. Raises GenesisError."""
    try:
        doc = tomllib.loads(text)
        ops = Address.from_string(doc["operations_wallet"])
        allocations = [
            (Address.from_string(a["address"]), _amount(a["amount"], f"allocation {i}"))
            for i, a in enumerate(doc.get("allocations", []))
        ]
        validators = [
            (
                bytes.fromhex(v["public_key"]),
                _amount(v["stake"], f"validator {i}"),
                v.get("name", ""),
            )
            for i, v in enumerate(doc.get("validators", []))
        ]
        return make_genesis(
            doc["chain_id"],
            operations_wallet=ops,
            allocations=allocations,
            validators=validators,
            params=_params_from(doc.get("params", {})),
            genesis_time_ms=doc.get("genesis_time_ms", 0),
        )
    except tomllib.TOMLDecodeError as e:
        raise GenesisError(f"not valid TOML: {e}") from None
    except KeyError as e:
        raise GenesisError(f"missing key {e.args[0]!r}") from None
    except (WireError, ValueError, TypeError, AttributeError) as e:
        raise GenesisError(str(e)) from None


def _toml_str(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def genesis_to_toml(genesis: Genesis) -> str:
    """The TOML form of ``genesis``; :func:`genesis_from_toml` reads it back identically."""
    amt = lambda n: _toml_str(format_amount(n, thousands=False))  # noqa: E731
    lines = [
        f"# aipg-node genesis (hash sha256:{genesis.hash.hex()})",
        f"chain_id = {_toml_str(genesis.chain_id)}",
        f"genesis_time_ms = {genesis.genesis_time_ms}",
        f"operations_wallet = {_toml_str(str(Address(genesis.operations_wallet)))}",
        "",
        "[params]",
    ]
    for f in ChainParams.__wire_fields__:
        v = getattr(genesis.params, f.name)
        lines.append(f"{f.name} = {amt(v) if f.name in _AMOUNT_PARAMS else v}")
    for v in genesis.validators:
        lines += ["", "[[validators]]", f"public_key = {_toml_str(v.public_key.hex())}"]
        lines += [f"stake = {amt(v.stake)}", f"name = {_toml_str(v.name)}"]
    for a in genesis.allocations:
        lines += ["", "[[allocations]]", f"address = {_toml_str(str(Address(a.address)))}"]
        lines.append(f"amount = {amt(a.amount)}")
    return "\n".join(lines) + "\n"


def load_genesis(path: str | Path) -> Genesis:
    """Read a genesis TOML file. Raises GenesisError (also for a missing file)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise GenesisError(f"cannot read genesis {path}: {e.strerror}") from None
    return genesis_from_toml(text)


def save_genesis(genesis: Genesis, path: str | Path) -> None:
    Path(path).write_text(genesis_to_toml(genesis), encoding="utf-8")
