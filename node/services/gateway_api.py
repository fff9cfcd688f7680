"""The interface between the HTTP API and the node: what a gateway does for a client.

The API (:mod:`aipg.node.http`) parses and validates every request, then calls a
:class:`Gateway`. The gateway turns requests into jobs on the network (or, in tests, runs
the models directly) and raises the errors below for what the client must be told. These
are plain frozen dataclasses, not wire records: they never leave the process.

Contract for implementations:
- Requests reach the gateway already validated for types and generic ranges (see the
  field comments); anything that depends on the model (vocabulary, image sizes it
  supports, the context once stop strings and templates are applied) the gateway checks
  and reports with :class:`BadRequest`.
- Any method may raise a :class:`GatewayError`; the API answers each kind with its own
  status (404, 400, 402, 503 + Retry-After, 502). Any other exception is a bug: a 500.
- ``complete`` and ``generate_image`` are called from the API's trio task and may take
  as long as the job takes; the API cancels a streamed one when its client goes away
  (a plain request runs to the end: its fee is already committed).
- The synchronous methods are called on the event loop: keep them cheap.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal, Protocol

from aipg.models import DiffusionParams
from aipg.node.metrics import Metric

__all__ = [
    "BadRequest",
    "CompletionRequest",
    "CompletionResult",
    "Gateway",
    "GatewayError",
    "ImageRequest",
    "ImageResult",
    "InsufficientFunds",
    "JobFailed",
    "ModelInfo",
    "ModelKind",
    "NodeView",
    "Overloaded",
    "PaidAccount",
    "StreamText",
    "TextCallback",
    "Tier",
    "UnknownModel",
]

Tier = Literal["free", "paid"]
ModelKind = Literal["llm", "diffusion"]
TextCallback = Callable[[str], Awaitable[None]]


@dataclass(frozen=True)
class ModelInfo:
    """A model the gateway can route jobs to."""

    id: str  # model id, "sha256:<64 hex>"
    name: str  # the manifest's name, e.g. "aipg-demo-llm"
    kind: ModelKind
    context_length: int  # tokens (llm); 0 for diffusion models
    created: int  # unix seconds the gateway first saw the model


@dataclass(frozen=True)
class PaidAccount:
    """The ledger account an API key is bound to; its balance pays paid-tier fees."""

    address: str
    name: str


@dataclass(frozen=True)
class CompletionRequest:
    """An LLM job, validated by the API.

    ``prompt_ids`` is set when the client sent token ids instead of text (then ``prompt``
    is ""). ``chat`` says ``prompt`` was rendered from chat messages with the model's
    template. ``max_tokens`` ≥ 1 and, when the client asked for it, fits the context
    after the prompt; ``temperature_milli`` 0..2000 (0: greedy); ``top_k`` ≥ 0 (0: off);
    ``top_p_milli`` 1..1000; ``seed`` in [0, 2**64) or None (the gateway picks one);
    ``stop`` holds at most 4 non-empty strings of at most 64 UTF-8 bytes. ``account`` is
    set exactly when ``tier`` is "paid". ``client`` is the client's IP address.
    """

    model: str
    prompt_ids: list[int] | None
    prompt: str
    chat: bool
    max_tokens: int
    temperature_milli: int
    top_k: int
    top_p_milli: int
    seed: int | None
    stop: tuple[str, ...]
    tier: Tier
    account: PaidAccount | None
    client: str


@dataclass(frozen=True)
class CompletionResult:
    """A finished LLM job. ``finish_reason`` is "stop" or "length"."""

    job_id: str
    model: str
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    worker: str  # the worker's peer id


@dataclass(frozen=True)
class ImageRequest:
    """A diffusion job, validated by the API.

    ``size`` (width, height) has sides that are multiples of 8 from 8 to 2048; ``steps``
    1..500; ``guidance_milli`` 0..100000 (7500 is a scale of 7.5). ``None`` in ``size``,
    ``steps`` or ``guidance_milli`` means the model's default; the gateway checks that
    the model supports what was asked (BadRequest naming the param otherwise).
    """

    model: str
    prompt: str
    size: tuple[int, int] | None
    steps: int | None
    guidance_milli: int | None
    seed: int | None
    tier: Tier
    account: PaidAccount | None
    client: str
    negative_prompt: str = ""

    def diffusion_params(self, defaults: DiffusionParams | None) -> DiffusionParams:
        """The job's parameters: what the client asked for, the model's defaults for the
        rest (``defaults`` None: the built-in ones)."""
        d = defaults or DiffusionParams()
        width, height = self.size or (d.width, d.height)
        return DiffusionParams(
            steps=self.steps or d.steps,
            guidance_milli=d.guidance_milli if self.guidance_milli is None else self.guidance_milli,
            width=width,
            height=height,
            negative_prompt=self.negative_prompt,
        )


@dataclass(frozen=True)
class ImageResult:
    """A finished diffusion job: the PNG and who made it."""

    job_id: str
    model: str
    png: bytes
    worker: str


class Gateway(Protocol):
    """What the HTTP API needs from the node."""

    def list_models(self) -> list[ModelInfo]:
        """Every model jobs can be sent to now."""
        ...

    def resolve_model(self, name_or_id: str) -> ModelInfo | None:
        """The model with this id ("sha256:...") or name, or None."""
        ...

    def count_tokens(self, model: ModelInfo, text: str) -> int:
        """Tokens ``text`` takes as ``model``'s prompt (before any work, for the context check)."""
        ...

    def render_chat(self, model: ModelInfo, messages: list[dict]) -> str:
        """Prompt text for chat ``messages`` with the model's chat template.

        Each message is ``{"role": "system"|"developer"|"user"|"assistant", "content": str}``
        (the API has already flattened content parts to text).
        """
        ...

    async def complete(
        self, req: CompletionRequest, on_text: TextCallback | None = None
    ) -> CompletionResult:
        """Run an LLM job. When ``on_text`` is given (streaming), await it with each new
        piece of text as it is generated; the pieces concatenate to the result's text
        (:class:`StreamText` does the bookkeeping). Raises GatewayError subclasses."""
        ...

    async def generate_image(self, req: ImageRequest) -> ImageResult:
        """Run a diffusion job. Raises GatewayError subclasses."""
        ...

    def job_view(self, job_id: str) -> dict | None:
        """A JSON-ready view of a job (status, receipt, verdicts, certificate, block
        height), or None if the gateway does not know it."""
        ...

    def authenticate(self, api_key: str) -> PaidAccount | None:
        """The account ``api_key`` is bound to, or None for an unknown key."""
        ...


