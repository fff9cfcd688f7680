"""Validator sets and CometBFT's weighted round-robin proposer selection.

The proposer rule follows CometBFT's ``ValidatorSet.IncrementProposerPriority``: every
step each validator's priority grows by its voting power, the highest priority proposes
(ties: the smaller key) and pays the total power back. Before a run of steps priorities
are rescaled so their spread stays within twice the total power, then centred on zero.
Over many heights each validator proposes in proportion to its power, and the sequence is
a pure function of the set, so every node agrees on it.

Voting power is bonded stake in base units. A set is immutable; updates return new sets.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping

import msgpack

from aipg.wire import sha256

from .types import ValidatorKey

PRIORITY_WINDOW_SIZE_FACTOR = 2  # CometBFT: priorities stay within 2 * total power


def _trunc_div(a: int, b: int) -> int:
    """Go's integer division (truncates toward zero), which CometBFT's rescaling uses."""
    q = abs(a) // b
    return q if a >= 0 else -q


@dataclasses.dataclass(frozen=True, slots=True)
class Validator:
    key: ValidatorKey
    power: int
    priority: int


@dataclasses.dataclass(frozen=True)
class ValidatorSet:
    """Validators sorted by key, with their proposer priorities and the current proposer
    (the proposer of round 0 at the height this set is for)."""

    validators: tuple[Validator, ...]
    proposer_key: ValidatorKey

    @classmethod
    def new(cls, powers: Mapping[bytes, int]) -> ValidatorSet:
        """A fresh set (all priorities 0), advanced once so it has a proposer."""
        vals = tuple(Validator(ValidatorKey(k), p, 0) for k, p in sorted(powers.items()) if p > 0)
        if not vals:
            raise ValueError("a validator set needs at least one validator with power")
        return cls(vals, vals[0].key).advanced(1)

    # --- queries ------------------------------------------------------------------------

    @property
    def total_power(self) -> int:
        return self._index[1]

    @property
    def _index(self) -> tuple[dict[bytes, int], int]:
        cached = self.__dict__.get("_cache")
        if cached is None:
            powers = {v.key: v.power for v in self.validators}
            cached = (powers, sum(powers.values()))
            object.__setattr__(self, "_cache", cached)
        return cached

    def power_of(self, key: bytes) -> int:
        """Voting power of ``key`` (0 when it is not in the set)."""
        return self._index[0].get(key, 0)

    def __contains__(self, key: object) -> bool:
        return key in self._index[0]

    def __len__(self) -> int:
        return len(self.validators)

    def snapshot(self) -> dict[bytes, int]:
        """{validator public key: stake}: the view pouw's committee sampling takes."""
        return dict(self._index[0])

    def has_quorum(self, power: int) -> bool:
        """More than 2/3 of the total voting power."""
        return 3 * power > 2 * self.total_power

    def has_one_third(self, power: int) -> bool:
        """More than 1/3 of the total voting power (at least one honest validator)."""
        return 3 * power > self.total_power

    def proposer(self, round_: int = 0) -> ValidatorKey:
        """The proposer of ``round_`` at this set's height."""
        if round_ == 0:
            return self.proposer_key
        return self.advanced(round_).proposer_key

    def hash(self) -> bytes:
        return sha256(self.encode())

    # --- updates ------------------------------------------------------------------------

    def advanced(self, times: int) -> ValidatorSet:
        """The set after ``times`` proposer steps (CometBFT ``IncrementProposerPriority``)."""
        total = self.total_power
        prios = [v.priority for v in self.validators]
        prios = _centred(_rescaled(prios, PRIORITY_WINDOW_SIZE_FACTOR * total))
        powers = [v.power for v in self.validators]
        keys = [v.key for v in self.validators]
        chosen = 0
        for _ in range(times):
            prios = [p + w for p, w in zip(prios, powers, strict=True)]
            chosen = max(range(len(prios)), key=lambda i: (prios[i], _neg(keys[i])))
            prios[chosen] -= total
        vals = tuple(Validator(k, w, p) for k, w, p in zip(keys, powers, prios, strict=True))
        return ValidatorSet(vals, keys[chosen])

    def updated(self, powers: Mapping[bytes, int]) -> ValidatorSet | None:
        """The set with ``powers`` as its new membership (None when nobody has power).

        As in CometBFT: staying validators keep their priority, newcomers start at
        -1.125 x the new total (so joining is no shortcut to proposing), then priorities
        are rescaled and centred. The result is not yet advanced for the next height.
        """
        new_total = sum(p for p in powers.values() if p > 0)
        if new_total == 0:
            return None
        old = {v.key: v.priority for v in self.validators}
        start = -(new_total + (new_total >> 3))
        vals = [
            Validator(ValidatorKey(k), p, old.get(k, start))
            for k, p in sorted(powers.items())
            if p > 0
        ]
        prios = _centred(_rescaled([v.priority for v in vals], 2 * new_total))
        vals = [dataclasses.replace(v, priority=p) for v, p in zip(vals, prios, strict=True)]
        return ValidatorSet(tuple(vals), vals[0].key)

    # --- encoding -----------------------------------------------------------------------

    def encode(self) -> bytes:
        rows = [[v.key, v.power, v.priority] for v in self.validators]
        return msgpack.packb([rows, self.proposer_key], use_bin_type=True)

    @classmethod
    def decode(cls, data: bytes) -> ValidatorSet:
        rows, proposer = msgpack.unpackb(data, raw=False)
        return cls(tuple(Validator(ValidatorKey(k), p, q) for k, p, q in rows), proposer)


def _neg(key: bytes) -> tuple[int, ...]:
    """Order key so that max() prefers the smaller key on equal priority."""
    return tuple(-b for b in key)


def _rescaled(prios: list[int], diff_max: int) -> list[int]:
    if not prios or diff_max <= 0:
        return prios
    diff = max(prios) - min(prios)
    if diff <= diff_max:
        return prios
    ratio = (diff + diff_max - 1) // diff_max
    return [_trunc_div(p, ratio) for p in prios]


def _centred(prios: list[int]) -> list[int]:
    avg = sum(prios) // len(prios)  # big.Int.Div: Euclidean, i.e. floor for n > 0
    return [p - avg for p in prios]


def powers_from(items: Iterable[tuple[bytes, int]]) -> dict[bytes, int]:
    return {bytes(k): int(p) for k, p in items}
