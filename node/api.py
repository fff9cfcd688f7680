"""The gateway's HTTP API: OpenAI-compatible routes, native job and status routes, metrics.

Starlette (ASGI) served by Hypercorn's trio worker, so the API is one more service in the
node's trio nursery (:func:`serve_api`). Routes:

- ``GET /v1/models``, ``GET /v1/models/{model}``
- ``POST /v1/completions``, ``POST /v1/chat/completions`` (``stream: true`` answers with
  server-sent events in OpenAI's chunk format, ending with ``data: [DONE]``)
- ``POST /v1/images/generations`` (``response_format`` ``b64_json``)
- ``GET /api/v1/jobs/{job_id}``, ``GET /api/v1/status``
- ``GET /metrics`` (Prometheus text format), ``GET /openapi.json``

Every request field is checked here (types, ranges, unknown fields) before the gateway
sees it; every error is OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``
with a 4xx status for client mistakes and a 500 only for bugs. Free tier: no API key, a
per-client-address token bucket on the job routes (429 with ``Retry-After``); the key
``free`` asks for it too, for clients that always send a key. Paid tier:
``Authorization: Bearer <key>``, which the gateway binds to an account; a key it does not
know is a 401, never a silent fall back to the free tier. Each response carries an
``X-Request-Id``; each request is logged on the ``aipg.node.api`` logger.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .gateway_api import (
    BadRequest,
    CompletionRequest,
    CompletionResult,
    Gateway,
    GatewayError,
    ImageRequest,
    InsufficientFunds,
    JobFailed,
    ModelInfo,
    Overloaded,
    PaidAccount,
    Tier,
    UnknownModel,
)
from .metrics import CONTENT_TYPE, Counter, Gauge, Histogram, render_exposition
from .openapi import openapi_document
from .ratelimit import KeyedLimiter, RateLimited

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "FREE_TIER_KEY",
    "MAX_TOKENS_LIMIT",
    "ApiAddress",
    "build_app",
    "serve_api",
]

log = logging.getLogger("aipg.node.api")

# A request body bigger than this is no prompt anyone means to send to a model we host.
DEFAULT_MAX_BODY_BYTES = 1 << 20
# One job generates at most this many tokens (aipg.models.MAX_TOKENS).
MAX_TOKENS_LIMIT = 8192
MAX_TEMPERATURE = 2.0  # OpenAI's range
MAX_TOP_K = 1 << 20
MAX_STOP_STRINGS = 4  # OpenAI's limit (the sampling record allows 8)
MAX_STOP_BYTES = 64  # SamplingParams: a stop string is at most 64 bytes
MAX_MESSAGES = 256
MAX_NAME_CHARS = 256  # model names, user ids, message names
MAX_IMAGE_PROMPT_CHARS = 4000
MAX_NEGATIVE_PROMPT_BYTES = 1024  # DiffusionParams.negative_prompt
MAX_IMAGE_SIDE = 2048
MAX_DIFFUSION_STEPS = 500  # DiffusionParams.steps
MAX_GUIDANCE = 100.0  # DiffusionParams.guidance_milli / 1000
MAX_PROMPT_IDS = MAX_TOKENS_LIMIT * 4
MAX_API_KEY_CHARS = 256
SEED_LIMIT = 1 << 64
# The key that asks for the free tier explicitly (``OpenAI(api_key="free")``).
FREE_TIER_KEY = "free"
_JOB_ID = re.compile(r"[A-Za-z0-9:_\-]{1,160}\Z")
_REQUEST_ID = re.compile(r"[A-Za-z0-9._\-]{8,128}\Z")
_SIZE = re.compile(r"([0-9]{1,5})x([0-9]{1,5})\Z")
_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
SSE_CONTENT_TYPE = "text/event-stream; charset=utf-8"


# -- errors ---------------------------------------------------------------------------


class ApiError(Exception):
    """An error answer: HTTP ``status`` and the fields of OpenAI's error object."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


