"""The gateway's side of a token stream (D50), without a network: what a relay accepts,
and what a client's forwarder does when tokens disagree with what it already sent."""

from __future__ import annotations

import pytest

from aipg.node.services.gateway_api import JobFailed
from aipg.node.services.streaming import TextForwarder, TokenRelay
from aipg.pouw import PouwError

A, B = b"\x0a" * 32, b"\x0b" * 32


async def test_a_relay_takes_contiguous_chunks_of_the_current_assignment_only():
    relay = TokenRelay(max_tokens=6, vocab_size=100)
    changed = relay.changed
    assert relay.accept(A, 0, [1, 2]) is True  # the job's first tokens
    assert changed.is_set() and relay.tokens == [1, 2]
    assert relay.accept(A, 2, [3]) is False
    for start, tokens, why in [
        (2, [4], "expected token 3"),
        (3, [], "empty"),
        (3, [100], "outside the vocabulary"),
        (3, [4, 5, 6, 7], "more than the job's 6"),
    ]:
        with pytest.raises(PouwError, match=why):
            relay.accept(A, start, tokens)
    assert relay.tokens == [1, 2, 3]  # nothing of a refused chunk is kept
    assert (
        relay.agrees(A, [1, 2, 3, 9])
        and not relay.agrees(A, [1, 2])
        and not relay.agrees(A, [1, 5, 3])
    )
    assert relay.agrees(B, [7])  # another assignment streamed nothing
    relay.drop()
    with pytest.raises(PouwError, match="expected token 0"):
        relay.accept(B, 1, [1])
    assert relay.accept(B, 0, [1]) is False and relay.streamed_by(B) == 1 and relay.started


class Decoder:
    def decode(self, ids):
        return "".join(chr(ord("a") + i) for i in ids)


async def test_a_forwarder_sends_each_token_once_and_fails_when_tokens_change():
    sent: list[str] = []

    async def on_text(piece: str) -> None:
        sent.append(piece)

    forward = TextForwarder(Decoder(), (), on_text)
    await forward.push([0, 1, 2])
    await forward.push([0, 1, 2])  # a later attempt that agrees: nothing new
    await forward.push([0, 1])  # ... and is behind
    await forward.finish([0, 1, 2, 3], "abcd")
    assert "".join(sent) == "abcd"
    other = TextForwarder(Decoder(), (), on_text)
    await other.push([0, 1, 2])
    with pytest.raises(JobFailed, match="changed"):
        await other.push([0, 5])
    with pytest.raises(JobFailed, match="fewer tokens"):
        await other.finish([0, 1], "ab")
