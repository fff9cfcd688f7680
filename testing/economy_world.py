"""The world of the economic simulation (:mod:`.economy`): its parameters, models,
costs, configuration and operators."""

from __future__ import annotations

import dataclasses
import hashlib
from collections import deque

from aipg.models import DiffusionParams
from aipg.models.cost import COST_KIND_DIFFUSION, COST_KIND_LLM, ModelCost
from aipg.stake.genesis import MAINNET_PARAMS
from aipg.wire import UNITS_PER_AIPG, Identity

AIPG = UNITS_PER_AIPG
CHAIN = "aipg-economy-1"
FRACTIONS = (0.01, 0.1, 0.3)
STRATEGIES = (
    "honest",
    "self_dealing",
    "grinding",
    "sybil_claims",
    "fake_cost_model",
    "pool_sniping",
    "lazy_validators",
    "copying_validators",
    "false_accusation",
    "withholding",
    "duplicate_receipts",
    "sybil_gateways",
    "audit_gambling",
)
PARAMS = MAINNET_PARAMS.replace(
    target_block_time_ms=1_000,
    epoch_length=10,
    unbonding_period=500,
    jail_period=20,
    escrow_period=200,
    review_period=20,
    signed_blocks_window=100,
    downtime_jail_period=20,
    # Members commit, then reveal once the phase closes (D70, D71): mainnet's 5 blocks.
    verdict_commit_blocks=5,
    # Thirteen-odd validators: mainnet's 0.5 % weight cap would cap every one of them and
    # make the draw uniform over keys, paying the adversary's minimum-bond validator keys
    # a seat each as if they held a full share (the honest baseline was 1.7 at x = 0.1).
    # Seats by stake, seven a committee: a quorum is five seats, more than the grinding
    # adversary has eligible keys (its gateway and worker sit on no committee of theirs),
    # so no committee can be its own; five seats (a quorum of four) could be.
    committee_size=7,
    committee_weight_cap_bps=10_000,
    # Seven seats at the genesis quorum, with reserves: a 5/6 quorum of seven would be
    # six seats, and mainnet's sizes (D100, D101) are analytic (pouw/sizing.py) and
    # tested on their own ledger (tests/stake/test_mainnet_seats.py).
    audit_quorum_numerator=0,
    audit_quorum_denominator=0,
    committee_reserves=1,
    audit_appeal_blocks=0,
)
TOTAL_STAKE = 10_000_000 * AIPG
HONEST_OPERATORS = 9
# The registered models: an LLM with the demo decoder's cost, a diffusion model with the
# demo UNet's, and (fake_cost_model) a tiny model registered at 10,000x its real cost.
LLM_MODEL, IMAGE_MODEL, TINY_MODEL = b"L" * 32, b"D" * 32, b"T" * 32
LLM_COST = ModelCost(LLM_MODEL, COST_KIND_LLM, token_macs=245_760, pair_macs=384,
                     max_prompt_tokens=383, max_total_tokens=384)  # fmt: skip
IMAGE_COST = ModelCost(IMAGE_MODEL, COST_KIND_DIFFUSION, step_fixed=872_448,
                       step_pixel=1_299_456, text_macs=262_144, decode_pixel=693_504,
                       max_steps=500, max_latent_pixels=1024, vae_scale_factor=8)  # fmt: skip
TINY_TRUE = LLM_COST.replace(model_id=TINY_MODEL, token_macs=250, pair_macs=0)
TINY_CLAIMED = TINY_TRUE.replace(token_macs=2_500_000)
TRUE_COSTS = {LLM_MODEL: LLM_COST, IMAGE_MODEL: IMAGE_COST, TINY_MODEL: TINY_TRUE}
CHALLENGE_STEPS = 2  # diffusion steps a committee member re-runs
# One claimant per job, drawn by capacity: the assignment in proportion to measured
# capacity that issue 12 asks of the scheduler (the beacon branch's draw), through the
# real Scheduler. More claimants make today's least-queue rule favour fast workers.
CLAIMS_PER_JOB = 1
IMAGE_SHARE = 0.1  # of honest jobs
IMAGE = DiffusionParams(steps=10, width=32, height=32)  # 16 latent pixels
JOB_DEADLINE_MS = 120_000  # a slow worker's job still finishes in time
SELF_JOBS_PER_BLOCK = 6  # most jobs an adversary worker invents for itself per block


@dataclasses.dataclass
class Config:
    strategy: str = "honest"
    fraction: float = 0.1
    blocks: int = 300
    jobs_per_block: int = 4
    load: float = 0.6  # honest demand over total compute
    idle_every: int = 50  # honest demand pauses for the last ``idle_blocks`` of each
    idle_blocks: int = 8
    seed: int = 1


@dataclasses.dataclass
class Outcome:
    reward_ratio: float
    honest_slashes: int
    halted_heights: int
    validator_macs: int
    worker_macs: int


@dataclasses.dataclass
class Operator:
    identity: Identity
    adversary: bool
    capacity: int  # MACs per block
    queue: deque = dataclasses.field(default_factory=deque)  # [job, assignment, macs left]

    @property
    def key(self) -> bytes:
        return self.identity.public_bytes


def ident(label: str) -> Identity:
    return Identity.from_seed(hashlib.sha256(label.encode()).digest())


def low_key(label: str) -> Identity:
    """A key that sorts before almost every other (sybils win the scheduler's ties)."""
    i = 0
    while True:
        key = ident(f"{label}/{i}")
        if key.public_bytes[0] < 4:
            return key
        i += 1