def invalid(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    """A 400 for a request field."""
    return ApiError(400, message, param=param, code=code)


def gateway_error(error: GatewayError) -> ApiError:
    """The HTTP answer for an error the gateway raised."""
    message = str(error) or type(error).__name__
    if isinstance(error, UnknownModel):
        return ApiError(404, message, param="model", code="model_not_found")
    if isinstance(error, BadRequest):
        return ApiError(400, message, param=error.param)
    if isinstance(error, InsufficientFunds):
        return ApiError(402, message, type="insufficient_funds", code="insufficient_funds")
    if isinstance(error, Overloaded):
        retry = {"Retry-After": str(error.retry_after_s)}
        return ApiError(503, message, type="server_error", code="overloaded", headers=retry)
    if isinstance(error, JobFailed):
        return ApiError(502, message, type="server_error", code="job_failed")
    return ApiError(500, message, type="server_error")


def json_bytes(content: Any) -> bytes:
    """Compact UTF-8 JSON; text that is not valid Unicode (lone surrogates a client sent
    inside an error's subject) is escaped rather than breaking the response."""
    try:
        text = json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(content, ensure_ascii=True, separators=(",", ":")).encode("ascii")


def json_response(content: Any, status: int = 200, headers: dict | None = None) -> Response:
    return Response(json_bytes(content), status, headers, media_type="application/json")


def error_response(error: ApiError) -> Response:
    return json_response(error.body(), error.status, error.headers)


def _show(value: Any, limit: int = 40) -> str:
    """A client-supplied value, quoted and cut short, for an error message."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# -- reading and checking request bodies ---------------------------------------------------


async def read_json_object(request: Request, limit: int) -> dict:
    """The request body as a JSON object, read at most ``limit`` bytes.

    Raises ApiError: 413 for a body over ``limit`` (by Content-Length or as read), 400
    for a wrong content type, a body that is not UTF-8 JSON, JSON with NaN or Infinity,
    nesting too deep to parse, or a value that is not an object.
    """
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        if declared.isdigit():
            raise _too_large(limit)
        raise invalid("Content-Length is not a number")
    media = request.headers.get("content-type", "application/json").split(";")[0].strip()
    if media.lower() not in ("application/json", ""):
        raise ApiError(
            415, f"expected Content-Type application/json, got {_show(media)}", code="bad_media"
        )
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return parse_json_object(b"".join(chunks))


def parse_json_object(raw: bytes) -> dict:
    """``raw`` as a JSON object; ApiError 400 (naming the problem) otherwise."""
    if not raw.strip():
        raise invalid("the request body is empty; send a JSON object")
    try:
        value = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except UnicodeDecodeError:
        raise invalid("the request body is not UTF-8") from None
    except RecursionError:
        raise invalid("the JSON body is nested too deeply") from None
    except ValueError as e:  # JSONDecodeError, NaN/Infinity, integers too long to parse
        raise invalid(f"the request body is not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise invalid(f"the request body must be a JSON object, not {_json_type(value)}")
    return value


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _too_large(limit: int) -> ApiError:
    return ApiError(413, f"the request body is larger than {limit} bytes", code="request_too_large")


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


class Fields:
    """Typed, range-checked access to a JSON object's fields; JSON ``null`` is absent.

    Construct with the names the route knows: any other field is a 400 naming it.
    Every getter raises ApiError 400 naming the field (as ``param``) when it is wrong.
    """

    def __init__(self, body: dict, known: frozenset[str], where: str = "") -> None:
        unknown = sorted(k for k in body if k not in known)
        if unknown:
            raise invalid(
                f"unrecognized request argument supplied: {_show(unknown[0])}",
                param=f"{where}{unknown[0][:64]}",
            )
        self._body = body
        self._where = where

    def name(self, key: str) -> str:
        return f"{self._where}{key}"

    def present(self, key: str) -> bool:
        return self._body.get(key) is not None

    def raw(self, key: str) -> Any:
        return self._body.get(key)

    def text(
        self, key: str, *, required: bool = False, default: str = "", max_chars: int | None = None
    ) -> str:
        value = self._body.get(key)
        if value is None:
            if required:
                raise invalid(f"{self.name(key)} is required", self.name(key))
            return default
        return check_text(value, self.name(key), max_chars=max_chars)

    def integer(self, key: str, lo: int, hi: int, default: int | None = None) -> int | None:
        value = self._body.get(key)
        if value is None:
            return default
        if type(value) is not int:
            raise invalid(
                f"{self.name(key)} must be an integer, got {_json_type(value)}", self.name(key)
            )
        if not lo <= value <= hi:
            raise invalid(
                f"{self.name(key)} must be from {lo} to {hi}, got {_show(value)}", self.name(key)
            )
        return value

    def number(self, key: str, lo: float, hi: float, default: float) -> float:
        value = self._body.get(key)
        if value is None:
            return default
        if type(value) not in (int, float) or not math.isfinite(value):
            raise invalid(
                f"{self.name(key)} must be a number, got {_json_type(value)}", self.name(key)
            )
        if not lo <= value <= hi:
            raise invalid(
                f"{self.name(key)} must be from {lo:g} to {hi:g}, got {_show(value)}",
                self.name(key),
            )
        return float(value)

    def boolean(self, key: str, default: bool = False) -> bool:
        value = self._body.get(key)
        if value is None:
            return default
        if type(value) is not bool:
            raise invalid(f"{self.name(key)} must be true or false", self.name(key))
        return value

    def choice(self, key: str, allowed: tuple[str, ...], default: str) -> str:
        value = self.text(key, default=default)
        if value not in allowed:
            raise invalid(
                f"{self.name(key)} must be one of {', '.join(allowed)}, got {_show(value)}",
                self.name(key),
            )
        return value

    def neutral(self, key: str, *allowed: Any) -> None:
        """Accept an OpenAI field we do not implement only at a value that changes nothing
        (``presence_penalty: 0``), so clients that send defaults keep working."""
        value = self._body.get(key)
        if value is None:
            return
        if not any(type(value) is type(a) and value == a for a in allowed):
            raise invalid(
                f"{self.name(key)} is not supported by this node "
                f"(only {' or '.join(json.dumps(a) for a in allowed)})",
                self.name(key),
                code="unsupported_parameter",
            )


def check_text(value: Any, param: str, *, max_chars: int | None = None) -> str:
    """``value`` as a string of valid Unicode; ApiError 400 naming ``param`` otherwise."""
    if not isinstance(value, str):
        raise invalid(f"{param} must be a string, got {_json_type(value)}", param)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise invalid(f"{param} is not valid Unicode (lone surrogate)", param) from None
    if max_chars is not None and len(value) > max_chars:
        raise invalid(f"{param} is longer than {max_chars} characters", param)
    return value


# -- the pieces of an LLM request -------------------------------------------------------


@dataclass(frozen=True)
class Sampling:
    """Checked sampling fields; ``max_tokens`` is None when the client left it out."""

    max_tokens: int | None
    temperature_milli: int
    top_k: int
    top_p_milli: int
    seed: int | None
    stop: tuple[str, ...]


def parse_sampling(fields: Fields, *, max_tokens_keys: tuple[str, ...]) -> Sampling:
    """The sampling fields shared by completions and chat (ApiError 400 when wrong)."""
    max_tokens = None
    for key in max_tokens_keys:
        given = fields.integer(key, 1, MAX_TOKENS_LIMIT)
        if given is not None:
            max_tokens = given
    fields.integer("n", 1, 1)
    temperature = fields.number("temperature", 0.0, MAX_TEMPERATURE, 1.0)
    top_p = fields.number("top_p", 0.0, 1.0, 1.0)
    return Sampling(
        max_tokens=max_tokens,
        temperature_milli=round(temperature * 1000),
        top_k=fields.integer("top_k", 0, MAX_TOP_K, 0),
        # top_p 0 means "only the likeliest token", which 1/1000 already is.
        top_p_milli=max(1, round(top_p * 1000)),
        seed=fields.integer("seed", 0, SEED_LIMIT - 1),
        stop=parse_stop(fields),
    )


def parse_stop(fields: Fields) -> tuple[str, ...]:
    """``stop``: a string or a list of up to 4 non-empty strings of at most 64 bytes."""
    value = fields.raw("stop")
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list):
        raise invalid("stop must be a string or a list of strings", "stop")
    if len(items) > MAX_STOP_STRINGS:
        raise invalid(f"stop takes at most {MAX_STOP_STRINGS} strings", "stop")
    stops = []
    for item in items:
        text = check_text(item, "stop")
        if not text or len(text.encode("utf-8")) > MAX_STOP_BYTES:
            raise invalid(f"each stop string must be 1 to {MAX_STOP_BYTES} bytes", "stop")
        stops.append(text)
    return tuple(dict.fromkeys(stops))


def parse_stream(fields: Fields) -> tuple[bool, bool]:
    """(stream, include_usage) from ``stream`` and ``stream_options``."""
    stream = fields.boolean("stream")
    options = fields.raw("stream_options")
    if options is None:
        return stream, False
    if not isinstance(options, dict):
        raise invalid("stream_options must be an object", "stream_options")
    if not stream:
        raise invalid("stream_options is only allowed with stream: true", "stream_options")
    inner = Fields(options, frozenset({"include_usage", "include_obfuscation"}), "stream_options.")
    inner.neutral("include_obfuscation", False)
    return True, inner.boolean("include_usage")


def parse_prompt(fields: Fields) -> tuple[str, list[int] | None]:
    """``prompt``: text, or token ids, or a one-element list of either (n must be 1)."""
    value = fields.raw("prompt")
    if value is None:
        raise invalid("prompt is required", "prompt")
    if isinstance(value, str):
        return check_text(value, "prompt"), None
    if not isinstance(value, list) or not value:
        raise invalid("prompt must be a string, a list of token ids, or a list of one", "prompt")
    if all(type(t) is int for t in value):
        return "", check_ids(value)
    if len(value) != 1:
        raise invalid("a batch of prompts is not supported: send one prompt", "prompt")
    (only,) = value
    if isinstance(only, str):
        return check_text(only, "prompt"), None
    if isinstance(only, list) and only and all(type(t) is int for t in only):
        return "", check_ids(only)
    raise invalid("prompt must be a string, a list of token ids, or a list of one", "prompt")


def check_ids(ids: list[int]) -> list[int]:
    if len(ids) > MAX_PROMPT_IDS:
        raise invalid(f"prompt has more than {MAX_PROMPT_IDS} token ids", "prompt")
    if any(not 0 <= t < 1 << 32 for t in ids):
        raise invalid("token ids must be from 0 to 2**32 - 1", "prompt")
    return list(ids)


_CHAT_ROLES = ("system", "developer", "user", "assistant")


def parse_messages(fields: Fields) -> list[dict]:
    """``messages`` flattened to ``{"role", "content"}`` dicts of text (ApiError 400)."""
    value = fields.raw("messages")
    if value is None:
        raise invalid("messages is required", "messages")
    if not isinstance(value, list) or not value:
        raise invalid("messages must be a non-empty list of message objects", "messages")
    if len(value) > MAX_MESSAGES:
        raise invalid(f"messages holds at most {MAX_MESSAGES} messages", "messages")
    return [parse_message(m, f"messages[{i}]") for i, m in enumerate(value)]


def parse_message(value: Any, where: str) -> dict:
    if not isinstance(value, dict):
        raise invalid(f"{where} must be an object", where)
    fields = Fields(value, frozenset({"role", "content", "name"}), f"{where}.")
    role = fields.text("role", required=True)
    if role not in _CHAT_ROLES:
        raise invalid(
            f"{where}.role must be one of {', '.join(_CHAT_ROLES)} (tools are not supported)",
            f"{where}.role",
        )
    fields.text("name", max_chars=MAX_NAME_CHARS)
    return {"role": role, "content": message_text(fields.raw("content"), f"{where}.content")}


def message_text(content: Any, where: str) -> str:
    """A message's content as text: a string, or a list of ``{"type": "text"}`` parts."""
    if content is None:
        raise invalid(f"{where} is required", where)
    if isinstance(content, str):
        return check_text(content, where)
    if not isinstance(content, list):
        raise invalid(f"{where} must be a string or a list of text parts", where)
    texts = []
    for i, part in enumerate(content):
        part_where = f"{where}[{i}]"
        if not isinstance(part, dict):
            raise invalid(f"{part_where} must be an object", part_where)
        part_fields = Fields(part, frozenset({"type", "text"}), f"{part_where}.")
        if part_fields.text("type", required=True) != "text":
            raise invalid(f"{part_where}: only text parts are supported", f"{part_where}.type")
        texts.append(part_fields.text("text", required=True))
    return "".join(texts)


# -- callers: who is asking, and may they ----------------------------------------------


@dataclass(frozen=True)
class Caller:
    """The client of one request: tier, paid account, address."""

    tier: Tier
    account: PaidAccount | None
    client: str


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def bearer_key(request: Request) -> str | None:
    """The API key of an ``Authorization: Bearer`` header; None for the free tier: no
    header, an empty key, or the key ``free`` (clients such as OpenAI's insist on sending
    some key). ApiError 401 for any other Authorization header."""
    header = request.headers.get("authorization")
    if header is None or not header.strip():
        return None
    scheme, _, key = header.strip().partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer":
        raise _unauthorized("the Authorization header must be 'Bearer <api key>'")
    if not key or key == FREE_TIER_KEY:
        return None
    if len(key) > MAX_API_KEY_CHARS or not key.isascii() or not key.isprintable():
        raise _unauthorized("incorrect API key provided")
    return key


def _unauthorized(message: str) -> ApiError:
    return ApiError(
        401,
        message,
        type="authentication_error",
        code="invalid_api_key",
        headers={"WWW-Authenticate": 'Bearer realm="aipg"'},
    )


# -- the app ------------------------------------------------------------------------------


class ApiMetrics:
    """What the API itself measures (the gateway's own metrics are added to /metrics)."""

    def __init__(self) -> None:
        self.requests = Counter(
            "aipg_api_requests_total",
            "HTTP requests answered, by route, method and status",
            ("route", "method", "status"),
        )
        self.duration = Histogram(
            "aipg_api_request_duration_seconds",
            "Time to answer an HTTP request (streams: until the last event)",
            _DURATION_BUCKETS,
            ("route",),
        )
        self.rate_limited = Counter(
            "aipg_api_rate_limited_total", "Free-tier requests refused with 429"
        )
        self.tokens = Counter(
            "aipg_api_completion_tokens_total", "Tokens generated for API clients", ("tier",)
        )
        self.jobs = Counter(
            "aipg_api_jobs_total",
            "Jobs the API sent to the gateway, by kind and tier",
            ("kind", "tier"),
        )
        self.streams = Gauge("aipg_api_streams_open", "Server-sent event streams open now")
        self.clients = Gauge("aipg_api_rate_limit_clients", "Client addresses the limiter tracks")

    def collect(self) -> list:
        return [
            m.collect()
            for m in (
                self.requests,
                self.duration,
                self.rate_limited,
                self.tokens,
                self.jobs,
                self.streams,
                self.clients,
            )
        ]


class Api:
    """The route handlers, bound to one gateway and the free tier's limiter."""

    def __init__(
        self,
        gateway: Gateway,
        limiter: KeyedLimiter,
        max_body_bytes: int,
        metrics: ApiMetrics,
    ) -> None:
        self.gateway = gateway
        self.limiter = limiter
        self.max_body_bytes = max_body_bytes
        self.metrics = metrics

    # -- admission ------------------------------------------------------------------

    def admit(self, request: Request) -> Caller:
        """Who the caller of a job route is: paid (a known key), or free within its rate.

        Raises ApiError 401 for a bad key (a failed attempt also draws on the address's
        free-tier bucket, so keys cannot be guessed at line rate) and 429 when the free
        tier's bucket is empty.
        """
        client = client_address(request)
        key = bearer_key(request)
        if key is None:
            self.take_free_token(client)
            return Caller("free", None, client)
        account = self.gateway.authenticate(key)
        if account is None:
            self.take_free_token(client)
            raise _unauthorized("incorrect API key provided")
        return Caller("paid", account, client)

    def take_free_token(self, client: str) -> None:
        try:
            self.limiter.take_nowait(client)
        except RateLimited as limited:
            self.metrics.rate_limited.inc()
            wait = max(1, math.ceil(limited.retry_after))
            raise ApiError(
                429,
                f"free-tier rate limit reached for {client}; retry after {wait} s, "
                "or use an API key for the paid tier",
                type="rate_limit_error",
                code="rate_limit_exceeded",
                headers={"Retry-After": str(wait)},
            ) from None
        finally:
            self.metrics.clients.set(len(self.limiter))

    def model(self, name: str, kind: str) -> ModelInfo:
        info = self.gateway.resolve_model(name)
        if info is None:
            raise ApiError(
                404,
                f"the model {_show(name, 80)} does not exist on this network; "
                "GET /v1/models lists the models jobs can be sent to",
                param="model",
                code="model_not_found",
            )
        if info.kind != kind:
            raise invalid(f"the model {_show(name, 80)} is a {info.kind} model", "model")
        return info

    # -- read-only routes -------------------------------------------------------------

    async def list_models(self, request: Request) -> Response:
        data = [model_object(m) for m in self.gateway.list_models()]
        return json_response({"object": "list", "data": data})

    async def get_model(self, request: Request) -> Response:
        name = request.path_params["model"]
        info = self.gateway.resolve_model(name)
        if info is None:
            raise ApiError(
                404, f"no model {_show(name, 80)}", param="model", code="model_not_found"
            )
        return json_response(model_object(info))

    async def job(self, request: Request) -> Response:
        job_id = request.path_params["job_id"]
        if not _JOB_ID.match(job_id):
            raise invalid(f"{_show(job_id)} is not a job id", "job_id")
        view = self.gateway.job_view(job_id)
        if view is None:
            raise ApiError(
                404,
                f"no job {job_id} on this gateway",
                type="not_found_error",
                param="job_id",
                code="job_not_found",
            )
        return json_response(view)

    async def status(self, request: Request) -> Response:
        return json_response(self.gateway.status())

    async def metrics_text(self, request: Request) -> Response:
        self.metrics.clients.set(len(self.limiter))
        text = render_exposition([*self.gateway.metrics(), *self.metrics.collect()])
        return Response(text, headers={"Content-Type": CONTENT_TYPE})

    async def openapi(self, request: Request) -> Response:
        return json_response(openapi_document())

    # -- LLM routes -----------------------------------------------------------------------

    async def completions(self, request: Request) -> Response:
        caller = self.admit(request)
        fields = Fields(await read_json_object(request, self.max_body_bytes), _COMPLETION_FIELDS)
        info = self.model(fields.text("model", required=True, max_chars=MAX_NAME_CHARS), "llm")
        prompt, prompt_ids = parse_prompt(fields)
        sampling = parse_sampling(fields, max_tokens_keys=("max_tokens",))
        stream, include_usage = parse_stream(fields)
        fields.text("user", max_chars=MAX_NAME_CHARS)
        for key, value in _NEUTRAL_COMPLETION:
            fields.neutral(key, *value)
        prompt_tokens = len(prompt_ids) if prompt_ids else self.count(info, prompt, "prompt")
        max_tokens = fit_context(info, prompt_tokens, sampling.max_tokens, 16, "prompt")
        req = completion_request(info, prompt, prompt_ids, False, sampling, max_tokens, caller)
        shape = ChunkShape("text_completion", request_id(request), info.id, chat=False)
        if stream:
            return CompletionStream(self, req, shape, include_usage)
        result = await self.run_completion(req)
        return json_response(shape.completion(result), headers=job_headers(result.job_id))

    async def chat_completions(self, request: Request) -> Response:
        caller = self.admit(request)
        fields = Fields(await read_json_object(request, self.max_body_bytes), _CHAT_FIELDS)
        info = self.model(fields.text("model", required=True, max_chars=MAX_NAME_CHARS), "llm")
        messages = parse_messages(fields)
        sampling = parse_sampling(fields, max_tokens_keys=("max_tokens", "max_completion_tokens"))
        stream, include_usage = parse_stream(fields)
        fields.text("user", max_chars=MAX_NAME_CHARS)
        check_response_format(fields)
        for key, value in _NEUTRAL_CHAT:
            fields.neutral(key, *value)
        try:
            prompt = self.gateway.render_chat(info, messages)
        except GatewayError as e:
            raise gateway_error(e) from None
        prompt_tokens = self.count(info, prompt, "messages")
        max_tokens = fit_context(info, prompt_tokens, sampling.max_tokens, None, "messages")
        req = completion_request(info, prompt, None, True, sampling, max_tokens, caller)
        shape = ChunkShape("chat.completion", request_id(request), info.id, chat=True)
        if stream:
            return CompletionStream(self, req, shape, include_usage)
        result = await self.run_completion(req)
        return json_response(shape.completion(result), headers=job_headers(result.job_id))

    def count(self, info: ModelInfo, text: str, param: str) -> int:
        try:
            return self.gateway.count_tokens(info, text)
        except GatewayError as e:
            error = gateway_error(e)
            error.param = error.param or param
            raise error from None

    async def run_completion(self, req: CompletionRequest, on_text=None) -> CompletionResult:
        self.metrics.jobs.inc(kind="llm", tier=req.tier)
        try:
            result = await self.gateway.complete(req, on_text)
        except GatewayError as e:
            raise gateway_error(e) from None
        self.metrics.tokens.inc(result.completion_tokens, tier=req.tier)
        return result

    # -- images ---------------------------------------------------------------------------

    async def images(self, request: Request) -> Response:
        caller = self.admit(request)
        fields = Fields(await read_json_object(request, self.max_body_bytes), _IMAGE_FIELDS)
        prompt = fields.text("prompt", required=True, max_chars=MAX_IMAGE_PROMPT_CHARS)
        if not prompt.strip():
            raise invalid("prompt must not be empty", "prompt")
        name = fields.text("model", max_chars=MAX_NAME_CHARS)
        info = self.model(name, "diffusion") if name else self.default_image_model()
        fields.integer("n", 1, 1)
        fields.choice("response_format", ("b64_json",), "b64_json")
        fields.choice("quality", ("standard", "auto"), "auto")
        fields.choice("style", ("natural", "vivid"), "natural")
        fields.choice("output_format", ("png",), "png")
        fields.text("user", max_chars=MAX_NAME_CHARS)
        guidance = fields.number("guidance_scale", 0.0, MAX_GUIDANCE, math.nan)
        negative = fields.text("negative_prompt")
        if len(negative.encode("utf-8")) > MAX_NEGATIVE_PROMPT_BYTES:
            raise invalid(
                f"negative_prompt is longer than {MAX_NEGATIVE_PROMPT_BYTES} bytes",
                "negative_prompt",
            )
        req = ImageRequest(
            model=info.id,
            prompt=prompt,
            size=parse_size(fields),
            steps=fields.integer("steps", 1, MAX_DIFFUSION_STEPS),
            guidance_milli=None if math.isnan(guidance) else round(guidance * 1000),
            seed=fields.integer("seed", 0, SEED_LIMIT - 1),
            tier=caller.tier,
            account=caller.account,
            client=caller.client,
            negative_prompt=negative,
        )
        self.metrics.jobs.inc(kind="diffusion", tier=req.tier)
        try:
            result = await self.gateway.generate_image(req)
        except GatewayError as e:
            raise gateway_error(e) from None
        body = {
            "created": int(time.time()),
            "data": [{"b64_json": base64.b64encode(result.png).decode("ascii")}],
            "aipg": {"job_id": result.job_id, "model": result.model, "worker": result.worker},
        }
        return json_response(body, headers=job_headers(result.job_id))

    def default_image_model(self) -> ModelInfo:
        for info in self.gateway.list_models():
            if info.kind == "diffusion":
                return info
        raise ApiError(404, "no image model is served here", param="model", code="model_not_found")


def parse_size(fields: Fields) -> tuple[int, int] | None:
    """``size`` "WIDTHxHEIGHT": sides multiples of 8 from 8 to 2048 (None: model default)."""
    text = fields.text("size", default="auto")
    if text == "auto":
        return None
    match = _SIZE.match(text)
    if not match:
        raise invalid(f"size must be 'WIDTHxHEIGHT' such as '256x256', got {_show(text)}", "size")
    width, height = int(match[1]), int(match[2])
    for side in (width, height):
        if not 8 <= side <= MAX_IMAGE_SIDE or side % 8:
            raise invalid(
                f"image sides must be multiples of 8 from 8 to {MAX_IMAGE_SIDE}, got {text}",
                "size",
            )
    return width, height


def check_response_format(fields: Fields) -> None:
    value = fields.raw("response_format")
    if value is None:
        return
    if not isinstance(value, dict):
        raise invalid("response_format must be an object", "response_format")
    inner = Fields(value, frozenset({"type"}), "response_format.")
    inner.choice("type", ("text",), "text")


def fit_context(
    info: ModelInfo, prompt_tokens: int, asked: int | None, default: int | None, param: str
) -> int:
    """The job's max_tokens: what was asked if it fits the context after the prompt (400
    otherwise), else ``default`` (None: the whole rest of the context) cut to fit."""
    room = min(info.context_length - prompt_tokens, MAX_TOKENS_LIMIT)
    if room < 1:
        raise invalid(
            f"this model's maximum context length is {info.context_length} tokens, and the "
            f"prompt has {prompt_tokens}; shorten it so that at least one token can follow",
            param,
            code="context_length_exceeded",
        )
    if asked is None:
        return room if default is None else min(default, room)
    if asked > room:
        raise invalid(
            f"this model's maximum context length is {info.context_length} tokens: "
            f"{prompt_tokens} in the prompt leave room for {room}, but max_tokens is {asked}",
            "max_tokens",
            code="context_length_exceeded",
        )
    return asked


def completion_request(
    info: ModelInfo,
    prompt: str,
    prompt_ids: list[int] | None,
    chat: bool,
    sampling: Sampling,
    max_tokens: int,
    caller: Caller,
) -> CompletionRequest:
    return CompletionRequest(
        model=info.id,
        prompt_ids=prompt_ids,
        prompt=prompt,
        chat=chat,
        max_tokens=max_tokens,
        temperature_milli=sampling.temperature_milli,
        top_k=sampling.top_k,
        top_p_milli=sampling.top_p_milli,
        seed=sampling.seed,
        stop=sampling.stop,
        tier=caller.tier,
        account=caller.account,
        client=caller.client,
    )


def model_object(info: ModelInfo) -> dict:
    return {
        "id": info.id,
        "object": "model",
        "created": info.created,
        "owned_by": "aipg",
        "name": info.name,
        "kind": info.kind,
        "context_length": info.context_length,
    }


def job_headers(job_id: str) -> dict[str, str]:
    return {"X-Aipg-Job-Id": job_id}


def request_id(request: Request) -> str:
    return request.scope.get("state", {}).get("request_id", "")


_COMMON_LLM_FIELDS = frozenset(
    {
        "model", "max_tokens", "temperature", "top_p", "top_k", "n", "stop", "seed",
        "stream", "stream_options", "user", "presence_penalty", "frequency_penalty",
        "logit_bias", "logprobs",
    }
)  # fmt: skip
_COMPLETION_FIELDS = _COMMON_LLM_FIELDS | {"prompt", "echo", "best_of", "suffix"}
_CHAT_FIELDS = _COMMON_LLM_FIELDS | {
    "messages", "max_completion_tokens", "top_logprobs", "response_format", "tools",
    "tool_choice", "parallel_tool_calls", "store", "metadata",
}  # fmt: skip
_NEUTRAL_COMMON = (
    ("presence_penalty", (0, 0.0)),
    ("frequency_penalty", (0, 0.0)),
    ("logit_bias", ({},)),
)
_NEUTRAL_COMPLETION = (
    *_NEUTRAL_COMMON,
    ("logprobs", (0,)),
    ("echo", (False,)),
    ("best_of", (1,)),
    ("suffix", ("",)),
)
_NEUTRAL_CHAT = (
    *_NEUTRAL_COMMON,
    ("logprobs", (False,)),
    ("top_logprobs", (0,)),
    ("tools", ([],)),
    ("tool_choice", ("none", "auto")),
    ("parallel_tool_calls", (False, True)),
    ("store", (False,)),
    ("metadata", ({},)),
)
_IMAGE_FIELDS = frozenset(
    {
        "prompt", "model", "n", "size", "response_format", "quality", "style", "user",
        "steps", "guidance_scale", "seed", "negative_prompt", "output_format",
    }
)  # fmt: skip


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
        self, api: Api, req: CompletionRequest, shape: ChunkShape, include_usage: bool
    ) -> None:
        self.api = api
        self.req = req
        self.shape = shape
        self.include_usage = include_usage
        self._scope: Scope = {}
        self._send: Send = _no_send
        self._started = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._scope, self._send = scope, send
        self.api.metrics.streams.inc()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_cancel_on_disconnect, receive, nursery.cancel_scope)
                await self._run()
                nursery.cancel_scope.cancel()
        finally:
            self.api.metrics.streams.dec()

    async def _run(self) -> None:
        try:
            result = await self.api.run_completion(self.req, self._on_text)
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


