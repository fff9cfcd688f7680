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
import functools
import ipaddress
import logging
import math
import re
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .api_request import (
    BODY_TIMEOUT_S,
    CHAT_FIELDS,
    COMPLETION_FIELDS,
    FREE_TIER_KEY,
    IMAGE_FIELDS,
    MAX_NAME_CHARS,
    MAX_TOKENS_LIMIT,
    NEUTRAL_CHAT,
    NEUTRAL_COMPLETION,
    ApiError,
    Caller,
    Fields,
    bearer_key,
    check_response_format,
    client_address,
    completion_request,
    error_response,
    fit_context,
    gateway_error,
    image_request,
    invalid,
    json_response,
    parse_messages,
    parse_prompt,
    parse_sampling,
    parse_stream,
    read_json_object,
    show,
    unauthorized,
)
from .api_stream import ChunkShape, CompletionStream
from .gateway_api import (
    CompletionRequest,
    CompletionResult,
    Gateway,
    GatewayError,
    ModelInfo,
    TextCallback,
)
from .metrics import CONTENT_TYPE, Counter, Gauge, Histogram, render_exposition
from .openapi import openapi_document
from .ratelimit import KeyedLimiter, RateLimited

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "FREE_TIER_KEY",
    "MAX_TOKENS_LIMIT",
    "ApiAddress",
    "ApiError",
    "build_app",
    "error_response",
    "invalid",
    "json_response",
    "read_json_object",
    "serve_api",
]

log = logging.getLogger("aipg.node.api")

