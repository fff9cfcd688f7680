"""The per-block randomness beacon (D55): every block's proposer proves the VRF of the
previous beacon, and every node checks the proof.

    beacon_0 = H("beacon/genesis/1", genesis hash)
    beacon_h = H("beacon/1", beacon_{h-1}, VRF_output(proposer of h, beacon_{h-1}))

The VRF is ECVRF-EDWARDS25519-SHA512-TAI (:mod:`aipg.pouw.vrf`) under the proposer's
own Ed25519 key, proven over ``beacon_{h-1}`` alone: the output is unique for that key
and input, so nothing the proposer puts in its block (transactions, time, work) changes
the beacon. The one choice a proposer has is to withhold its block (then another round's
proposer, with another key, makes the beacon of that height); committees therefore draw
from the beacon ``COMMITTEE_DELAY`` blocks after the job was committed (D56), which an
adversary can predict only if it proposes every one of those blocks.
"""

from __future__ import annotations

from aipg.pouw.records import hash_tagged
from aipg.pouw.vrf import PROOF_LEN, VrfError, prove, verify
from aipg.wire import Identity

from .types import LedgerError

__all__ = ["NO_PROOF", "beacon_proof", "genesis_beacon", "next_beacon"]

NO_PROOF = bytes(PROOF_LEN)  # what a header carries when its builder had no key to prove


def genesis_beacon(genesis_hash: bytes) -> bytes:
    return hash_tagged(b"beacon/genesis/1", genesis_hash)


def beacon_proof(identity: Identity, previous: bytes) -> bytes:
    """The VRF proof the proposer ``identity`` puts in the header after ``previous``."""
    return prove(identity.seed, previous)


def next_beacon(previous: bytes, proposer: bytes, proof: bytes) -> bytes:
    """The beacon after ``previous`` in a block by ``proposer`` carrying ``proof``.
    Raises LedgerError for a proof that does not verify."""
    try:
        output = verify(proposer, proof, previous)
    except VrfError as e:
        raise LedgerError(f"the header's beacon proof is invalid: {e}") from None
    return hash_tagged(b"beacon/1", previous, output)
