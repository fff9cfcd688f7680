"""Circuit relays (libp2p circuit relay v2 as model) on the gossip connections.

A node that is not publicly dialable reserves a slot on a few public relays
(``relay`` request: :class:`RelayReserve` → :class:`RelayReservation`) and advertises
``<relay addr>/p2p/<relay>/p2p-circuit`` in its peer record. A dialer connected to the
relay sends ``CircuitOpen(hop=True, peer=target)``; the relay, if the target holds a
live reservation and every limit allows, sends ``CircuitOpen(hop=False, peer=dialer)``
to the target and from then on forwards ``CircuitData`` both ways. Each end sees a
:class:`RelayedConnection` (a frame pipe like any transport's) and runs the ordinary
Noise XX handshake over it, authenticated by peer ID: the relay moves ciphertext it
cannot read, and any byte it alters fails the AEAD tag at the other end.

Limits (:class:`RelayLimits`): reservations (count, TTL), circuits (total, per peer),
bytes and duration per circuit; past a limit the relay closes the circuit and says so
(``CircuitClose`` with the reason). A relay that drops or corrupts traffic shows as a
handshake that never completes, a decrypt failure, or a connection that never
identifies: the dialer then avoids that relay (:meth:`AddressBook.relay_misbehaved`).

The NATed node checks its own relays too (:meth:`CircuitHub.probe`, D89): it opens a
circuit to itself through the relay and has its other end echo ``PROBE_FRAMES`` random
frames. A relay that alters one is given up at once (reservation dropped, banned as a
relay) and another reserved; one that loses frames on two probes in a row likewise
(once may be load: the slot is kept until the next probe, 30 s later); a relay that
closes the circuit with a reason only loses the slot. A relay that
recognises these self-circuits could pass them and still cheat dialers, who then avoid
it as above.

``fault`` (tests only) makes this node a byzantine relay: ``"drop"`` or ``"corrupt"``
every relayed frame after the three handshake messages.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import os
from collections.abc import Callable
from typing import Annotated

import trio

from aipg.wire import U32, U64, MaxLen, Multiaddr, PeerId, Record, decode, encode, record

from .config import RelayLimits
from .connection import Connection, enqueue
from .errors import ConnectionClosed
from .messages import CircuitClose, CircuitData, CircuitOpen

log = logging.getLogger("aipg.gossip")

RELAY_PROTOCOL = "relay"
CIRCUIT_INBOX = 64
PROBE_FRAMES = 4  # past a faulty relay's three handshake frames (round trips count two)
PROBE_TIMEOUT = 10.0  # seconds for each echoed probe frame


@record(tag=140)
class RelayReserve(Record):
    ttl: U32  # seconds asked for; the relay may grant less


@record(tag=141)
class RelayReservation(Record):
    ok: bool
    reason: Annotated[str, MaxLen(128)]
    expires_in: U32
    max_bytes: U64
    max_duration: U32


class RelayedConnection:
    """One end of a circuit: the FrameConnection the relayed Noise channel runs on."""

    def __init__(self, hub: CircuitHub, conn: Connection, circuit: int, remote: Multiaddr | None):
        self._hub = hub
        self.conn = conn
        self.circuit = circuit
        self.remote_addr = remote
        self.relay = conn.peer
        self._send, self._recv = trio.open_memory_channel[bytes](CIRCUIT_INBOX)
        self.close_reason: str | None = None  # set when the relay (or far end) closed it
        self.closed = False
        self.echo = False  # the far end of our own probe: sends back what arrives

    async def send_frame(self, frame: bytes) -> None:
        if self.closed:
            raise ConnectionClosed(f"circuit closed: {self.close_reason or 'locally'}")
        try:
            await self.conn.send_q.send(CircuitData(circuit=self.circuit, data=bytes(frame)))
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise ConnectionClosed("the connection to the relay closed") from None

    async def receive_frame(self) -> bytes:
        try:
            return await self._recv.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise ConnectionClosed(f"circuit closed: {self.close_reason or 'locally'}") from None

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()
        if not self.closed:
            self._hub.close_end(self, "closed")

    def _shut(self, reason: str | None) -> None:
        if not self.closed:
            self.closed = True
            self.close_reason = reason
            self._send.close()


@dataclasses.dataclass
class Hop:
    """One direction of a circuit through us: frames arriving as (conn, id) go to ``to``."""

    to: Connection
    to_circuit: int
    circuit: list  # shared [bytes, started, frames] of both directions


class CircuitHub:
    """Both roles on one host: the relay forwarding others' circuits, and our own ends.

    ``conn_of(peer)`` is our live connection to ``peer``; ``accept(rc)`` takes a circuit
    someone opened to us (the host runs the inbound handshake on it).
    """

    def __init__(
        self,
        local: PeerId,
        conn_of: Callable[[PeerId], Connection | None],
        accept: Callable[[RelayedConnection], None],
        *,
        serve: bool = True,
        limits: RelayLimits | None = None,
        fault: str | None = None,
    ):
        self.local = local
        self._conn_of = conn_of
        self._accept = accept
        self.serve = serve
        self.limits = limits or RelayLimits()
        self.fault = fault
        self.reservations: dict[PeerId, float] = {}  # clients reserved on us -> expiry
        self.reserved_on: dict[PeerId, float] = {}  # relays we hold a slot on -> expiry
        self._hops: dict[tuple[Connection, int], Hop] = {}
        self._ends: dict[tuple[Connection, int], RelayedConnection] = {}
        self._ids = itertools.count(1)
        self.relayed_bytes = 0

    def _alloc(self, conn: Connection) -> int:
        while True:
            cid = (2 * next(self._ids) + (1 if conn.outbound else 0)) & 0xFFFFFFFF
            if (conn, cid) not in self._hops and (conn, cid) not in self._ends:
                return cid

    def circuits(self) -> int:
        return len(self._hops) // 2

    # --- reservations (the relay's side) ---------------------------------------------

    async def handle_reserve(self, peer: PeerId, data: bytes) -> bytes:
        req = decode(data, RelayReserve)
        lim, now = self.limits, trio.current_time()
        for p, until in list(self.reservations.items()):
            if until <= now:
                del self.reservations[p]
        if not self.serve:
            return encode(_refusal("this node is not a relay"))
        if peer not in self.reservations and len(self.reservations) >= lim.max_reservations:
            return encode(_refusal("no reservation slots left"))
        ttl = max(1, min(req.ttl, lim.reservation_ttl))
        self.reservations[peer] = now + ttl
        return encode(
            RelayReservation(
                ok=True,
                reason="",
                expires_in=ttl,
                max_bytes=lim.max_bytes,
                max_duration=lim.max_duration,
            )
        )

    # --- our own circuits (an end's side) --------------------------------------------

    def open(self, relay_conn: Connection, target: PeerId, remote: Multiaddr) -> RelayedConnection:
        """Ask the relay on ``relay_conn`` for a circuit to ``target``."""
        cid = self._alloc(relay_conn)
        rc = RelayedConnection(self, relay_conn, cid, remote)
        self._ends[(relay_conn, cid)] = rc
        if not enqueue(relay_conn, CircuitOpen(circuit=cid, peer=target.raw, hop=True)):
            self.close_end(rc, "the relay connection is congested")
        return rc

    async def probe(self, relay_conn: Connection) -> tuple[str, str] | None:
        """Whether the relay on ``relay_conn`` forwards our frames intact: a circuit to
        ourselves through it, ``PROBE_FRAMES`` random frames echoed back. None when it
        does, else (verdict, what happened): ``"altered"`` (proof of a bad relay),
        ``"lost"`` (a frame did not come back in time: bad, or only slow),
        ``"refused"`` (the relay closed the circuit saying why) or ``"local"`` (our
        connection to it was congested or closed: no sign either way)."""
        rc = self.open(relay_conn, self.local, None)
        try:
            for _ in range(PROBE_FRAMES):
                nonce = os.urandom(32)
                with trio.move_on_after(PROBE_TIMEOUT) as scope:
                    await rc.send_frame(nonce)
                    echoed = await rc.receive_frame()
                if scope.cancelled_caught:
                    return "lost", "a probe frame never came back"
                if echoed != nonce:
                    return "altered", "a probe frame came back altered"
            return None
        except ConnectionClosed as e:
            return ("refused" if rc.close_reason else "local"), str(e)
        finally:
            self.close_end(rc, "probe done")

    def close_end(self, rc: RelayedConnection, reason: str) -> None:
        if self._ends.pop((rc.conn, rc.circuit), None) is not None:
            enqueue(rc.conn, CircuitClose(circuit=rc.circuit, reason=reason[:128]))
        rc._shut(None)

    # --- frames ----------------------------------------------------------------------

    async def on_frame(self, conn: Connection, frame) -> None:
        kind = type(frame)
        key = (conn, frame.circuit)
        if kind is CircuitData:
            await self._on_data(conn, key, frame.data)
        elif kind is CircuitOpen:
            self._on_open(conn, frame)
        elif kind is CircuitClose:
            rc = self._ends.pop(key, None)
            if rc is not None:
                rc._shut(frame.reason or "closed by the far end")
            hop = self._hops.pop(key, None)
            if hop is not None:
                self._hops.pop((hop.to, hop.to_circuit), None)
                enqueue(hop.to, CircuitClose(circuit=hop.to_circuit, reason=frame.reason))

    async def _on_data(self, conn: Connection, key, data: bytes) -> None:
        rc = self._ends.get(key)
        if rc is not None and rc.echo:
            enqueue(conn, CircuitData(circuit=key[1], data=data))
            return
        if rc is not None:
            with contextlib.suppress(trio.ClosedResourceError, trio.BrokenResourceError):
                await rc._send.send(data)
            return
        hop = self._hops.get(key)
        if hop is None:
            return  # a circuit that just closed: its last frames are dropped
        state = hop.circuit
        state[0] += len(data)
        state[2] += 1
        lim = self.limits
        if state[0] > lim.max_bytes or trio.current_time() - state[1] > lim.max_duration:
            self._close_hop(key, "relay limit reached (bytes or duration)")
            return
        if self.fault is not None and state[2] > 3:
            if self.fault == "drop":
                return
            if self.fault == "corrupt":
                data = data[:-1] + bytes([data[-1] ^ 0x01]) if data else data  # the AEAD tag
        self.relayed_bytes += len(data)
        try:
            await hop.to.send_q.send(CircuitData(circuit=hop.to_circuit, data=data))
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            self._close_hop(key, "the far end is gone")

    def _on_open(self, conn: Connection, frame: CircuitOpen) -> None:
        try:
            peer = PeerId(frame.peer)
        except Exception:  # a malformed peer id: refuse the circuit
            enqueue(conn, CircuitClose(circuit=frame.circuit, reason="bad peer id"))
            return
        if (conn, frame.circuit) in self._hops or (conn, frame.circuit) in self._ends:
            enqueue(conn, CircuitClose(circuit=frame.circuit, reason="circuit id in use"))
            return
        if frame.hop:
            self._open_hop(conn, frame.circuit, peer)
            return
        # A relay tells us someone wants a circuit: only from a relay we reserved on.
        until = self.reserved_on.get(conn.peer)
        if until is None or until <= trio.current_time():
            enqueue(conn, CircuitClose(circuit=frame.circuit, reason="no reservation here"))
            return
        remote = Multiaddr.parse(f"/p2p/{conn.peer}/p2p-circuit/p2p/{peer}")
        rc = RelayedConnection(self, conn, frame.circuit, remote)
        self._ends[(conn, frame.circuit)] = rc
        if peer == self.local:  # our own probe (see probe): echo it, no handshake
            rc.echo = True
            return
        self._accept(rc)

    def _open_hop(self, src: Connection, cid: int, target: PeerId) -> None:
        lim, now = self.limits, trio.current_time()
        reason = None
        dst = self._conn_of(target)
        if not self.serve:
            reason = "this node is not a relay"
        elif self.reservations.get(target, 0.0) <= now or dst is None:
            reason = "the target has no reservation here"
        elif self.circuits() >= lim.max_circuits:
            reason = "the relay is at its circuit limit"
        elif sum(1 for (c, _), h in self._hops.items() if c is src) >= lim.max_circuits_per_peer:
            reason = "too many circuits from you"
        if reason is not None:
            enqueue(src, CircuitClose(circuit=cid, reason=reason))
            return
        dcid = self._alloc(dst)
        state = [0, now, 0]
        self._hops[(src, cid)] = Hop(dst, dcid, state)
        self._hops[(dst, dcid)] = Hop(src, cid, state)
        enqueue(dst, CircuitOpen(circuit=dcid, peer=src.peer.raw, hop=False))

    def _close_hop(self, key, reason: str) -> None:
        hop = self._hops.pop(key, None)
        if hop is None:
            return
        self._hops.pop((hop.to, hop.to_circuit), None)
        enqueue(hop.to, CircuitClose(circuit=hop.to_circuit, reason=reason))
        enqueue(key[0], CircuitClose(circuit=key[1], reason=reason))

    def sweep(self) -> None:
        """Close circuits past their duration (called each heartbeat)."""
        now = trio.current_time()
        for key, hop in list(self._hops.items()):
            if now - hop.circuit[1] > self.limits.max_duration:
                self._close_hop(key, "relay limit reached (duration)")

    def on_connection_closed(self, conn: Connection) -> None:
        for key in [k for k in self._hops if k[0] is conn]:
            self._close_hop(key, "the relay lost the other side")
        for key in [k for k in self._ends if k[0] is conn]:
            self._ends.pop(key)._shut("the connection to the relay closed")


def _refusal(reason: str) -> RelayReservation:
    return RelayReservation(ok=False, reason=reason, expires_in=0, max_bytes=0, max_duration=0)
