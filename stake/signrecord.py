"""The sign-record: a validator's durable memory of the last vote step it signed.

Before a validator signs a proposal or a vote it records (height, round, step) — and the
block hash it signs — durably (SQLite, ``synchronous=FULL``, one transaction), and only
then signs. It refuses anything at or below a recorded step unless it is the very same
message again (re-signing identical bytes after a crash is harmless; Ed25519 is
deterministic, so it yields the identical signature). A restart therefore can never
make it sign two different things for one step: that is the double sign slashing
punishes.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Protocol

# Steps in signing order within a round.
STEP_PROPOSAL = 0
STEP_PREVOTE = 1
STEP_PRECOMMIT = 2


class DoubleSignRefused(Exception):
    """Signing this would conflict with something already signed; the message says what."""


class SignRecord(Protocol):
    def check_and_record(self, height: int, round_: int, step: int, block_hash: bytes) -> None:
        """Record that we are about to sign (height, round, step, block_hash), or raise
        DoubleSignRefused when that could conflict with what was signed before."""


def _check(last: tuple[int, int, int, bytes] | None, h: int, r: int, s: int, b: bytes) -> bool:
    """True when (h, r, s, b) needs recording; raise when it must not be signed."""
    if last is None:
        return True
    lh, lr, ls, lb = last
    if (h, r, s) > (lh, lr, ls):
        return True
    if (h, r, s) == (lh, lr, ls) and b == lb:
        return False  # the same message again
    raise DoubleSignRefused(
        f"refusing to sign height {h} round {r} step {s}: already signed "
        f"height {lh} round {lr} step {ls}"
    )


class MemorySignRecord:
    """A sign-record that forgets on restart (simulations and tests only)."""

    def __init__(self) -> None:
        self.last: tuple[int, int, int, bytes] | None = None

    def check_and_record(self, height: int, round_: int, step: int, block_hash: bytes) -> None:
        if _check(self.last, height, round_, step, block_hash):
            self.last = (height, round_, step, block_hash)


class SqliteSignRecord:
    """The durable sign-record, one row in its own SQLite file (``synchronous=FULL``:
    the commit is on disk before :meth:`check_and_record` returns). Owns its connection;
    call :meth:`close` when done."""

    def __init__(self, path: str | Path):
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS last_signed (id INTEGER PRIMARY KEY CHECK (id = 1),"
            " height INTEGER NOT NULL, round INTEGER NOT NULL, step INTEGER NOT NULL,"
            " block_hash BLOB NOT NULL)"
        )
        row = self._db.execute(
            "SELECT height, round, step, block_hash FROM last_signed WHERE id = 1"
        ).fetchone()
        self.last: tuple[int, int, int, bytes] | None = tuple(row) if row else None  # type: ignore[assignment]

    def check_and_record(self, height: int, round_: int, step: int, block_hash: bytes) -> None:
        if not _check(self.last, height, round_, step, block_hash):
            return
        self._db.execute(
            "INSERT OR REPLACE INTO last_signed (id, height, round, step, block_hash)"
            " VALUES (1, ?, ?, ?, ?)",
            (height, round_, step, block_hash),
        )
        self.last = (height, round_, step, block_hash)

    def close(self) -> None:
        self._db.close()
