"""Messages a node already decoded and checked, so it does neither twice (D90).

A consensus message from gossip is decoded and its signature verified by the topic's
validator before the router delivers it; the chain service and the consensus driver
used to decode the same bytes again and the consensus machine to verify the signature
again. :class:`CheckedMessages` keeps the last ``capacity`` checked messages by their
encoded bytes: :meth:`decode` hands back the checked object for bytes it holds (and
decodes anything else as usual), :meth:`verified` says whether a signed record is one
of the objects whose signature the validator checked (by identity: an object decoded
elsewhere, or altered, is verified as usual). Only the validator adds entries, and
only after its checks passed.
"""

from __future__ import annotations

from collections import OrderedDict

from aipg.wire import decode, is_signed_by_signer

CHECKED_CAPACITY = 1024  # a few heights of proposals and votes of a large validator set


class CheckedMessages:
    def __init__(self, capacity: int = CHECKED_CAPACITY):
        self.capacity = capacity
        self._by_data: OrderedDict[bytes, object] = OrderedDict()
        self._signed: dict[int, object] = {}  # id -> the signed record (held, so ids stay)
        self.hits = 0

    def add(self, data: bytes, msg: object, signed: object) -> None:
        """``msg`` (decoded from ``data``) passed every check; ``signed`` is the record
        whose signature was verified (``msg`` itself or the part of it that is signed)."""
        if data in self._by_data:
            return
        self._by_data[data] = (msg, signed)
        self._signed[id(signed)] = signed
        while len(self._by_data) > self.capacity:
            _, (_, old) = self._by_data.popitem(last=False)
            self._signed.pop(id(old), None)

    def decode(self, data: bytes, types):
        entry = self._by_data.get(data)
        if entry is not None and isinstance(entry[0], types):
            self.hits += 1
            return entry[0]
        return decode(data, types)

    def get(self, data: bytes, types):
        """The checked object for ``data`` if held (and of ``types``), else None."""
        entry = self._by_data.get(data)
        if entry is not None and isinstance(entry[0], types):
            self.hits += 1
            return entry[0]
        return None

    def verified(self, signed) -> bool:
        """Whether ``signed`` carries a valid signature: known checked, or verified now."""
        if self._signed.get(id(signed)) is signed:
            return True
        return is_signed_by_signer(signed)
