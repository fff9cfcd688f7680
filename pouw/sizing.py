"""How big a committee must be: the exact probability that an adversary holds a quorum.

A committee of ``n`` seats decides by seats (each seated member one vote, D57): it
certifies with at least ``k = ceil(n * num / den)`` valid votes. An adversary holding a
share ``p`` of the draw weight controls a quorum when it holds ``k`` of the ``n`` seats.

Seats are drawn without replacement, weighted by each validator's *capped* draw weight
(:func:`capped_weights`: no validator holds more than ``cap_bps`` of the total). Without
replacement, every honest member drawn removes its weight from the pool, which raises the
adversary's chance at the next seat; with the cap, one draw removes at most a share
``c = cap_bps / 10_000``. On the event that the adversary ends with ``k`` seats, at most
``n - k`` honest members were ever drawn, so every draw gave the adversary a seat with
probability at most

    q* = p / (1 - (n - k) * c)

and the number of adversarial seats is dominated by a binomial ``Bin(n, q*)`` (couple
each draw with a biased coin of probability ``q*``; see docs/design.md D57). The tail
``P(Bin(n, q*) >= k)`` is computed exactly with rationals: :func:`capture_probability`.

For ``N`` validators of equal stake the draw is hypergeometric, and its exact tail
(:func:`hypergeometric_tail`) is smaller; tests check that the bound covers it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from fractions import Fraction

__all__ = [
    "BPS",
    "binomial_tail",
    "capped_weights",
    "capture_probability",
    "hypergeometric_tail",
    "min_committee_size",
    "quorum_seats",
    "seated_capture_probability",
]

BPS = 10_000
ONE_THIRD = Fraction(1, 3)
TARGET = Fraction(1, 10**6)


def quorum_seats(n: int, num: int, den: int) -> int:
    """Valid votes a committee of ``n`` needs: ``ceil(n * num / den)`` (at least 1)."""
    return max(1, -(-n * num // den))


def binomial_tail(n: int, p: Fraction, k: int) -> Fraction:
    """``P(Bin(n, p) >= k)`` exactly."""
    p = Fraction(p)
    if k <= 0:
        return Fraction(1)
    if k > n:
        return Fraction(0)
    q = 1 - p
    return sum((math.comb(n, i) * p**i * q ** (n - i) for i in range(k, n + 1)), Fraction(0))


def hypergeometric_tail(population: int, bad: int, n: int, k: int) -> Fraction:
    """``P(X >= k)`` for ``n`` draws without replacement from ``population`` items of
    which ``bad`` are adversarial (equal stakes), exactly."""
    n = min(n, population)
    total = math.comb(population, n)
    hits = sum(math.comb(bad, i) * math.comb(population - bad, n - i) for i in range(k, n + 1))
    return Fraction(hits, total)


def capture_probability(
    n: int,
    num: int,
    den: int,
    cap_bps: int = BPS,
    p: Fraction = ONE_THIRD,
) -> Fraction:
    """An upper bound, exact as a rational, on the probability that an adversary with a
    share ``p`` of the draw weight holds a quorum (``num/den`` of the seats) of a
    committee of ``n`` drawn without replacement with weights capped at ``cap_bps``
    (10_000: no cap, which gives no bound unless draws are with replacement)."""
    k = quorum_seats(n, num, den)
    room = 1 - Fraction((n - k) * cap_bps, BPS)
    if room <= 0:
        return Fraction(1)
    q = min(Fraction(1), Fraction(p) / room)
    return binomial_tail(n, q, k)


def seated_capture_probability(
    n: int,
    num: int,
    den: int,
    spares: int,
    hosting: Fraction,
    cap_bps: int = BPS,
    p: Fraction = ONE_THIRD,
) -> Fraction:
    """An upper bound on the probability that the adversary holds a quorum of the
    *seated* members of a committee of ``n`` seats drawn with ``spares`` reserves, when
    each honest member drawn can check the work (hosts the model, is online) with
    probability ``hosting`` and otherwise abstains, passing its seat on. The seated are
    the first ``n`` that do not abstain; the adversary's members never abstain.

    Abstentions shrink the honest side of the seated, not the adversary's: at
    ``hosting`` 1/3 a committee of 68 with 44 reserves is captured with probability about
    0.02 (drawn with replacement; 7.8e-9 when every honest member hosts it; D100), which is why mainnet's seats are fixed: an abstention keeps its seat
    unvoted, and the bound is :func:`capture_probability` whatever ``hosting``. Each draw
    is the adversary's with probability at most ``p / (1 - (n + spares - k) * c)`` on
    the capture event (at most that many honest members drawn); ``cap_bps`` 0 gives the
    draw with replacement (many equal validators)."""
    k = quorum_seats(n, num, den)
    room = 1 - Fraction((n + spares - k) * cap_bps, BPS)
    if room <= 0:
        return Fraction(1)
    a = min(Fraction(1), Fraction(p) / room)
    votes, absent = (1 - a) * hosting, (1 - a) * (1 - hosting)
    states = {(0, 0): Fraction(1)}  # (seated, of them the adversary's) -> probability
    for _ in range(n + spares):
        nxt: dict[tuple[int, int], Fraction] = {}
        for (seated, bad), pr in states.items():
            if seated == n:
                nxt[(seated, bad)] = nxt.get((seated, bad), 0) + pr
                continue
            for key, q in (((seated + 1, bad + 1), a), ((seated + 1, bad), votes),
                           ((seated, bad), absent)):  # fmt: skip
                if q:
                    nxt[key] = nxt.get(key, 0) + pr * q
        states = nxt
    return sum((pr for (seated, bad), pr in states.items() if seated == n and bad >= k),
               Fraction(0))  # fmt: skip


def min_committee_size(
    num: int, den: int, cap_bps: int, target: Fraction = TARGET, p: Fraction = ONE_THIRD
) -> int | None:
    """The smallest committee whose capture probability is below ``target`` (None when
    none up to 1000 seats is: the cap is too loose)."""
    for n in range(1, 1001):
        if capture_probability(n, num, den, cap_bps, p) < target:
            return n
    return None


def capped_weights(stakes: Mapping[bytes, int], cap_bps: int) -> dict[bytes, int]:
    """Each validator's draw weight: its stake, capped at a level ``t`` such that nobody
    holds more than ``cap_bps`` of the total weight (water-filling, integer exact).

    The largest ``m`` stakes are set to ``t = floor(cap * R / (1 - cap * m))`` where
    ``R`` is the sum of the others, for the smallest ``m`` at which the next stake fits
    under ``t``. When no ``m`` works (fewer than ``1 / cap`` validators), every
    validator weighs the same. ``cap_bps >= 10_000`` caps nothing.
    """
    live = {bytes(k): int(s) for k, s in stakes.items() if s > 0}
    if cap_bps >= BPS or not live:
        return live
    order = sorted(live.items(), key=lambda kv: (-kv[1], kv[0]))
    rest = sum(s for _, s in order)  # the stakes left uncapped: order[m:]
    for m in range(len(order)):
        if m == 0:
            if order[0][1] * BPS <= cap_bps * rest:
                return live  # the largest already holds at most the cap
        else:
            if cap_bps * m >= BPS:
                break
            t = cap_bps * rest // (BPS - cap_bps * m)
            if order[m][1] <= t:
                return {k: min(s, t) for k, s in live.items()}
        rest -= order[m][1]
    return dict.fromkeys(live, 1)
