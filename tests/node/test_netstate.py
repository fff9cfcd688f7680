"""A node keeps its listen ports across restarts (node/netstate.py)."""

from __future__ import annotations

import trio

from aipg.gossip import GossipHost, WebsocketTransport
from aipg.node.netstate import save_listen, sticky_listen
from aipg.testing.gossipkit import config, identity
from aipg.wire import Multiaddr

ANY = Multiaddr.parse("/ip4/127.0.0.1/tcp/0/ws")


def test_a_port_0_address_gets_last_runs_port(tmp_path):
    f = tmp_path / "listen.json"
    assert sticky_listen([ANY], f) == [ANY]  # nothing saved yet
    save_listen([Multiaddr.parse("/ip4/127.0.0.1/tcp/40123/ws/p2p/" + str(identity(1).peer_id))], f)
    assert sticky_listen([ANY], f) == [Multiaddr.parse("/ip4/127.0.0.1/tcp/40123/ws")]
    fixed = Multiaddr.parse("/ip4/127.0.0.1/tcp/5000/ws")
    assert sticky_listen([fixed], f) == [fixed]  # an explicit port is the operator's
    other = Multiaddr.parse("/ip4/0.0.0.0/tcp/0/ws")
    assert sticky_listen([other], f) == [other]  # another interface: not the same address
    f.write_text("{not json")
    assert sticky_listen([ANY], f) == [ANY]


async def test_a_restarted_host_listens_on_its_old_port(nursery, tmp_path):
    f = tmp_path / "listen.json"
    a = GossipHost(identity(1), config(1, listen=[ANY]), transport=WebsocketTransport())
    await nursery.start(a.run)
    save_listen(a.listen_addrs, f)
    port = a.listen_addrs[0].websocket_target()[1]
    await a.aclose()
    b = GossipHost(
        identity(1), config(1, listen=sticky_listen([ANY], f)), transport=WebsocketTransport()
    )
    await nursery.start(b.run)
    assert b.listen_addrs[0].websocket_target()[1] == port
    await trio.lowlevel.checkpoint()
