"""Money moves: :func:`credit` and :func:`debit` of accounts, :func:`slash` of bonds.

Every transfer of value in the ledger goes through these, so that the supply identity
checked after each block holds by construction.
"""

from __future__ import annotations

from .state import Account, Bond, State
from .types import LedgerError, bps_of


def credit(s: State, address: bytes, amount: int) -> None:
    if amount:
        a = s.account(address)
        s.put("accounts", address, Account(a.balance + amount, a.nonce))


def debit(s: State, address: bytes, amount: int) -> None:
    a = s.account(address)
    if amount > a.balance:
        raise LedgerError(f"balance {a.balance} is less than {amount}")
    if amount:
        s.put("accounts", address, Account(a.balance - amount, a.nonce))


def slash(s: State, key: bytes, bps: int) -> int:
    """Take ``bps`` of ``key``'s bond and of its unbonding entries (unbonding is no escape).
    Returns the amount taken; the caller decides where it goes."""
    taken = 0
    b = s.bond(key)
    if b.stake:
        cut = bps_of(b.stake, bps)
        s.put("bonds", key, Bond(b.stake - cut, b.jailed_until))
        taken += cut
    queue = s.unbonding.get(key)
    if queue:
        cuts = [bps_of(amount, bps) for _, amount in queue]
        s.put("unbonding", key, tuple((r, a - c) for (r, a), c in zip(queue, cuts, strict=True)))
        taken += sum(cuts)
    return taken