# A request body bigger than this is no prompt anyone means to send to a model we host.
DEFAULT_MAX_BODY_BYTES = 1 << 20
_JOB_ID = re.compile(r"[A-Za-z0-9:_\-]{1,160}\Z")
_REQUEST_ID = re.compile(r"[A-Za-z0-9._\-]{8,128}\Z")
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


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
        trusted_proxies: frozenset[str] = frozenset(),
        body_timeout_s: float = BODY_TIMEOUT_S,
    ) -> None:
        self.gateway = gateway
        self.limiter = limiter
        self.max_body_bytes = max_body_bytes
        self.body_timeout_s = body_timeout_s
        self.metrics = metrics
        self.trusted_proxies = trusted_proxies

    # -- admission ------------------------------------------------------------------

    def admit(self, request: Request) -> Caller:
        """Who the caller of a job route is: paid (a known key), or free within its rate.

        Raises ApiError 401 for a bad key (a failed attempt also draws on the address's
        free-tier bucket, so keys cannot be guessed at line rate) and 429 when the free
        tier's bucket is empty.
        """
        client = client_address(request, self.trusted_proxies)
        try:
            key = bearer_key(request)
            account = None if key is None else self.gateway.authenticate(key)
            if key is not None and account is None:
                raise unauthorized("incorrect API key provided")
        except ApiError:
            self.take_free_token(client)
            raise
        if account is None:
            self.take_free_token(client)
            return Caller("free", None, client)
        return Caller("paid", account, client)

    async def body(self, request: Request) -> dict:
        return await read_json_object(request, self.max_body_bytes, timeout_s=self.body_timeout_s)

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
                f"the model {show(name, 80)} does not exist on this network; "
                "GET /v1/models lists the models jobs can be sent to",
                param="model",
                code="model_not_found",
            )
        if info.kind != kind:
            raise invalid(f"the model {show(name, 80)} is a {info.kind} model", "model")
        return info

    # -- read-only routes -------------------------------------------------------------

    async def list_models(self, request: Request) -> Response:
        data = [model_object(m) for m in self.gateway.list_models()]
        return json_response({"object": "list", "data": data})

    async def get_model(self, request: Request) -> Response:
        name = request.path_params["model"]
        info = self.gateway.resolve_model(name)
        if info is None:
            raise ApiError(404, f"no model {show(name, 80)}", param="model", code="model_not_found")
        return json_response(model_object(info))

    async def job(self, request: Request) -> Response:
        job_id = request.path_params["job_id"]
        if not _JOB_ID.match(job_id):
            raise invalid(f"{show(job_id)} is not a job id", "job_id")
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
        fields = Fields(await self.body(request), COMPLETION_FIELDS)
        info = self.model(fields.text("model", required=True, max_chars=MAX_NAME_CHARS), "llm")
        prompt, prompt_ids = parse_prompt(fields)
        sampling = parse_sampling(fields, max_tokens_keys=("max_tokens",))
        stream, include_usage = parse_stream(fields)
        fields.text("user", max_chars=MAX_NAME_CHARS)
        for key, value in NEUTRAL_COMPLETION:
            fields.neutral(key, *value)
        prompt_tokens = len(prompt_ids) if prompt_ids else self.count(info, prompt, "prompt")
        max_tokens = fit_context(info, prompt_tokens, sampling.max_tokens, 16, "prompt")
        req = completion_request(info, prompt, prompt_ids, False, sampling, max_tokens, caller)
        shape = ChunkShape("text_completion", request_id(request), info.id, chat=False)
        if stream:
            return self.stream(req, shape, include_usage)
        result = await self.run_completion(req)
        return json_response(shape.completion(result), headers=job_headers(result.job_id))

    async def chat_completions(self, request: Request) -> Response:
        caller = self.admit(request)
        fields = Fields(await self.body(request), CHAT_FIELDS)
        info = self.model(fields.text("model", required=True, max_chars=MAX_NAME_CHARS), "llm")
        messages = parse_messages(fields)
        sampling = parse_sampling(fields, max_tokens_keys=("max_tokens", "max_completion_tokens"))
        stream, include_usage = parse_stream(fields)
        fields.text("user", max_chars=MAX_NAME_CHARS)
        check_response_format(fields)
        for key, value in NEUTRAL_CHAT:
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
            return self.stream(req, shape, include_usage)
        result = await self.run_completion(req)
        return json_response(shape.completion(result), headers=job_headers(result.job_id))

    def count(self, info: ModelInfo, text: str, param: str) -> int:
        try:
            return self.gateway.count_tokens(info, text)
        except GatewayError as e:
            error = gateway_error(e)
            error.param = error.param or param
            raise error from None

    def stream(
        self, req: CompletionRequest, shape: ChunkShape, include_usage: bool
    ) -> CompletionStream:
        run = functools.partial(self.run_completion, req)
        return CompletionStream(run, shape, include_usage, self.metrics.streams)

    async def run_completion(
        self, req: CompletionRequest, on_text: TextCallback | None = None
    ) -> CompletionResult:
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
        fields = Fields(await self.body(request), IMAGE_FIELDS)
        name = fields.text("model", max_chars=MAX_NAME_CHARS)
        info = self.model(name, "diffusion") if name else self.default_image_model()
        req = image_request(fields, info, caller)
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


# -- middleware: request ids, errors, access log, metrics --------------------------------


class ObserveMiddleware:
    """Outermost ASGI layer: gives each request an id (``X-Request-Id``, the client's if
    it is a sane one), turns any escaped exception into a JSON 500 (logged), and records
    the access log line and the request metrics."""

    def __init__(
        self, app: ASGIApp, routes: Callable[[], Sequence[BaseRoute]], metrics: ApiMetrics
    ) -> None:
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
        # Label values stay in small fixed sets: a client must not grow /metrics at will.
        method = scope["method"] if scope["method"] in _METHODS else "other"
        self.metrics.requests.inc(route=route, method=method, status=str(status))
        self.metrics.duration.observe(seconds, route=route)
        client = scope.get("client") or ("-", 0)
        log.info(
            '%s "%s %s" %d %.1fms rid=%s',
            client[0],
            show(scope["method"], 20)[1:-1],
            show(scope["path"], 120)[1:-1],
            status,
            seconds * 1000,
            rid,
        )

    def _route(self, scope: Scope) -> str:
        for route in self.routes():  # read now: the node may add routes after build_app
            match, _ = route.matches(scope)
            if match is not Match.NONE and isinstance(route, Route):
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
            f"no route {request.method} {show(request.url.path, 100)[1:-1]}",
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


