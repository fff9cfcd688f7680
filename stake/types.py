"""Domain names for the ledger and consensus: heights, rounds, basis points, hashes."""

from __future__ import annotations

from typing import NewType

from aipg.pouw import Height  # declared once, in pouw; re-exported for stake's modules

__all__ = [
    "BPS",
    "NIL_HASH",
    "BlockHash",
    "Bps",
    "Height",
    "LedgerError",
    "Round",
    "ValidatorKey",
    "bps_of",
]

Round = NewType("Round", int)
BlockHash = NewType("BlockHash", bytes)
ValidatorKey = NewType("ValidatorKey", bytes)  # a 32-byte Ed25519 public key
Bps = NewType("Bps", int)  # basis points: 10_000 = 100 %

BPS = 10_000
NIL_HASH = bytes(32)  # a vote for nil, or "no parent" for the first block


def bps_of(amount: int, bps: int) -> int:
    """``amount * bps / 10_000`` rounded down: shares of integer amounts never overpay."""
    return amount * bps // BPS


class LedgerError(Exception):
    """A transaction, block or piece of evidence is invalid; the message says what and why."""
