"""Multiaddrs (text form) for the protocols a node uses.

``/ip4/127.0.0.1/tcp/4001/ws/p2p/12D3KooW...`` parses into components
``(("ip4", "127.0.0.1"), ("tcp", "4001"), ("ws", None), ("p2p", "12D3KooW..."))``.
Supported: ``/ip4 /ip6 /dns4 /dns6 /tcp /ws /wss /p2p /p2p-circuit``. A relayed address is
``<relay address>/p2p/<relay id>/p2p-circuit[/p2p/<target id>]`` (circuit relay v2). Values are validated and put
in canonical form (``/ip6`` compressed, ports without leading zeros), so
``str(Multiaddr.parse(s))`` is the canonical text and equal addresses compare equal.
"""

from __future__ import annotations

import ipaddress
import re

from .errors import WireError
from .peerid import PeerId

_HOST_RE = re.compile(
    r"(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?"
)
MAX_MULTIADDR_LEN = 1024
# protocol name -> takes a value?
PROTOCOLS = {
    "ip4": True,
    "ip6": True,
    "dns4": True,
    "dns6": True,
    "tcp": True,
    "ws": False,
    "wss": False,
    "p2p": True,
    "p2p-circuit": False,
}


def _canonical_value(proto: str, value: str) -> str:
    if proto == "ip4":
        try:
            return str(ipaddress.IPv4Address(value))
        except ValueError:
            raise WireError(f"/ip4/{value}: not an IPv4 address") from None
    if proto == "ip6":
        try:
            return str(ipaddress.IPv6Address(value))
        except ValueError:
            raise WireError(f"/ip6/{value}: not an IPv6 address") from None
    if proto in ("dns4", "dns6"):
        if not _HOST_RE.fullmatch(value):
            raise WireError(f"/{proto}/{value}: not a DNS name")
        return value.lower()
    if proto == "tcp":
        if not value.isdigit() or len(value) > 5 or int(value) > 65535:
            raise WireError(f"/tcp/{value}: not a port (0-65535)")
        return str(int(value))
    if proto == "p2p":
        try:
            return str(PeerId.from_string(value))
        except WireError as e:
            raise WireError(f"/p2p/{value}: {e}") from None
    raise AssertionError(proto)


class Multiaddr:
    """An immutable, validated multiaddr."""

    __slots__ = ("components",)

    def __init__(self, components: tuple[tuple[str, str | None], ...]):
        self.components = components

    @classmethod
    def parse(cls, text: str) -> Multiaddr:
        """Parse text form; raises WireError naming the bad component."""
        if not isinstance(text, str) or not text.startswith("/"):
            raise WireError(f"a multiaddr starts with '/': {str(text)[:80]!r}")
        if len(text) > MAX_MULTIADDR_LEN:
            raise WireError("multiaddr is too long")
        parts = text.split("/")[1:]
        if parts and parts[-1] == "":
            parts.pop()  # one trailing slash is tolerated
        comps: list[tuple[str, str | None]] = []
        i = 0
        while i < len(parts):
            proto = parts[i]
            if proto not in PROTOCOLS:
                raise WireError(
                    f"unknown multiaddr protocol /{proto} (supported: {', '.join('/' + p for p in PROTOCOLS)})"
                )
            if PROTOCOLS[proto]:
                if i + 1 >= len(parts) or parts[i + 1] == "":
                    raise WireError(f"/{proto} needs a value")
                comps.append((proto, _canonical_value(proto, parts[i + 1])))
                i += 2
            else:
                comps.append((proto, None))
                i += 1
        if not comps:
            raise WireError("empty multiaddr")
        return cls(tuple(comps))

    def __str__(self) -> str:
        return "".join(f"/{p}" + (f"/{v}" if v is not None else "") for p, v in self.components)

    def __repr__(self) -> str:
        return f"Multiaddr({self})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Multiaddr) and other.components == self.components

    def __hash__(self) -> int:
        return hash(self.components)

    def value_for(self, proto: str) -> str | None:
        for p, v in self.components:
            if p == proto:
                return v
        return None

    @property
    def peer_id(self) -> PeerId | None:
        """The peer this address reaches: its trailing ``/p2p`` (None when it has none)."""
        last = self.components[-1]
        return PeerId.from_string(last[1]) if last[0] == "p2p" and last[1] else None

    def with_peer_id(self, peer_id: PeerId) -> Multiaddr:
        return Multiaddr((*self.without_peer_id().components, ("p2p", str(peer_id))))

    def without_peer_id(self) -> Multiaddr:
        """This address without its trailing ``/p2p`` components (a relay's, before
        ``/p2p-circuit``, stays)."""
        c = self.components
        end = len(c)
        while end > 1 and c[end - 1][0] == "p2p":
            end -= 1
        return Multiaddr(c[:end]) if end < len(c) else self

    @property
    def is_relayed(self) -> bool:
        return any(p == "p2p-circuit" for p, _ in self.components)

    def relay(self) -> Multiaddr:
        """The relay's own address (with its ``/p2p``) of a ``.../p2p-circuit`` address."""
        names = [p for p, _ in self.components]
        if names.count("p2p-circuit") != 1:
            raise WireError(f"{self} is not a relayed address")
        i = names.index("p2p-circuit")
        relay = Multiaddr(self.components[:i])
        if i == 0 or relay.peer_id is None or relay.is_relayed:
            raise WireError(f"{self}: a relayed address names its relay's /p2p before /p2p-circuit")
        return relay

    def websocket_target(self) -> tuple[str, int, bool]:
        """``(host, port, tls)`` of a ``/ip4|ip6|dns4|dns6/H/tcp/P/ws|wss[/p2p/ID]`` address.

        Raises WireError for any other shape.
        """
        c = self.without_peer_id().components
        if (
            len(c) != 3
            or c[0][0] not in ("ip4", "ip6", "dns4", "dns6")
            or c[1][0] != "tcp"
            or c[2][0] not in ("ws", "wss")
        ):
            raise WireError(f"{self} is not a websocket address (want /ip4/HOST/tcp/PORT/ws)")
        return c[0][1], int(c[1][1]), c[2][0] == "wss"  # type: ignore[arg-type,return-value]

    @classmethod
    def websocket(cls, host: str, port: int, peer_id: PeerId | None = None) -> Multiaddr:
        proto = "ip6" if ":" in host else "ip4"
        try:
            ipaddress.ip_address(host)
        except ValueError:
            proto = "dns4"
        text = f"/{proto}/{host}/tcp/{port}/ws" + (f"/p2p/{peer_id}" if peer_id else "")
        return cls.parse(text)