async def _gateway_error(request: Request, exc: Exception) -> Response:
    """A gateway error from any route (routes the node adds included)."""
    assert isinstance(exc, GatewayError)
    return error_response(gateway_error(exc))


def build_app(
    gateway: Gateway,
    *,
    free_tier_per_minute: int,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    max_rate_limit_clients: int = 65_536,
    trusted_proxies: Sequence[str] = (),
    cors_origins: Sequence[str] = (),
    body_timeout_s: float = BODY_TIMEOUT_S,
    clock: Callable[[], float] | None = None,
) -> Starlette:
    """The API app for ``gateway``.

    ``free_tier_per_minute`` job requests per client address per minute (burst of the
    same number) on the free tier; ``max_body_bytes`` caps request bodies (413) and
    ``body_timeout_s`` the time to receive one (408);
    ``max_rate_limit_clients`` bounds the limiter's memory; ``trusted_proxies`` are
    addresses of reverse proxies whose ``X-Forwarded-For`` names the client (empty: the
    socket's peer is the client); ``cors_origins`` are the web origins browsers may call
    the API from (``"*"`` for any; empty: none); ``clock`` (seconds) drives the limiter
    (``trio.current_time`` by default). ValueError for a bad limit or proxy address.
    """
    if free_tier_per_minute < 1:
        raise ValueError("free_tier_per_minute must be at least 1")
    if max_body_bytes < 1024:
        raise ValueError("max_body_bytes must be at least 1024")
    limiter = KeyedLimiter.per_minute(
        free_tier_per_minute, max_keys=max_rate_limit_clients, clock=clock
    )
    metrics = ApiMetrics()
    proxies = frozenset(str(ipaddress.ip_address(p)) for p in trusted_proxies)
    api = Api(gateway, limiter, max_body_bytes, metrics, proxies, body_timeout_s)
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
    middleware = [Middleware(ObserveMiddleware, routes=lambda: app.router.routes, metrics=metrics)]
    if cors_origins:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=list(cors_origins),
                allow_methods=["GET", "POST"],
                allow_headers=["Authorization", "Content-Type", "X-Request-Id"],
                expose_headers=["X-Request-Id", "X-Aipg-Job-Id", "Retry-After"],
                max_age=600,
            )
        )
    app = Starlette(
        routes=routes,
        middleware=middleware,
        exception_handlers={
            HTTPException: _http_exception,
            ApiError: _api_error,
            GatewayError: _gateway_error,
        },
    )
    # An API answers what it was asked: a path with a trailing slash is a 404 in JSON,
    # not a redirect that clients (and the fuzz test) would have to follow.
    app.router.redirect_slashes = False
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
    shutdown: trio.Event | None = None,
    graceful_timeout_s: float = 5.0,
    task_status: trio.TaskStatus[ApiAddress] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` over HTTP/1.1 on ``host:port`` (port 0: any free port).

    Reports the bound :class:`ApiAddress` through ``task_status.started`` once the socket
    listens. Runs until cancelled (every connection is closed at once) or until
    ``shutdown`` is set: then the listener closes, requests in flight get up to
    ``graceful_timeout_s`` seconds to finish, and the function returns. Raises OSError if
    the address cannot be bound.
    """
    config = HypercornConfig()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.accesslog = None  # ObserveMiddleware logs every request
    config.errorlog = logging.getLogger("aipg.node.api.server")
    config.graceful_timeout = graceful_timeout_s
    config.keep_alive_timeout = 30
    config.h11_max_incomplete_size = 64 * 1024  # request line and headers
    config.include_server_header = False
    trigger = shutdown.wait if shutdown is not None else trio.sleep_forever

    class _Reporter:
        def started(self, binds: list[str]) -> None:
            task_status.started(_parse_bind(binds[0]))

    await hypercorn_serve(app, config, shutdown_trigger=trigger, task_status=_Reporter())


def _parse_bind(bind: str) -> ApiAddress:
    """``http://127.0.0.1:8080`` or ``http://[::1]:8080`` as an ApiAddress."""
    hostport = bind.split("://", 1)[1]
    host, _, port = hostport.rpartition(":")
    return ApiAddress(host.strip("[]"), int(port))
