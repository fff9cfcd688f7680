"""RPC batching: what a connection's writer sends when several frames are queued at once.

:func:`merge_rpcs` turns a batch taken from the writer queue into encoded frames: runs of
consecutive pubsub RPCs merge into as few ``Rpc`` frames as the limits allow
(:class:`RpcAccumulator`), encoded exactly as ``encode(Rpc(...))`` would encode them, and
messages the peer already sent us are left out. :data:`CLOSE` is the queue's sentinel
for "flush what is queued, then close".
"""

from __future__ import annotations

import msgpack

from aipg.wire import encode, sha256

# The writer encodes merged RPCs itself, without building and re-validating an Rpc
# record per frame; the codec's record-to-array step keeps its bytes exactly encode()'s.
from aipg.wire.codec import _to_wire

from .messages import MAX_RPC_MESSAGES, ControlMessage, Rpc

CLOSE = object()  # writer-queue sentinel: flush what is queued, then close
# Merged RPCs stay well under the frame limit.
MERGE_BYTES = 1 << 20


def merge_rpcs(batch: list[object], known=None) -> list[object]:
    """Encode ``batch``: consecutive pubsub RPCs become as few frames as the limits allow.

    Messages whose id is in ``known`` (the peer sent them to us meanwhile) are left out.
    Returns encoded frames, and the ``CLOSE`` sentinel where it was queued.
    """
    out: list[object] = []
    acc = RpcAccumulator(known)
    for item in batch:
        if type(item) is not Rpc:
            out += acc.flush()
            out.append(item if item is CLOSE or type(item) is bytes else encode(item))
            continue
        if not acc.fits(item):
            out += acc.flush()
        acc.add(item)
    out += acc.flush()
    return out


class RpcAccumulator:
    """Merges RPCs and encodes the result exactly as ``encode(Rpc(...))`` would."""

    __slots__ = ("graft", "ihave", "iwant", "known", "msgs", "prune", "size", "subs")

    def __init__(self, known=None) -> None:
        self.known = known
        self.subs: list = []
        self.msgs: list[bytes] = []
        self.ihave: list = []
        self.iwant: list = []
        self.graft: list = []
        self.prune: list = []
        self.size = 0

    @staticmethod
    def _weight(rpc: Rpc) -> int:
        size = sum(map(len, rpc.messages))
        ctl = rpc.control
        if ctl is not None and (ctl.ihave or ctl.iwant):
            ids = sum(len(c.message_ids) for c in ctl.ihave)
            ids += sum(len(c.message_ids) for c in ctl.iwant)
            size += ids * 34
        return size

    def fits(self, rpc: Rpc) -> bool:
        ctl = rpc.control
        if len(self.msgs) + len(rpc.messages) > MAX_RPC_MESSAGES:
            return False
        if (
            self.size + self._weight(rpc) > MERGE_BYTES
            or len(self.subs) + len(rpc.subscriptions) > 256
        ):
            return False
        return ctl is None or (
            len(self.ihave) + len(ctl.ihave) <= 64
            and len(self.iwant) + len(ctl.iwant) <= 64
            and len(self.graft) + len(ctl.graft) <= 256
            and len(self.prune) + len(ctl.prune) <= 256
        )

    def add(self, rpc: Rpc) -> None:
        self.subs += rpc.subscriptions
        known = self.known
        if known is None or not rpc.messages:
            self.msgs += rpc.messages
        else:
            self.msgs += [m for m in rpc.messages if sha256(m) not in known]
        self.size += self._weight(rpc)
        ctl = rpc.control
        if ctl is not None:
            self.ihave += ctl.ihave
            self.iwant += ctl.iwant
            self.graft += ctl.graft
            self.prune += ctl.prune

    def flush(self) -> list[bytes]:
        if not (self.subs or self.msgs or self.ihave or self.iwant or self.graft or self.prune):
            return []
        control = None
        if self.ihave or self.iwant or self.graft or self.prune:
            control = [
                ControlMessage.__wire_tag__,
                ControlMessage.__wire_version__,
                [_to_wire(x) for x in self.ihave],
                [_to_wire(x) for x in self.iwant],
                [_to_wire(x) for x in self.graft],
                [_to_wire(x) for x in self.prune],
            ]
        wire = [
            Rpc.__wire_tag__,
            Rpc.__wire_version__,
            [_to_wire(x) for x in self.subs],
            self.msgs,
            control,
        ]
        frame = msgpack.packb(wire, use_bin_type=True)
        self.__init__(self.known)
        return [frame]
