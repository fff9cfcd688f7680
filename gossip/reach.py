"""Reaching any peer: our signed record, the address book, the DHT, AutoNAT and relays.

:class:`Reach` is the part of a :class:`~.host.GossipHost` that turns "a peer ID" into "a
connection". ``await reach.connection_to(peer)`` (the host's dial on demand) tries the
peer's addresses from the address book, direct ones first, then relayed ones; if none
works (or we know none) it looks the peer up in the DHT and tries again. Failed dials
back off per peer (``dial_backoff_base`` doubling to ``dial_backoff_max``).

In the background (:meth:`run`) it learns our reachability (AutoNAT: up to three peers
are asked to dial our listen addresses back, at the transport level; the majority
decides), keeps ``relay_reservations`` reservations on public relays when we are not
dialable, and publishes our record by looking ourselves up (the k closest nodes keep it)
whenever it changes and every ``dht_refresh`` seconds.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import Annotated

import trio

from aipg.wire import (
    MaxLen,
    Multiaddr,
    PeerId,
    PeerRecord,
    Record,
    WireError,
    decode,
    encode,
    make_peer_record,
    record,
)

from .addrbook import AddressBook
from .dht import KAD_PROTOCOL, Dht, kad_key
from .errors import ConnectionRefused, GossipError, NotConnected, TransportError
from .relay import RELAY_PROTOCOL, CircuitHub, RelayReservation, RelayReserve

log = logging.getLogger("aipg.gossip")

AUTONAT_PROTOCOL = "autonat"
AUTONAT_PEERS = 3
DIAL_BACK_TIMEOUT = 5.0
MAX_AUTONAT_INFLIGHT = 8
SHORT_BACKOFF = 2.0


@record(tag=150)
class DialBack(Record):
    addrs: Annotated[tuple[Annotated[str, MaxLen(256)], ...], MaxLen(4)]


@record(tag=151)
class DialBackResult(Record):
    reachable: bool
    addr: Annotated[str, MaxLen(256)]


class Reach:
    def __init__(self, host):
        self.host = host
        cfg = host.config
        self.config = cfg
        self.addrbook = AddressBook(cfg.addrbook_capacity, cfg.peers_file)
        self.reachability = {"public": "public", "private": "private"}.get(
            cfg.reachability, "unknown"
        )
        self.dht = Dht(
            host.peer_id,
            self.addrbook,
            self._kad_request,
            self.self_record,
            lambda: self.reachability == "public",
            self._kad_seeds,
            alpha=cfg.dht_alpha,
        )
        self.hub = CircuitHub(
            host.peer_id,
            host._conns.get,
            host._accept_relayed,
            serve=cfg.relay_service,
            limits=cfg.relay_limits,
            fault=cfg.relay_fault,
        )
        self._record: PeerRecord | None = None
        self._record_addrs: tuple[str, ...] | None = None
        self._changed = trio.Event()
        self.published = trio.Event()  # set after our first record went out (tests)
        self._lookups: dict[PeerId, trio.Event] = {}
        self._autonat_inflight = 0
        self.lookup_hops: list[int] = []  # rounds of each on-demand lookup (bench)
        self.relay_addrs: dict[PeerId, Multiaddr] = {}  # relays we reserved on -> their addr
        self.relay_failures = 0  # relays of ours found bad by a probe (metrics, tests)
        self._relay_strikes: dict[PeerId, int] = {}  # relay -> failed probes in a row
        # The latest relay probes, oldest first: (number, relay, verdict or "ok", slot
        # kept); numbered from 0 so a reader can tell which came after a given moment.
        self.relay_probes: deque[tuple[int, PeerId, str, bool]] = deque(maxlen=64)
        self._probes_done = 0
        self._probing = trio.Lock()  # one probe at a time: two at once would be one strike

    def register(self) -> None:
        h = self.host
        h.set_request_handler(KAD_PROTOCOL, self.dht.handle, max_request_size=8192)
        h.set_request_handler(RELAY_PROTOCOL, self.hub.handle_reserve, max_request_size=64)
        h.set_request_handler(AUTONAT_PROTOCOL, self._serve_dial_back, max_request_size=2048)
        self.addrbook.load()

    # --- our record -----------------------------------------------------------------

    def advertised(self) -> list[Multiaddr]:
        direct = [] if self.reachability == "private" else list(self.host.listen_addrs)
        relayed = [
            Multiaddr.parse(f"{addr}/p2p-circuit")
            for relay, addr in sorted(self.relay_addrs.items(), key=lambda kv: kv[0].raw)
            if relay in self.hub.reserved_on
        ]
        return direct + relayed

    def self_record(self) -> PeerRecord | None:
        addrs = self.advertised()
        texts = tuple(str(a.without_peer_id()) for a in addrs)
        if self._record is None or texts != self._record_addrs:
            seq = max(time.time_ns() // 1_000_000, (self._record.seq + 1) if self._record else 0)
            self._record = make_peer_record(self.host.identity, seq, addrs)
            self._record_addrs = texts
        return self._record if self._record.addrs else None

    def changed(self) -> None:
        self._changed.set()

    # --- dial on demand ---------------------------------------------------------------

    async def connection_to(self, peer: PeerId, *, lookup: bool = True, backoff: bool = True):
        """A connection to ``peer``: existing, dialed from the book, or found by lookup.
        ``backoff=False``: a failure does not back the peer off (a background attempt
        must not make a request to it fail meanwhile)."""
        host = self.host
        conn = host._conns.get(peer)
        if conn is not None:
            return conn
        if peer == host.peer_id:
            raise NotConnected("a request to ourselves")
        wait = self.addrbook.backoff_left(peer)
        if wait > SHORT_BACKOFF:
            raise NotConnected(f"{peer} failed recent dials; retrying in {wait:.1f}s")
        if wait > 0:
            await trio.sleep(wait)  # a short backoff is waited out, not failed
            if peer in host._conns:
                return host._conns[peer]
        if await self._dial_known(peer):
            return host._conns[peer]
        if lookup:
            rec = await self._lookup(peer)
            if rec is not None and await self._dial_known(peer):
                return host._conns[peer]
        if backoff:
            self.addrbook.dial_failed(
                peer, self.config.dial_backoff_base, self.config.dial_backoff_max
            )
        raise NotConnected(f"{peer} is unreachable (no address worked)")

    async def _dial_known(self, peer: PeerId) -> bool:
        for addr in self.addrbook.dial_addrs(peer):
            try:
                await self.host._connect_transient(addr)
            except ConnectionRefused as e:
                if "max transient" in str(e):  # our own limit, not the peer's fault
                    raise NotConnected(f"cannot dial {peer} now: {e}") from None
                log.debug("on-demand dial %s refused: %s", addr, e)
                continue
            except (GossipError, WireError) as e:
                log.debug("on-demand dial %s failed: %s", addr, e)
                continue
            if peer in self.host._conns:
                self.addrbook.dial_ok(peer)
                return True
        return False

    async def _lookup(self, peer: PeerId) -> PeerRecord | None:
        if peer in self._lookups:  # one lookup per peer at a time; the others wait on it
            await self._lookups[peer].wait()
            return self.addrbook.get(peer)
        done = self._lookups[peer] = trio.Event()
        try:
            rec, hops = await self.dht.find_peer(peer)
            self.lookup_hops.append(hops)
            if rec is not None:
                self.addrbook.add(rec, verified=True)
            return self.addrbook.get(peer) if rec is not None else None
        finally:
            del self._lookups[peer]
            done.set()

    async def _kad_request(self, peer: PeerId, data: bytes, timeout: float) -> bytes:
        return await self.host._request(peer, KAD_PROTOCOL, data, timeout, lookup=False)

    def _kad_seeds(self) -> list[PeerId]:
        out = []
        for peer, conn in self.host._conns.items():
            if conn.identify and KAD_PROTOCOL in conn.identify.protocols:
                out.append(peer)
        return out

    # --- relayed dials -----------------------------------------------------------------

    async def dial_relayed(self, addr: Multiaddr):
        """Open a circuit to ``addr``'s peer through its relay (dialed directly if needed)."""
        relay_addr = addr.relay()
        relay = relay_addr.peer_id
        target = addr.peer_id
        if target is None:
            raise TransportError(f"{addr}: a relayed address must end in /p2p/<target>")
        if self.addrbook.relay_is_bad(relay):
            raise TransportError(f"{relay} is avoided as a relay")
        conn = self.host._conns.get(relay)
        if conn is None:
            await self.host._connect_transient(relay_addr)
            conn = self.host._conns.get(relay)
            if conn is None:
                raise TransportError(f"could not reach the relay {relay}")
        return self.hub.open(conn, target, addr.without_peer_id())

    # --- AutoNAT -------------------------------------------------------------------

    async def _serve_dial_back(self, peer: PeerId, data: bytes) -> bytes:
        req = decode(data, DialBack)
        if self._autonat_inflight >= MAX_AUTONAT_INFLIGHT:
            return encode(DialBackResult(reachable=False, addr="busy"))
        conn = self.host._conns.get(peer)
        observed = conn.ip if conn is not None and not conn.relayed else None
        self._autonat_inflight += 1
        try:
            for text in req.addrs:
                try:
                    addr = Multiaddr.parse(text).without_peer_id()
                    host, _, _ = addr.websocket_target()  # direct websocket addresses only
                except WireError:
                    continue
                if observed is not None and host != observed:
                    continue  # only the address it came from: we are nobody's port scanner
                if await self._probe(addr):
                    return encode(DialBackResult(reachable=True, addr=str(addr)))
            return encode(DialBackResult(reachable=False, addr=""))
        finally:
            self._autonat_inflight -= 1

    async def _probe(self, addr: Multiaddr) -> bool:
        """Whether ``addr`` accepts a transport connection (closed at once, no handshake)."""
        try:
            with trio.fail_after(DIAL_BACK_TIMEOUT):
                raw = await self.host.transport.dial(self.host._nursery, addr)
        except (TransportError, trio.TooSlowError, OSError):
            return False
        await raw.aclose()
        return True

    async def detect_reachability(self) -> str:
        """Ask up to three peers to dial us back; the majority of answers decides."""
        if self.config.reachability in ("public", "private"):
            return self.config.reachability
        ask = [
            p
            for p, c in self.host._conns.items()
            if c.identify and AUTONAT_PROTOCOL in c.identify.protocols and not c.relayed
        ][:AUTONAT_PEERS]
        addrs = tuple(str(a.without_peer_id()) for a in self.host.listen_addrs[:4])
        if not ask or not addrs:
            return self.reachability
        votes: list[bool] = []

        async def one(peer: PeerId) -> None:
            try:
                data = await self.host._request(
                    peer, AUTONAT_PROTOCOL, encode(DialBack(addrs=addrs)), 2 * DIAL_BACK_TIMEOUT
                )
                votes.append(decode(data, DialBackResult).reachable)
            except (GossipError, WireError) as e:
                log.debug("autonat via %s failed: %s", peer.short(), e)

        async with trio.open_nursery() as nursery:
            for p in ask:
                nursery.start_soon(one, p)
        if not votes:
            return self.reachability
        return "public" if sum(votes) * 2 > len(votes) else "private"

    # --- relay reservations -------------------------------------------------------------

    async def keep_reservations(self) -> None:
        now = trio.current_time()
        held = self.hub.reserved_on
        for relay, until in list(held.items()):
            if until <= now + 60 or relay not in self.host._conns:
                del held[relay]
                self.relay_addrs.pop(relay, None)
        want = self.config.relay_reservations - len(held)
        if want <= 0:
            return
        for peer, conn in list(self.host._conns.items()):
            if want <= 0:
                break
            if (
                peer in held
                or conn.relayed
                or conn.identify is None
                or RELAY_PROTOCOL not in conn.identify.protocols
                or self.addrbook.relay_is_bad(peer)
            ):
                continue
            addr = self._direct_addr(peer, conn)
            if addr is None:
                continue
            try:
                data = await self.host._request(
                    peer, RELAY_PROTOCOL, encode(RelayReserve(ttl=3600)), 10.0, lookup=False
                )
                resv = decode(data, RelayReservation)
            except (GossipError, WireError) as e:
                log.debug("reservation on %s failed: %s", peer.short(), e)
                continue
            if resv.ok:
                held[peer] = trio.current_time() + resv.expires_in
                if not await self._relay_works(peer, conn):
                    continue
                self.relay_addrs[peer] = addr
                # Our relay connection stays up: as a regular one while max_peers has
                # room, else it stays transient (counted against max_transient) and is
                # never closed as idle while it carries our reservation (host._carries).
                # Promoting it past max_peers let a host hold max_peers + 1 regular
                # connections beside a full transient table.
                if conn.transient and self.host._regular_count() < self.host.config.max_peers:
                    conn.transient = False
                want -= 1
                log.info("reserved a relay slot on %s", peer.short())

    async def check_relays(self) -> None:
        """Probe every relay we hold a slot on; give up the ones that fail (D89)."""
        for relay in list(self.hub.reserved_on):
            conn = self.host._conns.get(relay)
            if conn is not None and not await self._relay_works(relay, conn):
                self.changed()

    async def _relay_works(self, relay: PeerId, conn) -> bool:
        """Probe ``relay`` (we hold a slot there). An altered frame, or frames lost on
        two probes in a row, ban it as a relay for ban_duration; a refusal drops the
        slot. One lost probe (maybe load) and inconclusive ones (our own connection
        congested) keep it until the next."""
        async with self._probing:
            if relay not in self.hub.reserved_on:
                return False  # given up by the probe we waited for
            result = await self.hub.probe(conn)
            kept = self._judge_probe(relay, result)
        self.relay_probes.append((self._probes_done, relay, result[0] if result else "ok", kept))
        self._probes_done += 1
        return kept

    def _judge_probe(self, relay: PeerId, result: tuple[str, str] | None) -> bool:
        if result is None:
            self._relay_strikes.pop(relay, None)
            return True
        verdict, why = result
        if verdict == "local":
            return True
        if len(self._relay_strikes) >= 64:  # bounded: relays we probed lately
            self._relay_strikes.clear()
        strikes = self._relay_strikes[relay] = self._relay_strikes.get(relay, 0) + 1
        bad = verdict == "altered" or (verdict == "lost" and strikes >= 2)
        if not (bad or verdict == "refused"):
            return True  # one lost probe: maybe load; the next probe decides
        log.warning("relay %s fails its probe (%s): using another", relay.short(), why)
        self.hub.reserved_on.pop(relay, None)
        self.relay_addrs.pop(relay, None)
        if bad:
            self.addrbook.relay_misbehaved(relay, self.config.ban_duration)
            self._relay_strikes.pop(relay, None)
            self.relay_failures += 1
        return False

    def _direct_addr(self, peer: PeerId, conn) -> Multiaddr | None:
        rec = self.addrbook.get(peer)
        addrs = rec.multiaddrs() if rec else []
        if not addrs and conn.identify:
            try:
                addrs = [Multiaddr.parse(a).with_peer_id(peer) for a in conn.identify.listen_addrs]
            except WireError:
                addrs = []
        return next((a for a in addrs if not a.is_relayed), None)

    # --- background ------------------------------------------------------------------

    async def rejoin(self) -> None:
        """At start: dial the best peers of the saved address book (regular connections)."""
        want = self.config.low_water - len(self.host._conns)
        ranked = sorted(self.addrbook.peers(), key=lambda p: -self.addrbook.score(p))
        if want <= 0 or not ranked:
            return

        async def one(peer: PeerId) -> None:
            for addr in self.addrbook.dial_addrs(peer):
                if addr.is_relayed:
                    continue
                try:
                    await self.host.connect(addr)
                    self.addrbook.dial_ok(peer)
                    return
                except (GossipError, WireError) as e:
                    log.debug("rejoin dial %s failed: %s", addr, e)

        async with trio.open_nursery() as nursery:
            for peer in ranked[: min(want, 8)]:
                nursery.start_soon(one, peer)

    async def fresh_addrs(self, peer: PeerId, stale: Multiaddr) -> list[Multiaddr]:
        """Addresses of ``peer`` other than ``stale`` (its record, refreshed by a lookup):
        how a peer that came back elsewhere is found again by its ID."""
        rec, _ = await self.dht.find_peer(peer)
        if rec is not None:
            self.addrbook.add(rec, verified=True)
        return [a for a in self.addrbook.dial_addrs(peer) if a != stale]

    async def run(self) -> None:
        cfg = self.config
        await self.rejoin()
        while not self.host._conns:
            await self.host.peer_connected.wait()
        published: tuple[PeerRecord | None, str] = (None, "")
        next_refresh = 0.0
        while True:
            self._changed = trio.Event()
            before = self.reachability
            self.reachability = await self.detect_reachability()
            if self.reachability != before:
                log.info("reachability: %s", self.reachability)
            if self.reachability == "private":
                await self.check_relays()
                await self.keep_reservations()
            rec = self.self_record()
            now = trio.current_time()
            # Publish when the record or our server mode changed, and every dht_refresh.
            state = (rec, self.reachability)
            if rec is not None and (state != published or now >= next_refresh):
                await self.dht.lookup(kad_key(self.host.peer_id))
                published, next_refresh = state, now + cfg.dht_refresh
            if rec is not None and state == published and self.reachability != "unknown":
                self.published.set()
            if self.addrbook.dirty:
                self._save()
            # Unknown: ask again soon (our peers had not identified yet); private: renew
            # reservations (and find new relays) every 30 s; public: refresh the record.
            wait = {"unknown": 2.0, "private": 30.0}.get(self.reachability, cfg.dht_refresh)
            with trio.move_on_after(wait):
                await self._changed.wait()

    def _save(self) -> None:
        try:
            self.addrbook.save()
        except OSError as e:
            log.warning("could not save the address book: %s", e)