class NodeView(Protocol):
    """What the HTTP API shows of the whole node (not only its gateway)."""

    def status(self) -> dict:
        """A JSON-ready node status: peers, height, finalized block, validators, hosted
        models, queue."""
        ...

    def metrics(self) -> list[Metric]:
        """The node's metrics (peers, height, jobs by state, verifications, gossip)."""
        ...


# -- errors the gateway raises (the API maps each to an HTTP status) --------------------


class GatewayError(Exception):
    """Base of the errors a gateway reports to a client; ``str(e)`` is shown to them."""


class UnknownModel(GatewayError):
    """The model is not (or no longer) served here (404)."""


class BadRequest(GatewayError):
    """The request does not fit the model (400); ``param`` names the request field."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class InsufficientFunds(GatewayError):
    """The paid account's balance cannot cover the job's fee (402)."""


class Overloaded(GatewayError):
    """No capacity now; try again after ``retry_after_s`` seconds (503 + Retry-After)."""

    def __init__(self, message: str = "the network is busy", retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = max(1, int(retry_after_s))


class JobFailed(GatewayError):
    """The job was accepted but no worker produced a result (502)."""


# -- streaming helper -------------------------------------------------------------------


class StreamText:
    """Turns growing decoded text into safe-to-send deltas while stop strings are pending.

    ``push(text)`` takes the whole text decoded so far and returns what may be sent now:
    text that cannot turn out to be part of a stop string, and never text a later decode
    changes (a tokenizer may rewrite its last characters once more tokens arrive, so the
    last ``holdback`` characters and any trailing U+FFFD wait). ``finish(final_text)``
    returns the rest of the final text (already cut at the stop string by the runner).
    The deltas always concatenate to ``final_text``.
    """

    def __init__(self, stop: tuple[str, ...] = (), holdback: int = 1) -> None:
        self.stop = tuple(s for s in stop if s)
        self.holdback = holdback
        self.sent = ""

    def push(self, text: str) -> str:
        # A character split across byte tokens decodes as U+FFFD until its last byte.
        safe = len(text.rstrip("\ufffd")) - self.holdback
        for stop in self.stop:
            hit = text.find(stop, max(0, len(self.sent) - len(stop)))
            if hit != -1:
                safe = min(safe, hit)
            safe = min(safe, _partial_stop_start(text, stop))
        return self._send(text, safe)

    def finish(self, final_text: str) -> str:
        return self._send(final_text, len(final_text))

    def _send(self, text: str, upto: int) -> str:
        if upto <= len(self.sent) or not text.startswith(self.sent):
            return ""
        delta = text[len(self.sent) : upto]
        self.sent += delta
        return delta


def _partial_stop_start(text: str, stop: str) -> int:
    """Where a proper prefix of ``stop`` that ends ``text`` begins (len(text) if none)."""
    for n in range(min(len(stop) - 1, len(text)), 0, -1):
        if text.endswith(stop[:n]):
            return len(text) - n
    return len(text)