# -- middleware: request ids, errors, access log, metrics --------------------------------


class ObserveMiddleware:
    """Outermost ASGI layer: gives each request an id (``X-Request-Id``, the client's if
    it is a sane one), turns any escaped exception into a JSON 500 (logged), and records
    the access log line and the request metrics."""

    def __init__(self, app: ASGIApp, routes: list[Route], metrics: ApiMetrics) -> None:
        self.app = app
        self.routes = routes
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = _request_id_from(scope)
        scope = {**scope, "state": {**scope.get("state", {}), "request_id": rid}}
        start = time.perf_counter()
        status: list[int] = []

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])
                headers = [*message.get("headers", []), (b"x-request-id", rid.encode())]
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            log.exception("request %s %s %s failed", rid, scope["method"], scope["path"])
            if status:  # the response had started; the connection's close tells the client
                return
            error = ApiError(500, "internal server error", type="server_error")
            await error_response(error)(scope, receive, send_with_id)
        finally:
            self._record(scope, status[0] if status else 499, time.perf_counter() - start, rid)

    def _record(self, scope: Scope, status: int, seconds: float, rid: str) -> None:
        route = self._route(scope)
        self.metrics.requests.inc(route=route, method=scope["method"], status=str(status))
        self.metrics.duration.observe(seconds, route=route)
        client = scope.get("client") or ("-", 0)
        log.info(
            '%s "%s %s" %d %.1fms rid=%s',
            client[0],
            scope["method"],
            _show(scope["path"], 120)[1:-1],
            status,
            seconds * 1000,
            rid,
        )

    def _route(self, scope: Scope) -> str:
        for route in self.routes:
            match, _ = route.matches(scope)
            if match is not Match.NONE:
                return route.path
        return "other"


