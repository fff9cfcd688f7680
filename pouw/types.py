"""Typed domain names of the pouw layer (consensus-specs style: say what an int is).

Each name is declared once, in the lowest layer that needs it: ``ModelId`` belongs to
:mod:`aipg.models` and is re-exported here; ``Height`` is declared here, where pouw and
stake can both import it.
"""

from typing import NewType

from aipg.models import ModelId

__all__ = [
    "Height",
    "JobId",
    "Millis",
    "ModelId",
    "NodeKey",
    "ReceiptId",
    "Stake",
    "WorkUnits",
]

# sha256 of a Job's signing bytes: the same job content always has the same id.
JobId = NewType("JobId", bytes)
# sha256 of a Receipt's canonical encoding.
ReceiptId = NewType("ReceiptId", bytes)
# A validator's or worker's raw 32-byte Ed25519 public key.
NodeKey = NewType("NodeKey", bytes)
# A block height of the chain (stake re-exports it as aipg.stake.types.Height).
Height = NewType("Height", int)
# Useful work, the unit that block rewards pay for.
WorkUnits = NewType("WorkUnits", int)
# Bonded stake in base units (1 AIPG = 10**8).
Stake = NewType("Stake", int)
# Wall-clock milliseconds since the Unix epoch (always passed in, never read inside pouw).
Millis = NewType("Millis", int)
