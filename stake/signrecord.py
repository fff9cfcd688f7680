"""The sign-record: a validator's durable memory of the last vote step it signed.

Before a validator signs a proposal or a vote it records (height, round, step) — and the
block hash it signs — durably (SQLite, ``synchronous=FULL``, one transaction), and only
then signs. It refuses anything at or below a recorded step unless it is the very same
message again (re-signing identical bytes after a crash is harmless; Ed25519 is
deterministic, so it yields the identical signature). A restart therefore can never
make it sign two different things for one step: that is the double sign slashing
punishes. It also keeps the validator's lock (its last non-nil precommit at the height),
so a restart cannot make it forget what it locked on (Tendermint's safety needs that).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

# Steps in signing order within a round.
STEP_PROPOSAL = 0
STEP_PREVOTE = 1
STEP_PRECOMMIT = 2


class DoubleSignRefused(Exception):
    """Signing this would conflict with something already signed; the message says what."""


NIL = bytes(32)


@dataclass(frozen=True)
class Signed:
    """What a validator signed last at one height, and the block it is locked on there
    (a non-nil precommit locks; ``locked_round`` -1 when none)."""

    height: int
    round: int
    step: int
    block_hash: bytes
    locked_round: int = -1
    locked_hash: bytes = NIL


class SignRecord(Protocol):
    def check_and_record(self, height: int, round_: int, step: int, block_hash: bytes) -> None:
        """Record that we are about to sign (height, round, step, block_hash), or raise
        DoubleSignRefused when that could conflict with what was signed before."""

    def last(self) -> Signed | None:
        """The last thing recorded (so a restarted validator resumes where it was)."""


def _next(last: Signed | None, h: int, r: int, s: int, b: bytes) -> Signed | None:
    """The record after signing (h, r, s, b); None when it is the same message again.
    Raises DoubleSignRefused when it must not be signed."""
    if last is None or (h, r, s) > (last.height, last.round, last.step):
        locked_round, locked_hash = -1, NIL
        if last is not None and last.height == h:
            locked_round, locked_hash = last.locked_round, last.locked_hash
        if s == STEP_PRECOMMIT and b != NIL:
            locked_round, locked_hash = r, b
        return Signed(h, r, s, b, locked_round, locked_hash)
    lh, lr, ls, lb = last.height, last.round, last.step, last.block_hash
    if (h, r, s) == (lh, lr, ls) and b == lb:
        return None  # the same message again
    raise DoubleSignRefused(
        f"refusing to sign height {h} round {r} step {s}: already signed "
        f"height {lh} round {lr} step {ls}"
    )


class MemorySignRecord:
    """A sign-record that forgets on restart (simulations and tests only)."""

    def __init__(self) -> None:
        self._last: Signed | None = None

    def check_and_record(self, height: int, round_: int, step: int, block_hash: bytes) -> None:
        new = _next(self._last, height, round_, step, block_hash)
        if new is not None:
            self._last = new

    def last(self) -> Signed | None:
        return self._last


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
            " block_hash BLOB NOT NULL, locked_round INTEGER NOT NULL, locked_hash BLOB NOT NULL)"
        )
        row = self._db.execute(
            "SELECT height, round, step, block_hash, locked_round, locked_hash"
            " FROM last_signed WHERE id = 1"
        ).fetchone()
        self._last = Signed(*row) if row else None

    def check_and_record(self, height: int, round_: int, step: int, block_hash: bytes) -> None:
        new = _next(self._last, height, round_, step, block_hash)
        if new is None:
            return
        self._db.execute(
            "INSERT OR REPLACE INTO last_signed VALUES (1, ?, ?, ?, ?, ?, ?)",
            (new.height, new.round, new.step, new.block_hash, new.locked_round, new.locked_hash),
        )
        self._last = new

    def last(self) -> Signed | None:
        return self._last

    def close(self) -> None:
        self._db.close()