def _request_id_from(scope: Scope) -> str:
    for name, value in scope.get("headers", []):
        if name == b"x-request-id":
            text = value.decode("latin-1")
            if _REQUEST_ID.match(text):
                return text
    return secrets.token_hex(12)


async def _http_exception(request: Request, exc: Exception) -> Response:
    """Routing errors (unknown path, wrong method) in OpenAI's error shape."""
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        error = ApiError(
            404,
            f"no route {request.method} {_show(request.url.path, 100)[1:-1]}",
            type="not_found_error",
            code="unknown_url",
        )
    elif exc.status_code == 405:
        error = ApiError(
            405,
            f"{request.method} is not allowed on {request.url.path}",
            code="method_not_allowed",
            headers=dict(exc.headers or {}),
        )
    else:
        error = ApiError(exc.status_code, str(exc.detail), headers=dict(exc.headers or {}))
    return error_response(error)


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc)


def build_app(
    gateway: Gateway,
    *,
    free_tier_per_minute: int,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    max_rate_limit_clients: int = 65_536,
    clock: Callable[[], float] | None = None,
) -> Starlette:
    """The API app for ``gateway``.

    ``free_tier_per_minute`` job requests per client address per minute (burst of the
    same number) on the free tier; ``max_body_bytes`` caps request bodies (413);
    ``max_rate_limit_clients`` bounds the limiter's memory; ``clock`` (seconds) drives
    the limiter (``trio.current_time`` by default). ValueError for a bad limit.
    """
    if free_tier_per_minute < 1:
        raise ValueError("free_tier_per_minute must be at least 1")
    if max_body_bytes < 1024:
        raise ValueError("max_body_bytes must be at least 1024")
    limiter = KeyedLimiter.per_minute(
        free_tier_per_minute, max_keys=max_rate_limit_clients, clock=clock
    )
    metrics = ApiMetrics()
    api = Api(gateway, limiter, max_body_bytes, metrics)
    routes = [
        Route("/v1/models", api.list_models, methods=["GET"]),
        Route("/v1/models/{model:path}", api.get_model, methods=["GET"]),
        Route("/v1/completions", api.completions, methods=["POST"]),
        Route("/v1/chat/completions", api.chat_completions, methods=["POST"]),
        Route("/v1/images/generations", api.images, methods=["POST"]),
        Route("/api/v1/jobs/{job_id}", api.job, methods=["GET"]),
        Route("/api/v1/status", api.status, methods=["GET"]),
        Route("/metrics", api.metrics_text, methods=["GET"]),
        Route("/openapi.json", api.openapi, methods=["GET"]),
    ]
    app = Starlette(
        routes=routes,
        middleware=[Middleware(ObserveMiddleware, routes=routes, metrics=metrics)],
        exception_handlers={HTTPException: _http_exception, ApiError: _api_error},
    )
    app.state.api = api
    return app


