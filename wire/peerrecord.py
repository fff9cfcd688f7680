"""Signed peer records: where a node can be dialed, signed by the node itself.

libp2p's signed envelope + peer record is the model: a record names a peer, a sequence
number and its addresses, and is signed by the peer's own Ed25519 key (the key is read
back from the peer ID, so no one else can speak for a peer). A higher ``seq`` replaces
a lower one; a node bumps it each time its addresses change (it uses the wall clock in
milliseconds, so a restarted node with a lost counter still goes forward).

Addresses are canonical multiaddrs without the peer's own ``/p2p`` suffix; a relayed
address ends in ``/p2p/<relay>/p2p-circuit``.
"""

from __future__ import annotations

from collections import OrderedDict
from functools import lru_cache
from typing import Annotated

from .codec import U64, MaxLen, PublicKeyBytes, Record, SignatureBytes, record
from .errors import WireError
from .keys import Identity
from .multiaddr import Multiaddr
from .peerid import PeerId, PeerIdBytes
from .signing import NO_SIGNATURE, NO_SIGNER, require_signature, sign

MAX_RECORD_ADDRS = 8
MAX_RECORD_ADDR_LEN = 256


@record(tag=10, max_size=4096)
class PeerRecord(Record):
    peer_id: PeerIdBytes
    seq: U64
    addrs: Annotated[
        tuple[Annotated[str, MaxLen(MAX_RECORD_ADDR_LEN)], ...], MaxLen(MAX_RECORD_ADDRS)
    ]
    signer: PublicKeyBytes = NO_SIGNER
    signature: SignatureBytes = NO_SIGNATURE

    @property
    def peer(self) -> PeerId:
        return PeerId(self.peer_id)

    def multiaddrs(self) -> list[Multiaddr]:
        """The record's addresses, each ending in ``/p2p/<peer>`` (ready to dial)."""
        return list(_dial_addrs(self.peer_id, self.addrs))


@lru_cache(maxsize=8_192)
def _dial_addrs(peer_id: bytes, addrs: tuple[str, ...]) -> tuple[Multiaddr, ...]:
    # parsed once per record content: the DHT and the address book ask again and again
    peer = PeerId(peer_id)
    return tuple(Multiaddr.parse(a).with_peer_id(peer) for a in addrs)


def make_peer_record(identity: Identity, seq: int, addrs: list[Multiaddr]) -> PeerRecord:
    texts: list[str] = []
    for a in addrs:
        text = str(a.without_peer_id())
        if text not in texts and len(text) <= MAX_RECORD_ADDR_LEN:
            texts.append(text)
    rec = PeerRecord(peer_id=identity.peer_id.raw, seq=seq, addrs=tuple(texts[:MAX_RECORD_ADDRS]))
    return sign(rec, identity)


def verify_peer_record(rec: PeerRecord) -> PeerRecord:
    """``rec`` if it is signed by the peer it names and every address parses; else WireError.
    A record already verified (the same fields and signature) is not verified again."""
    key = (rec.peer_id, rec.seq, rec.addrs, rec.signer, rec.signature)
    if key in _VERIFIED:
        _VERIFIED.move_to_end(key)
        return rec
    _verify(rec)
    _VERIFIED[key] = None
    if len(_VERIFIED) > MAX_VERIFIED:
        _VERIFIED.popitem(last=False)
    return rec


# Records seen verified, oldest first: every DHT reply carries up to 21 records, most of
# them known already; a record is immutable, so its fields and signature identify it.
MAX_VERIFIED = 8_192
_VERIFIED: OrderedDict[tuple, None] = OrderedDict()


def _verify(rec: PeerRecord) -> None:
    peer = PeerId(rec.peer_id)  # validates the multihash
    require_signature(rec, peer.public_key)
    for a in rec.addrs:
        m = Multiaddr.parse(a)
        if str(m) != a or (m.peer_id is not None and not m.is_relayed):
            raise WireError(
                "address not canonical or carries a /p2p", record="PeerRecord", field="addrs"
            )
