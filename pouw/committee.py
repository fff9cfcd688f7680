"""Committees: who verifies a receipt, and when their votes are enough.

The committee of a job is a stake-weighted sample, without replacement, of
``size`` validators from the validator set, seeded by

    seed = H("committee/seed/1", hash of the finalized block at
             assignment.height - COMMITTEE_LOOKAHEAD, job id)

The block is final before the worker is assigned, so the worker cannot grind for a
friendly committee, and the job id is fixed when the gateway signs it. (Ed25519 is
not a VRF, so we do not use signatures as the randomness.) A gateway that colludes
with a worker could still try many job nonces against a known block hash; the cost of
that grows with the stake an attacker must gather in one committee, and is the
residual risk of any seed fixed before the work.

Conflicts of interest: the job's worker, its gateway (the job's signer) and its client
are never drawn; they are removed from the validator set before the draw.

Abstentions: a member that cannot check the work (it does not host the model, or the
worker did not serve what the check needs) says so with an UNAVAILABLE verdict. That is
no vote: its seat passes to the next reserve in draw order. A committee of ``size`` has
``reserves(size)`` reserves; it decides only while it has ``size`` seated members, so a
job whose members cannot check it stays undecided and unpaid, never convicted.

Quorum, over the seated members: valid votes holding >= 2/3 of their stake make a
Certificate; invalid votes holding > 1/3 make FraudEvidence. The two cannot both hold.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping

from .records import hash_tagged
from .types import NodeKey, Stake

COMMITTEE_LOOKAHEAD = 2  # blocks between the seed block and the assignment height
COMMITTEE_SIZE = 5  # default committee size (a chain parameter; genesis may change it)


def reserves(size: int) -> int:
    """How many reserves a committee of ``size`` draws: ``2 * (size // 3)``.

    As many as withholding allows. A worker that starves every honest member of its
    data (so they abstain) is judged by the seated reserves: it needs all ``size`` seats
    of ``size + reserves`` draws. With this many reserves that is never likelier than
    holding 2/3 of an ordinary committee, for any stake share up to 1/3; one more and it
    is (tests/pouw/test_committee.py checks both exactly). Committees of 1 or 2 get none.
    """
    return 2 * (size // 3)


@dataclasses.dataclass(frozen=True)
class Committee:
    """A job's committee: candidates in draw order, of which the first ``size`` that
    have not abstained are seated and vote."""

    candidates: tuple[NodeKey, ...]
    size: int  # seats: the requested size, or every eligible validator when fewer

    def seated(self, abstained: Iterable[bytes] = ()) -> tuple[NodeKey, ...]:
        """The voting members once ``abstained`` have stepped aside; fewer than
        ``size`` when the reserves ran out (then the committee cannot decide)."""
        out = set(abstained)
        return tuple(k for k in self.candidates if k not in out)[: self.size]

    @property
    def members(self) -> tuple[NodeKey, ...]:
        """The seated members before anyone abstains."""
        return self.candidates[: self.size]

    def __contains__(self, key: object) -> bool:
        return key in self.candidates


def draw_committee(
    validators: Mapping[bytes, int], seed: bytes, size: int, excluded: Iterable[bytes] = ()
) -> Committee:
    """The committee of ``size`` seats (plus its reserves) drawn by ``seed`` from
    ``validators`` without the ``excluded`` keys."""
    out = set(excluded)
    eligible = {k: s for k, s in validators.items() if k not in out}
    candidates = sample_committee(eligible, seed, size + reserves(size))
    return Committee(candidates, min(size, len(candidates)))


def committee_seed(finalized_block_hash: bytes, job_id: bytes) -> bytes:
    """The 32-byte seed of a job's committee."""
    return hash_tagged(b"committee/seed/1", finalized_block_hash, job_id)


def sample_committee(
    validators: Mapping[bytes, int], seed: bytes, size: int
) -> tuple[NodeKey, ...]:
    """Draw ``size`` distinct validators, each draw weighted by stake, in draw order.

    ``validators`` maps public key -> bonded stake (a snapshot of the validator set at
    the seed block). Validators are ordered by key first, so the result depends only on
    the set and the seed, not on the mapping's order. Returns every validator with
    stake when there are no more than ``size`` of them.
    """
    pool = sorted((bytes(k), int(s)) for k, s in validators.items() if s > 0)
    total = sum(s for _, s in pool)
    chosen: list[NodeKey] = []
    for draw in range(min(size, len(pool))):
        # 256 random bits mod a < 2**70 total: the bias is below 2**-180.
        r = int.from_bytes(hash_tagged(b"committee/draw/1", seed, draw.to_bytes(4, "big")))
        target = r % total
        acc = 0
        for i, (key, stake) in enumerate(pool):
            acc += stake
            if target < acc:
                chosen.append(NodeKey(key))
                total -= stake
                del pool[i]
                break
    return tuple(chosen)


def tally_seated(
    committee: Committee, validators: Mapping[bytes, int], votes: Mapping[bytes, bool | None]
) -> Tally:
    """Tally ``votes`` (candidate key -> valid?, or None for an abstention) over the
    seated members. A committee short of seats decides nothing (its tally says so)."""
    seated = committee.seated(k for k, v in votes.items() if v is None)
    t = tally(seated, validators, {k: v for k, v in votes.items() if v is not None})
    if len(seated) < committee.size:
        return Tally(t.committee_stake, Stake(0), Stake(0), short=True)
    return t


@dataclasses.dataclass(frozen=True)
class Tally:
    """Committee stake behind each kind of vote."""

    committee_stake: Stake
    valid_stake: Stake
    invalid_stake: Stake
    short: bool = False  # too many abstentions: fewer seated members than seats

    @property
    def certifies(self) -> bool:
        """>= 2/3 of the committee's stake voted valid."""
        return self.committee_stake > 0 and 3 * self.valid_stake >= 2 * self.committee_stake

    @property
    def convicts(self) -> bool:
        """> 1/3 of the committee's stake voted invalid."""
        return 3 * self.invalid_stake > self.committee_stake


def tally(
    committee: Iterable[bytes], validators: Mapping[bytes, int], votes: Mapping[bytes, bool]
) -> Tally:
    """Sum the stake of ``votes`` (member key -> valid?) over ``committee``.

    Votes of keys outside the committee count for nothing (callers reject them first).
    """
    members = set(committee)
    committee_stake = sum(validators[k] for k in members)
    valid = sum(validators[k] for k, ok in votes.items() if k in members and ok)
    invalid = sum(validators[k] for k, ok in votes.items() if k in members and not ok)
    return Tally(Stake(committee_stake), Stake(valid), Stake(invalid))
