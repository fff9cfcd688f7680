"""Frame records and the writer's RPC merging, checked with hypothesis."""

from __future__ import annotations

import contextlib

from hypothesis import given, settings
from hypothesis import strategies as st

from aipg.gossip.messages import (
    FRAME_TYPES,
    ControlGraft,
    ControlIHave,
    ControlIWant,
    ControlMessage,
    ControlPrune,
    Ping,
    Rpc,
    SubOpts,
)
from aipg.gossip.rpcbatch import merge_rpcs
from aipg.wire import WireError, decode, encode

topics = st.sampled_from(["/aipg/1/txs", "/aipg/1/jobs", "/aipg/1/receipts"])
ids = st.lists(st.binary(min_size=32, max_size=32), max_size=3000).map(tuple)
controls = st.builds(
    ControlMessage,
    ihave=st.lists(st.builds(ControlIHave, topic=topics, message_ids=ids), max_size=3).map(tuple),
    iwant=st.lists(st.builds(ControlIWant, message_ids=ids), max_size=3).map(tuple),
    graft=st.lists(st.builds(ControlGraft, topic=topics), max_size=3).map(tuple),
    prune=st.lists(
        st.builds(ControlPrune, topic=topics, peers=st.just(()), backoff=st.integers(0, 100)),
        max_size=3,
    ).map(tuple),
)
rpcs = st.builds(
    Rpc,
    subscriptions=st.lists(
        st.builds(SubOpts, subscribe=st.booleans(), topic=topics), max_size=4
    ).map(tuple),
    messages=st.lists(st.binary(max_size=300_000), max_size=8).map(tuple),
    control=st.none() | controls,
)


@settings(max_examples=60, deadline=None)
@given(st.lists(rpcs | st.builds(Ping, nonce=st.integers(0, 2**64 - 1)), min_size=1, max_size=12))
def test_merged_frames_decode_to_the_same_content_in_order(batch):
    frames = merge_rpcs(batch)
    decoded = [decode(f, FRAME_TYPES) for f in frames]
    assert all(len(f) <= 4 << 20 for f in frames)

    def flatten(items):
        out = []
        for item in items:
            if type(item) is Rpc:
                out += [("sub", s) for s in item.subscriptions]
                out += [("msg", m) for m in item.messages]
                if item.control is not None:
                    c = item.control
                    out += [("ctl", x) for x in (*c.ihave, *c.iwant, *c.graft, *c.prune)]
            else:
                out.append(("frame", item))
        return sorted(out, key=repr)

    assert flatten(decoded) == flatten(batch)
    # merging never reorders messages or non-RPC frames
    msgs = [m for r in decoded if type(r) is Rpc for m in r.messages]
    assert msgs == [m for r in batch if type(r) is Rpc for m in r.messages]


@settings(deadline=None)  # a shared CI machine can stall any single example
@given(st.binary(max_size=200))
def test_random_bytes_never_decode_to_anything_but_wire_error(data):
    with contextlib.suppress(WireError):
        decode(data, FRAME_TYPES)


def test_a_rpc_round_trips():
    rpc = Rpc(
        subscriptions=(SubOpts(subscribe=True, topic="/aipg/1/txs"),),
        messages=(b"m",),
        control=None,
    )
    assert decode(encode(rpc), Rpc) == rpc