# -- serving --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ApiAddress:
    """Where the API listens."""

    host: str
    port: int

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


async def serve_api(
    app: ASGIApp,
    host: str,
    port: int,
    *,
    graceful_timeout_s: float = 5.0,
    task_status: trio.TaskStatus[ApiAddress] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` over HTTP/1.1 on ``host:port`` (port 0: any free port) until cancelled.

    Reports the bound :class:`ApiAddress` through ``task_status.started`` once the socket
    listens. Cancelling the task closes the listener and every connection (in-flight
    requests get up to ``graceful_timeout_s`` only if the cancel comes from a shutdown
    trigger; a plain cancel is immediate). Raises OSError if the address cannot be bound.
    """
    config = HypercornConfig()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.accesslog = None  # ObserveMiddleware logs every request
    config.errorlog = logging.getLogger("aipg.node.api.server")
    config.graceful_timeout = graceful_timeout_s
    config.keep_alive_timeout = 30
    config.h11_max_incomplete_size = 64 * 1024  # request line and headers
    config.include_server_header = False

    class _Reporter:
        def started(self, binds: list[str]) -> None:
            task_status.started(_parse_bind(binds[0]))

    await hypercorn_serve(app, config, shutdown_trigger=trio.sleep_forever, task_status=_Reporter())


def _parse_bind(bind: str) -> ApiAddress:
    """``http://127.0.0.1:8080`` or ``http://[::1]:8080`` as an ApiAddress."""
    hostport = bind.split("://", 1)[1]
    host, _, port = hostport.rpartition(":")
    return ApiAddress(host.strip("[]"), int(port))
