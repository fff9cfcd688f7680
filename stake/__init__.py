"""aipg.stake: the ledger and the BFT chain.

Pure state machines plus the SQLite store; no networking (the node wires consensus and
sync to gossip). Entry points:

- genesis and tokenomics: :class:`Genesis`, :class:`ChainParams`, :data:`MAINNET_PARAMS`,
  :func:`load_genesis`, :func:`make_genesis`, :class:`Emission`, :func:`block_reward`,
  :func:`split_reward`;
- transactions and state: :class:`Transaction`, :class:`TxKind`, :func:`make_tx`,
  :class:`State`, :func:`state_hash`, :func:`apply_block`, :func:`check_transaction`
  (the mempool's check), :class:`LedgerError`;
- blocks and consensus: :class:`Block`, :class:`Vote`, :class:`Commit`,
  :class:`ProposalMessage`, :class:`DoubleSignEvidence`, :class:`FinalizedBlock`,
  :class:`ValidatorSet` (CometBFT proposer selection), :class:`Consensus` (Tendermint,
  Algorithm 1), :class:`ConsensusDriver` (its trio shell), :class:`SqliteSignRecord`;
- storage and sync: :class:`Chain` (``finalize``, ``validator_set_at``,
  ``block_hash_at``), :class:`ChainStore`, :class:`SyncServer`, :func:`sync_from`,
  :data:`SYNC_PROTOCOL`;
- accountable validators: :mod:`.reveal` (verdict commitments on chain, the commit
  phase), :mod:`.verdict_rewards` (the verdict pool), :mod:`.challenge`
  (:class:`~.challenge.WithholdingChallenge`, :class:`~.challenge.ChallengeAnswer`).
"""

from .block import (
    Block,
    BlockBody,
    BlockHeader,
    Commit,
    DoubleSignEvidence,
    FinalizedBlock,
    Proposal,
    ProposalMessage,
    Vote,
    VoteStep,
)
from .builder import make_block, make_commit, make_vote
from .chain import Chain
from .consensus import Consensus, HeightMachine, Timeouts
from .driver import BlockContents, ConsensusDriver
from .genesis import (
    MAINNET_PARAMS,
    ChainParams,
    Genesis,
    GenesisError,
    load_genesis,
    make_genesis,
    save_genesis,
)
from .ledger import apply_block, check_transaction, verify_commit
from .signrecord import DoubleSignRefused, MemorySignRecord, SqliteSignRecord
from .state import State, state_hash
from .store import ChainStore, StoreError
from .sync import SYNC_PROTOCOL, SyncError, SyncServer, sync_from
from .tokenomics import Emission, block_reward, split_reward
from .tx import Transaction, TxKind, make_tx
from .types import Height, LedgerError
from .validators import ValidatorSet

__all__ = [
    "MAINNET_PARAMS",
    "SYNC_PROTOCOL",
    "Block",
    "BlockBody",
    "BlockContents",
    "BlockHeader",
    "Chain",
    "ChainParams",
    "ChainStore",
    "Commit",
    "Consensus",
    "ConsensusDriver",
    "DoubleSignEvidence",
    "DoubleSignRefused",
    "Emission",
    "FinalizedBlock",
    "Genesis",
    "GenesisError",
    "Height",
    "HeightMachine",
    "LedgerError",
    "MemorySignRecord",
    "Proposal",
    "ProposalMessage",
    "SqliteSignRecord",
    "State",
    "StoreError",
    "SyncError",
    "SyncServer",
    "Timeouts",
    "Transaction",
    "TxKind",
    "ValidatorSet",
    "Vote",
    "VoteStep",
    "apply_block",
    "block_reward",
    "check_transaction",
    "load_genesis",
    "make_block",
    "make_commit",
    "make_genesis",
    "make_tx",
    "make_vote",
    "save_genesis",
    "split_reward",
    "state_hash",
    "sync_from",
    "verify_commit",
]
