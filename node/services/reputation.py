"""The gateway's worker reputation on disk: scores and bans survive restarts.

:class:`aipg.pouw.Reputation` is the pure table; :class:`ReputationStore` is its SQLite
file in the data dir (``reputation.sqlite``), loaded when the node starts and written
through on every change, one statement in one transaction (changes come with
certificates, timeouts and convictions: a few a block). Rows keep the order in which
the workers were last seen, so the table's least-recently-seen eviction resumes where it
stopped.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from aipg.pouw import Reputation, ReputationConfig

SCHEMA = """
CREATE TABLE IF NOT EXISTS reputation (
    worker BLOB PRIMARY KEY,
    score INTEGER NOT NULL,  -- 0: banned for proven fraud
    seen INTEGER NOT NULL    -- order of the last change, oldest first
);
"""


class ReputationStore:
    """One SQLite file of worker scores. Owns its connection; call :meth:`close` when
    done. ``synchronous=NORMAL`` (as the chain store): a crash may lose the last changes,
    never corrupt the file."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)
        (last,) = self._db.execute("SELECT COALESCE(MAX(seen), 0) FROM reputation").fetchone()
        self._seen = last
        self._closed = False

    def load(self) -> list[tuple[bytes, int]]:
        """Every (worker, score), least recently seen first."""
        rows = self._db.execute("SELECT worker, score FROM reputation ORDER BY seen")
        return [(bytes(worker), score) for worker, score in rows]

    def record(self, worker: bytes, score: int | None) -> None:
        """Write one change: the worker's new score, or None to forget it. After
        :meth:`close` (the node is stopping, and a block may still finalize while its
        services wind down) the change is dropped."""
        if self._closed:
            return
        if score is None:
            self._db.execute("DELETE FROM reputation WHERE worker = ?", (worker,))
            return
        self._seen += 1
        self._db.execute(
            "INSERT INTO reputation (worker, score, seen) VALUES (?, ?, ?)"
            " ON CONFLICT (worker) DO UPDATE SET score = excluded.score, seen = excluded.seen",
            (worker, score, self._seen),
        )

    def reputation(self, config: ReputationConfig | None = None) -> Reputation:
        """The table as stored, writing every later change back here."""
        return Reputation(config, known=self.load(), on_change=self.record)

    def close(self) -> None:
        self._closed = True
        self._db.close()
