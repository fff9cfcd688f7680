"""Typed domain names of the pouw layer (consensus-specs style: say what an int is)."""

from typing import NewType

# sha256 of a Job's signing bytes: the same job content always has the same id.
JobId = NewType("JobId", bytes)
# sha256 of a model's canonical manifest (aipg.models).
ModelId = NewType("ModelId", bytes)
# sha256 of a Receipt's canonical encoding.
ReceiptId = NewType("ReceiptId", bytes)
# A validator's or worker's raw 32-byte Ed25519 public key.
NodeKey = NewType("NodeKey", bytes)
# A block height of the chain.
Height = NewType("Height", int)
# Useful work, the unit that block rewards pay for.
WorkUnits = NewType("WorkUnits", int)
# Bonded stake in base units (1 AIPG = 10**8).
Stake = NewType("Stake", int)
# Wall-clock milliseconds since the Unix epoch (always passed in, never read inside pouw).
Millis = NewType("Millis", int)
