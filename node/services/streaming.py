"""Token streams: from a worker to its job's gateway while it generates, and on to the
client (D50).

Worker side, :class:`ChunkSender`: the runner's ``on_token`` (in the execution thread)
hands each token to the trio loop without blocking; one task sends what has piled up as
one :class:`TokenChunk` on ``job``, waits for the answer, then sends the next — at most
one chunk in flight per job and, after the first ``UNPACED_CHUNKS``, at most one every
``MIN_CHUNK_INTERVAL_S``, so a fast model sends bigger chunks, not more requests (the
gateway's host rate-limits a peer's requests: 50/s, bursts of 100). Chunks are the
``job`` protocol's low-priority requests: they take the peer's budget only above the
reserve kept for results and claims, so many jobs streaming at once never crowd out
their results; a rate-limited chunk waits and its tokens go in the next, bigger one. A
chunk that is refused otherwise or not delivered ends the stream for that job: the
result still goes to the gateway, which forwards the rest from it.

Gateway side, :class:`TokenRelay` (one per job): accepts the current assignee's chunks in
order — contiguous, non-empty, ids inside the vocabulary, no more than the job's
``max_tokens`` — and wakes whoever forwards them. :class:`TextForwarder` (one per client
request) turns tokens into text deltas with :class:`StreamText`, and checks that tokens
from a later attempt, and the final result, agree with every token already sent.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import trio

from aipg.gossip import GossipError, RateLimited
from aipg.node.protocol.messages import MAX_CHUNK_TOKENS, JobAck, TokenChunk
from aipg.pouw import PouwError, Result, StreamEvidence
from aipg.pouw.streams import contradicts
from aipg.wire import Identity, WireError, decode, encode, sign

from .gateway_api import JobFailed, StreamText, TextCallback

log = logging.getLogger("aipg.node.streaming")

MIN_CHUNK_INTERVAL_S = 0.025  # <= 40 chunks/s per job: under the host's 50 requests/s
RATE_LIMITED_WAIT_S = 0.1  # a rate-limited chunk's tokens wait this long, then go again
UNPACED_CHUNKS = 8  # the first chunks go as fast as they are acknowledged (first text)
CHUNK_TIMEOUT_S = 5.0


class ChunkSender:
    """Streams one job's tokens to its gateway. ``push`` is called from the execution
    thread; :meth:`run` is the trio task that sends; :meth:`flush` (trio) waits until
    every pushed token was sent or the stream ended, before the result is reported."""

    def __init__(
        self,
        send_job,
        gateway_key: bytes,
        job_id: bytes,
        assignment_id: bytes,
        identity: Identity | None = None,
    ):
        self.send_job = send_job
        self.identity = identity  # signs each chunk (D85); the gateway refuses unsigned ones
        self.gateway_key = gateway_key
        self.job_id = job_id
        self.assignment_id = assignment_id
        self.token = trio.lowlevel.current_trio_token()
        self.pending: list[int] = []
        self.sent = 0  # tokens delivered
        self.chunks = 0  # chunks sent
        self.closed = False  # generation over: send what is left, then stop
        self.broken = False  # a chunk was refused or lost: stop streaming this job
        self._wake = trio.Event()
        self._closed = trio.Event()
        self.done = trio.Event()

    def push(self, token_id: int) -> None:
        """From the execution thread: queue one token (never blocks on the network)."""
        self.token.run_sync_soon(self._add, token_id)

    def _add(self, token_id: int) -> None:
        self.pending.append(token_id)
        self._wake.set()

    def close(self) -> None:
        """On the trio loop, once generation is over."""
        self.closed = True
        self._closed.set()
        self._wake.set()

    async def run(self) -> None:
        try:
            while not self.broken:
                if not self.pending:
                    if self.closed:
                        return
                    await self._wake.wait()
                    self._wake = trio.Event()
                    continue
                batch = self.pending[:MAX_CHUNK_TOKENS]
                del self.pending[: len(batch)]
                if not await self._send(batch):  # rate-limited: the tokens wait
                    self.pending[:0] = batch
                    if self.closed:
                        return  # at the end: the result carries the rest
                    with trio.move_on_after(RATE_LIMITED_WAIT_S):
                        await self._closed.wait()
                    continue
                self.chunks += 1
                if self.chunks >= UNPACED_CHUNKS:
                    # Pacing: the next chunk waits out the interval, unless generation is
                    # over (then what is left goes at once, and the result right after).
                    with trio.move_on_after(MIN_CHUNK_INTERVAL_S):
                        await self._closed.wait()
        finally:
            self.done.set()

    async def _send(self, batch: list[int]) -> bool:
        """Send one chunk; False when the gateway's host rate-limited it (nothing was
        taken: send it again later), True otherwise (sent, or the stream is broken)."""
        chunk = TokenChunk(self.job_id, self.assignment_id, self.sent, tuple(batch))
        if self.identity is not None:
            chunk = sign(chunk, self.identity)
        try:
            answer = await self.send_job(self.gateway_key, encode(chunk), CHUNK_TIMEOUT_S)
            ack = decode(answer, JobAck)
        except RateLimited:
            return False
        except (GossipError, WireError) as e:
            log.info("token stream of job %s lost: %s", self.job_id.hex()[:12], e)
            self.broken = True
            return True
        if not ack.ok:
            log.info("token stream of job %s refused: %s", self.job_id.hex()[:12], ack.reason)
            self.broken = True
            return True
        self.sent += len(batch)
        return True

    async def flush(self) -> None:
        self.close()
        await self.done.wait()


class TokenRelay:
    """One job's streamed tokens at the gateway: those of the latest assignment that
    streamed, in order. ``changed`` is set (and replaced) at every change."""

    def __init__(self, max_tokens: int, vocab_size: int):
        self.max_tokens = max_tokens
        self.vocab_size = vocab_size
        self.assignment_id = b""
        self.tokens: list[int] = []
        self.chunks: list[TokenChunk] = []  # the signed chunks of ``tokens`` (D85)
        self.started = False  # some attempt streamed a token
        self.changed = trio.Event()

    def accept(
        self,
        assignment_id: bytes,
        start: int,
        tokens: Sequence[int],
        chunk: TokenChunk | None = None,
    ) -> bool:
        """Take a chunk from the job's current assignee (the caller checked who sent
        it). Returns True when these are the job's first streamed tokens. Raises
        PouwError for a chunk that is empty, out of order, past ``max_tokens`` or holds
        an id outside the vocabulary; nothing of a refused chunk is kept."""
        if not tokens:
            raise PouwError("chunk.tokens", "empty chunk")
        have = len(self.tokens) if assignment_id == self.assignment_id else 0
        if start != have:
            raise PouwError("chunk.start", f"expected token {have}, got {start}")
        if start + len(tokens) > self.max_tokens:
            raise PouwError("chunk.tokens", f"more than the job's {self.max_tokens} tokens")
        bad = next((t for t in tokens if t >= self.vocab_size), None)
        if bad is not None:
            raise PouwError("chunk.tokens", f"token id {bad} is outside the vocabulary")
        if assignment_id != self.assignment_id:
            self.assignment_id, self.tokens, self.chunks = assignment_id, [], []
        self.tokens.extend(tokens)
        if chunk is not None:
            self.chunks.append(chunk)
        first, self.started = not self.started, True
        self.notify()
        return first

    def agrees(self, assignment_id: bytes, final: Sequence[int]) -> bool:
        """Whether a result of ``assignment_id`` begins with every token it streamed."""
        if assignment_id != self.assignment_id:
            return True  # this assignment streamed nothing
        n = len(self.tokens)
        return len(final) >= n and list(final[:n]) == self.tokens

    def evidence(self, assignment_id: bytes, result: Result) -> StreamEvidence | None:
        """A signed chunk of ``assignment_id`` that ``result`` (its worker's signed
        receipt and tokens) contradicts, as evidence (D85); None if none does."""
        if assignment_id != self.assignment_id:
            return None
        ids = tuple(result.output_token_ids)
        chunk = next((c for c in self.chunks if contradicts(c, ids)), None)
        return StreamEvidence(chunk, result.receipt, ids) if chunk is not None else None

    def streamed_by(self, assignment_id: bytes) -> int:
        return len(self.tokens) if assignment_id == self.assignment_id else 0

    def copy(self) -> TokenRelay:
        """This relay's attempt (its tokens and signed chunks), apart from the job's."""
        out = TokenRelay(self.max_tokens, self.vocab_size)
        out.assignment_id, out.tokens, out.chunks = (
            self.assignment_id,
            [*self.tokens],
            [*self.chunks],
        )
        out.started = self.started
        return out

    def drop(self) -> None:
        """Forget a failed attempt's tokens (what was forwarded stays forwarded)."""
        self.assignment_id, self.tokens, self.chunks = b"", [], []
        self.notify()

    def notify(self) -> None:
        self.changed.set()
        self.changed = trio.Event()


