"""Committees: who verifies a receipt, and when their votes are enough.

The committee of a job is a weighted sample, without replacement, of ``size``
validators from the validator set, seeded by (D56)

    seed = H("committee/seed/1", beacon of block c + COMMITTEE_DELAY, job id)

where ``c`` is the height of the block that committed the job's id (a COMMIT or
ESCROW transaction, stake/tx.py). The beacon (D55, stake/beacon.py) is a chain of
VRF outputs nobody can bias; the one ``COMMITTEE_DELAY`` blocks after the commitment
did not exist when the job, its nonce, its assignment and its receipt's inputs were
fixed, so grinding any of them (the old seed, a block hash below the assignment
height the gateway chose, fell to 474 nonces) changes nothing. The validator set is
the snapshot at that same height.

Conflicts of interest: the job's worker, its gateway (the job's signer) and its client
are never drawn; they are removed from the validator set before the draw.

Abstentions: a member that cannot check the work (it does not host the model, or the
worker did not serve what the check needs) says so with an UNAVAILABLE verdict. That is
no vote: its seat passes to the next reserve in draw order (with commit-reveal, only
while the member has no commitment on the receipt: D108, ``reveal.steps_aside``). A
committee of ``size`` has ``reserves(size)`` reserves; it decides only while it has
``size`` seated members, so a job whose members cannot check it stays undecided and
unpaid, never convicted.

Quorum, over the seated members, counted in seats (each seated member one vote; stake
decides only the chance to be drawn, D57): valid votes on at least ``num/den`` of the
seats (the genesis quorum, 2/3 on mainnet) make a Certificate; invalid votes on more
than ``1 - num/den`` make FraudEvidence. The two cannot both hold. Draw weights are the
validators' stakes capped so that nobody holds more than ``cap_bps`` of the total
(:func:`aipg.pouw.sizing.capped_weights`); :mod:`aipg.pouw.sizing` computes how large a
committee must be for an adversary with 1/3 of the weight to hold a quorum with
probability below 1e-6.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping

from .records import hash_tagged
from .sizing import BPS, capped_weights
from .types import NodeKey, Stake

Quorum = tuple[int, int]  # (numerator, denominator) of the seats that certify
DEFAULT_QUORUM: Quorum = (2, 3)

COMMITTEE_LOOKAHEAD = 2  # an assignment's least height (kept for old records' checks)
# Blocks between the one that commits a job and the one whose beacon draws its
# committee (and its worker): a proposer knows its own block's beacon in advance, so
# the seed is at least one block later; two makes an adversary propose both (D56).
COMMITTEE_DELAY = 2
COMMITTEE_SIZE = 5  # default committee size (a chain parameter; genesis may change it)


@dataclasses.dataclass(frozen=True)
class CommitteeRules:
    """The chain's committee parameters (from its genesis): seats, the share of seats
    that certifies, and the cap on any validator's share of the draw weight."""

    size: int = COMMITTEE_SIZE
    quorum: Quorum = DEFAULT_QUORUM
    cap_bps: int = BPS
    # Reserves: True, ``reserves(size)`` of them, and an abstaining member's seat
    # passes to the next; False, none: every seat drawn counts, an abstention as no vote.
    spares: bool = True

    def draw(
        self, validators: Mapping[bytes, int], seed: bytes, excluded: Iterable[bytes] = ()
    ) -> Committee:
        return draw_committee(
            validators,
            seed,
            self.size,
            excluded,
            quorum=self.quorum,
            cap_bps=self.cap_bps,
            spares=self.spares,
        )


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
    quorum: Quorum = DEFAULT_QUORUM  # the share of the seats that certifies
    fixed: bool = False  # no reserves: an abstaining member keeps its seat, unvoted

    def seated(self, abstained: Iterable[bytes] = ()) -> tuple[NodeKey, ...]:
        """The voting members once ``abstained`` have stepped aside; fewer than
        ``size`` when the reserves ran out (then the committee cannot decide). With
        fixed seats, the members: an abstention is a seat without a vote (D100)."""
        if self.fixed:
            return self.members
        out = set(abstained)
        return tuple(k for k in self.candidates if k not in out)[: self.size]

    @property
    def members(self) -> tuple[NodeKey, ...]:
        """The seated members before anyone abstains."""
        return self.candidates[: self.size]

    def __contains__(self, key: object) -> bool:
        return key in self.candidates


