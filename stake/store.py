"""The chain store: finalized blocks, their commit certificates and the ledger state in
one SQLite file (WAL mode).

Each finalized block is written in one transaction together with its commit certificate,
every state row it changed and the new scalars, so after a crash at any point the store
holds exactly the blocks that were committed and the state after the last of them.
``synchronous=NORMAL`` in WAL mode keeps every committed transaction across a process
crash (what a node must survive) and syncs at checkpoints; a power cut may lose the last
few blocks, which sync fetches back from peers. The validator's sign-record, whose loss
could make it double-sign, lives elsewhere with ``synchronous=FULL``
(:mod:`aipg.stake.signrecord`).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

from aipg.wire import WireError, decode, encode

from .block import Block, Commit, FinalizedBlock
from .genesis import Genesis
from .state import TABLES, State, decode_row, encode_row, state_hash
from .types import Height

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS blocks (
    height INTEGER PRIMARY KEY,
    hash BLOB NOT NULL UNIQUE,
    block BLOB NOT NULL,
    commit_cert BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS state (
    tbl TEXT NOT NULL,
    key BLOB NOT NULL,
    value BLOB NOT NULL,
    PRIMARY KEY (tbl, key)
) WITHOUT ROWID;
"""


class StoreError(Exception):
    """The store cannot be opened or does not belong to this chain; the message says why."""


class ChainStore:
    """One node's chain on disk. Owns its SQLite connection: call :meth:`close`.

    The store is written only through :meth:`commit`, which takes the block, its commit
    certificate and the state after it (as returned by ``apply_block``)."""

    def __init__(self, path: str | Path, genesis: Genesis):
        self.path = Path(path)
        self.genesis = genesis
        self._db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)
        row = self._db.execute("SELECT value FROM meta WHERE key = 'genesis'").fetchone()
        if row is None:
            self._initialize()
        elif bytes(row[0]) != genesis.hash:
            self.close()
            raise StoreError(
                f"{self.path} holds another chain (genesis sha256:{bytes(row[0]).hex()}); "
                "use another data directory or the matching genesis"
            )

    def _initialize(self) -> None:
        state = State.from_genesis(self.genesis)
        with self._transaction():
            self._db.execute("INSERT INTO meta VALUES ('genesis', ?)", (self.genesis.hash,))
            self._write_state(state)

    # --- writes -------------------------------------------------------------------------

    def commit(self, block: Block, commit: Commit, state: State) -> None:
        """Store ``block``, its commit certificate and ``state`` (the state after it) in
        one transaction."""
        if state.height != block.height:
            raise ValueError(f"state is at height {state.height}, block is {block.height}")
        with self._transaction():
            self._db.execute(
                "INSERT INTO blocks (height, hash, block, commit_cert) VALUES (?, ?, ?, ?)",
                (block.height, block.hash, encode(block), encode(commit)),
            )
            self._write_state(state)

    def _write_state(self, state: State) -> None:
        for table in TABLES:
            keys = state.dirty[table]
            if not keys:
                continue
            rows = getattr(state, table)
            upserts = [(table, k, encode_row(rows[k])) for k in keys if k in rows]
            deletes = [(table, k) for k in keys if k not in rows]
            if upserts:
                self._db.executemany("INSERT OR REPLACE INTO state VALUES (?, ?, ?)", upserts)
            if deletes:
                self._db.executemany("DELETE FROM state WHERE tbl = ? AND key = ?", deletes)
        self._db.execute("INSERT OR REPLACE INTO meta VALUES ('scalars', ?)", (state.scalars(),))

    class _Tx:
        def __init__(self, db: sqlite3.Connection):
            self.db = db

        def __enter__(self) -> None:
            self.db.execute("BEGIN IMMEDIATE")

        def __exit__(self, exc_type, exc, tb) -> None:
            self.db.execute("COMMIT" if exc_type is None else "ROLLBACK")

    def _transaction(self) -> ChainStore._Tx:
        return ChainStore._Tx(self._db)

    # --- reads --------------------------------------------------------------------------

    def load_state(self) -> State:
        """The state after the last committed block (genesis state for a new store)."""
        (scalars,) = self._db.execute("SELECT value FROM meta WHERE key = 'scalars'").fetchone()
        rows: dict[str, dict[bytes, object]] = {t: {} for t in TABLES}
        for tbl, key, value in self._db.execute("SELECT tbl, key, value FROM state"):
            if tbl in rows:
                rows[tbl][bytes(key)] = decode_row(bytes(value))
        return State.from_rows(self.genesis, bytes(scalars), rows)

    @property
    def height(self) -> Height:
        (h,) = self._db.execute("SELECT COALESCE(MAX(height), 0) FROM blocks").fetchone()
        return Height(h)

    def finalized(self, height: int) -> FinalizedBlock | None:
        """Block ``height`` with its commit certificate, or None."""
        row = self._db.execute(
            "SELECT block, commit_cert FROM blocks WHERE height = ?", (height,)
        ).fetchone()
        return None if row is None else self._decode(row)

    def finalized_range(self, start: int, limit: int) -> Iterator[FinalizedBlock]:
        """Up to ``limit`` consecutive finalized blocks from ``start``."""
        for row in self._db.execute(
            "SELECT block, commit_cert FROM blocks WHERE height >= ? ORDER BY height LIMIT ?",
            (start, limit),
        ):
            yield self._decode(row)

    def encoded_range(self, start: int, limit: int) -> list[tuple[bytes, bytes]]:
        """(block, commit) encodings as stored: sync serves them without re-encoding."""
        return [
            (bytes(b), bytes(c))
            for b, c in self._db.execute(
                "SELECT block, commit_cert FROM blocks WHERE height >= ? ORDER BY height LIMIT ?",
                (start, limit),
            )
        ]

    def block_hash_at(self, height: int) -> bytes | None:
        """The hash of finalized block ``height`` (the genesis hash at 0), or None."""
        if height == 0:
            return self.genesis.hash
        row = self._db.execute("SELECT hash FROM blocks WHERE height = ?", (height,)).fetchone()
        return None if row is None else bytes(row[0])

    @staticmethod
    def _decode(row) -> FinalizedBlock:
        try:
            return FinalizedBlock(decode(bytes(row[0]), Block), decode(bytes(row[1]), Commit))
        except WireError as e:  # only a corrupted file gets here
            raise StoreError(f"corrupted block in the store: {e}") from None

    def close(self) -> None:
        self._db.close()


def stored_state_hash(store: ChainStore) -> bytes:
    return state_hash(store.load_state())
