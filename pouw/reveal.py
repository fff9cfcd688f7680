"""Commit, then reveal: verdicts nobody can copy.

A committee member that has checked a receipt does not publish its verdict at once. It
first publishes a :class:`VerdictCommit`, signed: the hash of its vote, its check hash
and a salt only it can compute (:func:`verdict_commitment`). Blocks carry commitments.
The receipt's **commit phase** opens with the block that carries its first commitment
and closes ``commit_blocks`` blocks later (a chain parameter); only commitments carried
by then count. Members reveal (publish the :class:`Verdict` itself, salt inside) once
the phase has closed, or earlier once every member seated has a commitment on chain
(D108: no commitment can be added that counts, since a seat moves only by an
abstention, and an abstention of a member with a commitment does not step aside:
:func:`steps_aside`; a member that abstained and then reveals a vote has voted both
ways).

A revealed vote counts only when its commitment was carried in time and matches it
(:func:`check_reveal`): copying another member's reveal needs a commitment made before
anyone revealed, that is, before there was anything to copy. A reveal without one
counts for nothing and earns nothing; a commitment never revealed is no vote (its seat
is empty until revealed, like a member that has not voted yet) and earns nothing.

Abstentions (UNAVAILABLE) need no commitment: they are no vote, earn nothing, and must
be public at once so that the next reserve is seated and starts checking.

The salt is derived from the member's key (a signature over the receipt id under its
own domain): unpredictable to others, and recomputed after a restart, so a member never
loses the ability to reveal what it committed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from aipg.wire import Identity, WireError, require_signature, sign

from .errors import PouwError
from .records import Verdict, VerdictCommit, VerdictReason, hash_tagged

__all__ = [
    "CommitLookup",
    "check_reveal",
    "make_commit",
    "needs_commitment",
    "salt_message",
    "steps_aside",
    "validate_commit",
    "verdict_commitment",
    "verdict_salt",
]

# (receipt id, member key) -> the commitment a block carried for it in time, or None.
CommitLookup = Callable[[bytes, bytes], bytes | None]


def salt_message(receipt_id_: bytes) -> bytes:
    """What a member signs to derive its salt for one receipt."""
    return b"aipg/verdict-salt/1\0" + receipt_id_


def verdict_salt(identity: Identity, receipt_id_: bytes) -> bytes:
    """The member's salt for ``receipt_id_``: the hash of its signature over it (Ed25519
    is deterministic, so the same key always derives the same salt)."""
    return hashlib.sha256(identity.sign(salt_message(receipt_id_))).digest()


def verdict_commitment(verdict: Verdict) -> bytes:
    """The hash a member commits to: receipt, member, vote, reason, check hash, salt.
    (``detail`` and ``max_error_micro`` are informational and not committed.)"""
    return hash_tagged(
        b"verdict/commit/1",
        verdict.receipt_id,
        verdict.signer,
        bytes([int(verdict.valid), verdict.reason]),
        verdict.check_hash,
        verdict.salt,
    )


def make_commit(identity: Identity, verdict: Verdict, *, review: bool = False) -> VerdictCommit:
    """``identity``'s signed commitment to its own ``verdict`` (``review``: as a reviewer
    of the receipt's conviction, D76)."""
    if verdict.signer != identity.public_bytes:
        raise ValueError("a member commits to its own verdict")
    commit = VerdictCommit(verdict.receipt_id, verdict_commitment(verdict), verdict.job_id, review)
    return sign(commit, identity)


def validate_commit(commit: VerdictCommit) -> None:
    """The commitment is signed by its signer; raises PouwError."""
    try:
        require_signature(commit)
    except WireError as e:
        raise PouwError("commit.signature", e.reason) from None


def needs_commitment(verdict: Verdict) -> bool:
    """A vote must have been committed; an abstention is published in the clear."""
    return verdict.reason != VerdictReason.UNAVAILABLE


def steps_aside(receipt_id_: bytes, member: bytes, committed: CommitLookup | None) -> bool:
    """Whether an abstention of ``member`` on the receipt passes its seat to the next
    reserve (D108): only while no block carried a commitment of that member on it (or
    on a chain without commit-reveal, ``committed`` None). A member that committed
    keeps its seat, with no vote unless it reveals: otherwise it could commit, let the
    phase close early, abstain after the reveals and seat a reserve that commits a
    copied vote while the height window is still open."""
    return committed is None or committed(receipt_id_, member) is None


def check_reveal(verdict: Verdict, committed: CommitLookup) -> None:
    """A revealed vote counts only with a matching commitment carried in time; raises
    PouwError (``verdict.commitment``) otherwise. Abstentions pass."""
    if not needs_commitment(verdict):
        return
    commitment = committed(verdict.receipt_id, verdict.signer)
    if commitment is None:
        raise PouwError("verdict.commitment", "no commitment of this member was carried in time")
    if commitment != verdict_commitment(verdict):
        raise PouwError("verdict.commitment", "the verdict does not match its commitment")