class TextForwarder:
    """Turns a job's tokens into text deltas for one client, in order. Raises JobFailed
    when tokens disagree with what was already sent (a later attempt, or the final
    result, generating other tokens than a failed attempt streamed)."""

    def __init__(self, tokenizer, stop: tuple[str, ...], on_text: TextCallback):
        self.tokenizer = tokenizer
        self.text = StreamText(stop)
        self.on_text = on_text
        self.sent: list[int] = []

    async def push(self, tokens: Sequence[int]) -> None:
        n = min(len(tokens), len(self.sent))
        if list(tokens[:n]) != self.sent[:n]:
            raise JobFailed("the job's tokens changed after part of them was streamed")
        for token in tokens[len(self.sent) :]:
            self.sent.append(token)
            if self.tokenizer is not None:
                piece = self.text.push(self.tokenizer.decode(self.sent))
                if piece:
                    await self.on_text(piece)

    async def finish(self, final: Sequence[int], final_text: str) -> None:
        if len(final) < len(self.sent):
            raise JobFailed("the job's result has fewer tokens than were streamed")
        await self.push(final)
        if not final_text.startswith(self.text.sent):
            raise JobFailed("the job's text differs from the text streamed")
        rest = self.text.finish(final_text)
        if rest:
            await self.on_text(rest)
