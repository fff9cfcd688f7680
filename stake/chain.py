"""A node's view of the chain: the store, the current state, and the one way blocks are
finalized (from consensus or from sync).
"""

from __future__ import annotations

from pathlib import Path

from .block import Block, Commit
from .genesis import Genesis
from .ledger import apply_block, verify_commit
from .state import State
from .store import ChainStore
from .types import Height, LedgerError


class Chain:
    """The finalized chain and the state after its last block. Owns its store."""

    def __init__(self, store: ChainStore):
        self.store = store
        self.state: State = store.load_state()
        self._last_commit: Commit | None = None

    @classmethod
    def open(cls, path: str | Path, genesis: Genesis) -> Chain:
        return cls(ChainStore(path, genesis))

    @property
    def height(self) -> Height:
        return self.state.height

    def finalize(self, block: Block, commit: Commit) -> State:
        """Check ``commit`` finalizes ``block`` under the current validator set, apply the
        block and store both. Raises LedgerError (nothing is stored then)."""
        if block.height != self.state.height + 1:
            raise LedgerError(f"block {block.height} does not follow height {self.state.height}")
        verify_commit(commit, self.state.validators, self.state.chain_id, block.height, block.hash)
        new_state = apply_block(self.state, block, verified_parent_commit=self._last_commit)
        self.store.commit(block, commit, new_state)
        self.state = new_state
        self._last_commit = commit  # verified above: the next block usually carries it
        return new_state

    # What pouw's committee sampling needs (DESIGN.md: committees are drawn from the
    # validator set at the seed block, seeded by that block's hash).

    def validator_set_at(self, height: int) -> dict[bytes, int] | None:
        """{validator key: stake} of the set that voted on block ``height`` (recent heights)."""
        return self.state.validator_snapshot_at(height)

    def block_hash_at(self, height: int) -> bytes | None:
        """The hash of the finalized block at ``height`` (genesis hash at 0), or None."""
        return self.store.block_hash_at(height)

    def close(self) -> None:
        self.store.close()