def draw_committee(
    validators: Mapping[bytes, int],
    seed: bytes,
    size: int,
    excluded: Iterable[bytes] = (),
    *,
    quorum: Quorum = DEFAULT_QUORUM,
    cap_bps: int = BPS,
    spares: bool = True,
) -> Committee:
    """The committee of ``size`` seats (plus :func:`reserves`, unless ``spares`` is
    False: then its seats are fixed) drawn by ``seed`` from ``validators`` without the
    ``excluded`` keys, each weighted by its stake capped at ``cap_bps`` of the whole
    set's weight (the cap is computed before the exclusions, so a validator's weight
    does not depend on whose job it is)."""
    out = set(excluded)
    weights = capped_weights(validators, cap_bps)
    eligible = {k: s for k, s in weights.items() if k not in out}
    extra = reserves(size) if spares else 0
    candidates = sample_committee(eligible, seed, size + extra)
    return Committee(candidates, min(size, len(candidates)), quorum, fixed=not spares)


def committee_seed(beacon: bytes, job_id: bytes) -> bytes:
    """The 32-byte seed of a job's committee: the beacon ``COMMITTEE_DELAY`` blocks
    after the job was committed, and the (committed) job id."""
    return hash_tagged(b"committee/seed/1", beacon, job_id)


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
    t = tally(
        seated,
        validators,
        {k: v for k, v in votes.items() if v is not None},
        quorum=committee.quorum,
    )
    if len(seated) < committee.size:
        return Tally(t.committee_stake, Stake(0), Stake(0), short=True, quorum=committee.quorum)
    return t


@dataclasses.dataclass(frozen=True)
class Tally:
    """Seats behind each kind of vote (each seated member one vote, D57; the fields
    keep their old ``_stake`` names)."""

    committee_stake: Stake  # seats
    valid_stake: Stake  # seats voting valid
    invalid_stake: Stake  # seats voting invalid
    short: bool = False  # too many abstentions: fewer seated members than seats
    quorum: Quorum = DEFAULT_QUORUM

    @property
    def certifies(self) -> bool:
        """Valid votes on at least ``num/den`` of the seats."""
        num, den = self.quorum
        return self.committee_stake > 0 and den * self.valid_stake >= num * self.committee_stake

    @property
    def convicts(self) -> bool:
        """Invalid votes on more than ``1 - num/den`` of the seats (so that certifying
        and convicting never both hold)."""
        num, den = self.quorum
        return den * self.invalid_stake > (den - num) * self.committee_stake

    @property
    def upholds(self) -> bool:
        """Invalid votes on at least ``num/den`` of the seats: what a review needs to
        uphold a conviction (slashing anyone takes a supermajority)."""
        num, den = self.quorum
        return (
            not self.short
            and self.committee_stake > 0
            and den * self.invalid_stake >= num * self.committee_stake
        )


def tally(
    committee: Iterable[bytes],
    validators: Mapping[bytes, int],
    votes: Mapping[bytes, bool],
    *,
    quorum: Quorum = DEFAULT_QUORUM,
) -> Tally:
    """Count the seats of ``votes`` (member key -> valid?) over ``committee``.

    Votes of keys outside the committee count for nothing (callers reject them first);
    ``validators`` names who may hold a seat (a member without stake holds none).
    """
    members = {k for k in committee if validators.get(k, 0) > 0}
    valid = sum(1 for k, ok in votes.items() if k in members and ok)
    invalid = sum(1 for k, ok in votes.items() if k in members and not ok)
    return Tally(Stake(len(members)), Stake(valid), Stake(invalid), quorum=quorum)
