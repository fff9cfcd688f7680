"""Streamed completions: OpenAI's response and chunk shapes, and the server-sent events
response that carries them."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio
from starlette.types import Message, Receive, Scope, Send

from aipg.node.metrics import Gauge
from aipg.node.services.gateway_api import CompletionResult, TextCallback

from .responses import ApiError, error_response, json_bytes

log = logging.getLogger("aipg.node.api")

SSE_CONTENT_TYPE = "text/event-stream; charset=utf-8"


# -- OpenAI's response and chunk shapes ---------------------------------------------------


@dataclass(frozen=True)
class ChunkShape:
    """Builds the JSON of one completion (or chat completion) and of its stream chunks."""

    object: str  # "text_completion" or "chat.completion"
    request_id: str
    model: str
    chat: bool

    @property
    def id(self) -> str:
        return ("chatcmpl-" if self.chat else "cmpl-") + self.request_id

    def _base(self, obj: str) -> dict:
        return {"id": self.id, "object": obj, "created": int(time.time()), "model": self.model}

    def completion(self, result: CompletionResult) -> dict:
        if self.chat:
            choice = {
                "index": 0,
                "message": {"role": "assistant", "content": result.text, "refusal": None},
                "logprobs": None,
                "finish_reason": result.finish_reason,
            }
        else:
            choice = {
                "index": 0,
                "text": result.text,
                "logprobs": None,
                "finish_reason": result.finish_reason,
            }
        return {
            **self._base(self.object),
            "choices": [choice],
            "usage": usage(result),
            "aipg": aipg_extension(result),
        }

    def chunk(self, text: str | None, finish_reason: str | None = None, *, role=False) -> dict:
        """One stream chunk: a text delta (chat: ``role`` marks the first), or the last
        (``finish_reason`` set, no text)."""
        if self.chat:
            delta: dict = {"role": "assistant", "content": ""} if role else {}
            if text is not None:
                delta["content"] = text
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            return {**self._base("chat.completion.chunk"), "choices": [choice]}
        choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish_reason}
        return {**self._base("text_completion"), "choices": [choice]}

    def usage_chunk(self, result: CompletionResult) -> dict:
        obj = "chat.completion.chunk" if self.chat else "text_completion"
        return {**self._base(obj), "choices": [], "usage": usage(result)}


def usage(result: CompletionResult) -> dict:
    return {
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "total_tokens": result.prompt_tokens + result.completion_tokens,
    }


def aipg_extension(result: CompletionResult) -> dict:
    """Our addition to OpenAI's shape: where to follow the job's verification."""
    return {"job_id": result.job_id, "worker": result.worker}


def sse_event(payload: dict | str) -> bytes:
    data = payload if isinstance(payload, str) else json_bytes(payload).decode("utf-8")
    return f"data: {data}\n\n".encode()


class CompletionStream:
    """A streamed completion: server-sent events in OpenAI's chunk format.

    The response starts with the first generated text, so an error before any text
    (insufficient funds, overload ...) is still an ordinary JSON error with its status.
    An error after that is sent as one ``data: {"error": ...}`` event before the stream
    ends. A client that disconnects cancels the job's wait.
    """

    def __init__(
        self,
        run: Callable[[TextCallback], Awaitable[CompletionResult]],
        shape: ChunkShape,
        include_usage: bool,
        streams_open: Gauge,
    ) -> None:
        """``run(on_text)`` runs the job (raising ApiError for what the client must be
        told); ``streams_open`` counts open streams."""
        self.run = run
        self.shape = shape
        self.include_usage = include_usage
        self.streams_open = streams_open
        self._scope: Scope = {}
        self._send: Send = _no_send
        self._started = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._scope, self._send = scope, send
        self.streams_open.inc()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_cancel_on_disconnect, receive, nursery.cancel_scope)
                await self._run()
                nursery.cancel_scope.cancel()
        finally:
            self.streams_open.dec()

    async def _run(self) -> None:
        try:
            result = await self.run(self._on_text)
        except ApiError as error:
            if not self._started:
                await error_response(error)(self._scope, _no_receive, self._send)
                return
            await self._event(error.body())
            await self._end()
            return
        except Exception as error:  # a bug: report it in the stream's shape, then log it
            if not self._started:
                raise
            log.exception("stream %s failed", self.shape.request_id)
            await self._event(
                ApiError(500, f"internal error: {type(error).__name__}", type="server_error").body()
            )
            await self._end()
            return
        if not self._started:
            await self._start()
        await self._event(self.shape.chunk(None, result.finish_reason) | _ext(result))
        if self.include_usage:
            await self._event(self.shape.usage_chunk(result))
        await self._event("[DONE]")
        await self._end()

    async def _on_text(self, delta: str) -> None:
        if not delta:
            return
        if not self._started:
            await self._start()
        await self._event(self.shape.chunk(delta))

    async def _start(self) -> None:
        self._started = True
        headers = [
            (b"content-type", SSE_CONTENT_TYPE.encode()),
            (b"cache-control", b"no-cache"),
            (b"x-accel-buffering", b"no"),  # reverse proxies: do not buffer the stream
        ]
        await self._send({"type": "http.response.start", "status": 200, "headers": headers})
        if self.shape.chat:
            await self._event(self.shape.chunk(None, role=True))

    async def _event(self, payload: dict | str) -> None:
        body = sse_event(payload)
        await self._send({"type": "http.response.body", "body": body, "more_body": True})

    async def _end(self) -> None:
        await self._send({"type": "http.response.body", "body": b"", "more_body": False})


def _ext(result: CompletionResult) -> dict:
    return {"aipg": aipg_extension(result)}


async def _cancel_on_disconnect(receive: Receive, scope: trio.CancelScope) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            scope.cancel()
            return


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}


async def _no_send(message: Message) -> None:
    raise RuntimeError("the stream has not started")
