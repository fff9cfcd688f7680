"""What a node remembers of its network between runs: its listen ports and its peers.

A node configured to listen on port 0 ("any free port") keeps the port it got the first
time: the bound addresses are saved in the data dir (``listen.json``) and the next run
asks for the same ports, so the peers that know its address find it where it was. If a
saved port is taken meanwhile, the node falls back to the configured addresses (and its
peers find the new ones by its ID: the DHT holds its signed record). The address book is
``peers.bin`` (:class:`aipg.gossip.addrbook.AddressBook`).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from aipg.wire import Multiaddr, WireError

log = logging.getLogger("aipg.node")

LISTEN_FILE = "listen.json"
PEERS_FILE = "peers.bin"


def sticky_listen(configured: list[Multiaddr], saved_file: Path) -> list[Multiaddr]:
    """``configured``, with each port-0 address replaced by the one we bound last time."""
    try:
        saved = [Multiaddr.parse(a) for a in json.loads(saved_file.read_text())[:16]]
    except (OSError, ValueError, TypeError, WireError):
        return configured
    out = []
    for addr in configured:
        try:
            host, port, _ = addr.websocket_target()
        except WireError:
            out.append(addr)
            continue
        match = None
        if port == 0:
            for s in saved:
                try:
                    s_host, s_port, _ = s.websocket_target()
                except WireError:
                    continue
                if s_host == host and s_port != 0:
                    match = Multiaddr.websocket(host, s_port)
                    break
        out.append(match or addr)
    return out


def save_listen(bound: list[Multiaddr], saved_file: Path) -> None:
    try:
        tmp = saved_file.with_suffix(".tmp")
        tmp.write_text(json.dumps([str(a.without_peer_id()) for a in bound]))
        os.replace(tmp, saved_file)
    except OSError as e:
        log.warning("could not save the listen addresses: %s", e)
