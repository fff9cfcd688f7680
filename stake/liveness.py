"""Validator liveness, as CometBFT's x/slashing does it: missed heights in a sliding
window, jailing for downtime, and the way back (an UNJAIL transaction).

Each block's ``last_commit`` holds the precommits of the set that voted on the parent;
a validator of that set whose precommit is absent missed that height. The state keeps,
per validator, the last ``signed_blocks_window`` heights as a bitmap (bit
``height % window``) with a count of its set bits, in the ``liveness`` table. A row
exists only while the window holds a miss (a validator that always signs costs no
writes) or while the validator is jailed for downtime.

A validator that signed less than ``min_signed_per_window_bps`` of its window is jailed:
slashed ``downtime_slash_bps`` (burned), left out of the next height's validator set at
once (:func:`without_jailed`), and kept out of the epoch updates until an UNJAIL
transaction, valid ``downtime_jail_period`` blocks after the jailing, clears the row;
it then returns at the next epoch boundary, as a new bond does.

It is judged from its first height in the set, not after a full window: until the
window is full its misses can only grow, so waiting would only delay a certain verdict.
"""

from __future__ import annotations

from aipg.wire import format_amount

from .block import Block
from .money import slash
from .state import Liveness, State
from .tx import Transaction
from .types import BPS, Height, LedgerError
from .validators import ValidatorSet

# A validator that never misses has no row; a row without misses or jail is deleted.
NOT_TRACKED = Liveness(0, b"", 0)


def process_liveness(s: State, block: Block) -> None:
    """Count who of the parent's voting set signed its commit (block 1 has no parent
    commit) and jail those whose window passes the threshold."""
    commit = block.body.last_commit
    if commit is None:
        return
    signers = {vote.signer for vote in commit.precommits}
    for v in s.last_validators.validators:
        record_signature(s, v.key, Height(commit.height), signed=v.key in signers)
    forget_departed(s)


def record_signature(s: State, key: bytes, height: Height, *, signed: bool) -> None:
    """Put whether ``key`` signed ``height`` into its window, replacing the bit of
    ``height - window``; jail it if it now missed too many."""
    row = s.liveness.get(key, NOT_TRACKED)
    if row.jailed_until:
        return  # jailed by the block before: it still sat in the set that voted on this one
    window = s.params.signed_blocks_window
    slot = height % window
    missed_before = _bit(row.bitmap, slot)
    if missed_before == (not signed):
        return  # the slot keeps its value: nothing to write
    bitmap = _with_bit(row.bitmap or bytes(_bitmap_len(window)), slot, not signed)
    missed = row.missed + (-1 if signed else 1)
    if missed_too_many(s, missed):
        jail_for_downtime(s, key)
    else:
        s.put("liveness", key, Liveness(missed, bitmap, 0) if missed else None)


def missed_too_many(s: State, missed: int) -> bool:
    """More than ``1 - min_signed_per_window`` of the window missed (exact: no rounding)."""
    p = s.params
    return missed * BPS > (BPS - p.min_signed_per_window_bps) * p.signed_blocks_window


def jail_for_downtime(s: State, key: bytes) -> None:
    """Slash ``key`` (burned), forget its window and jail it until it unjails."""
    s.burned += slash(s, key, s.params.downtime_slash_bps)
    s.put("liveness", key, Liveness(0, b"", s.height + s.params.downtime_jail_period))


def forget_departed(s: State) -> None:
    """Drop windows of keys no longer in the set (a key that returns starts afresh), and
    jails of keys with nothing bonded whose period is over (nothing left to unjail; a
    key that unbonded all still waits out its period if it bonds again)."""
    for key, row in list(s.liveness.items()):
        if row.jailed_until:
            if not s.bond(key).stake and row.jailed_until <= s.height:
                s.put("liveness", key, None)
        elif key not in s.last_validators:
            s.put("liveness", key, None)


def without_jailed(s: State, vset: ValidatorSet) -> ValidatorSet:
    """``vset`` without the validators jailed for downtime (never an empty set). The
    others keep their proposer priorities, rescaled and centred as at an epoch update."""
    kept = {v.key: v.power for v in vset.validators if not s.downtime_jailed_until(v.key)}
    if len(kept) == len(vset):
        return vset
    return vset.updated(kept) or vset


# --- UNJAIL -----------------------------------------------------------------------------


def check_unjail(s: State, tx: Transaction) -> None:
    """Raise LedgerError saying why the signer of ``tx`` cannot unjail now."""
    key = tx.signer
    until = s.downtime_jailed_until(key)
    if not until:
        raise LedgerError("not jailed for downtime: there is nothing to unjail")
    if s.height < until:
        raise LedgerError(
            f"jailed for downtime until height {until} (the chain is at {s.height}); "
            f"send UNJAIL again in {until - s.height} block(s)"
        )
    bonded, minimum = s.bond(key).stake, s.params.min_validator_stake
    if bonded < minimum:
        raise LedgerError(
            f"a validator needs at least {format_amount(minimum)} AIPG bonded to return "
            f"(bonded: {format_amount(bonded)}); bond more, then unjail"
        )


def unjail(s: State, tx: Transaction) -> None:
    """Clear the signer's downtime jail: it returns at the next epoch boundary."""
    s.put("liveness", tx.signer, None)


def missed_at(s: State, row: Liveness, height: int) -> bool:
    """Whether ``row`` (a validator's window) records ``height`` as missed; only
    meaningful for the last ``signed_blocks_window`` heights (D95 asks it)."""
    return _bit(row.bitmap, height % s.params.signed_blocks_window)


# --- the bitmap -------------------------------------------------------------------------


def _bitmap_len(window: int) -> int:
    return (window + 7) // 8


def _bit(bitmap: bytes, slot: int) -> bool:
    return bool(bitmap) and bool(bitmap[slot >> 3] >> (slot & 7) & 1)


def _with_bit(bitmap: bytes, slot: int, value: bool) -> bytes:
    b = bytearray(bitmap)
    if value:
        b[slot >> 3] |= 1 << (slot & 7)
    else:
        b[slot >> 3] &= ~(1 << (slot & 7)) & 0xFF
    return bytes(b)
