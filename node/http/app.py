"""The gateway's HTTP API: OpenAI-compatible routes, native job and status routes, metrics.

Starlette (ASGI) served by Hypercorn's trio worker, so the API is one more service in the
node's trio nursery (:func:`serve_api`). The routes (:mod:`.routes`, :mod:`.routes_chain`)
and what they check are described there.

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

import ipaddress
import logging
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
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp

from aipg.node.services.gateway_api import Gateway, GatewayError, NodeView

from .observe import ApiMetrics, ObserveMiddleware
from .ratelimit import KeyedLimiter
from .request import BODY_TIMEOUT_S
from .responses import ApiError, error_response, gateway_error, show
from .routes import Api

__all__ = ["DEFAULT_MAX_BODY_BYTES", "ApiAddress", "build_app", "serve_api"]

log = logging.getLogger("aipg.node.api")

# A request body bigger than this is no prompt anyone means to send to a model we host.
DEFAULT_MAX_BODY_BYTES = 1 << 20


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
    node: NodeView,
    *,
    extra_routes: Sequence[BaseRoute] = (),
    free_tier_per_minute: int,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    max_rate_limit_clients: int = 65_536,
    trusted_proxies: Sequence[str] = (),
    cors_origins: Sequence[str] = (),
    body_timeout_s: float = BODY_TIMEOUT_S,
    clock: Callable[[], float] | None = None,
) -> Starlette:
    """The API app for ``gateway``; ``node`` answers /api/v1/status and /metrics;
    ``extra_routes`` are added before the app's own (the chain's routes).

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
    api = Api(gateway, node, limiter, max_body_bytes, metrics, proxies, body_timeout_s)
    routes = [
        *extra_routes,
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
    middleware = [Middleware(ObserveMiddleware, routes=routes, metrics=metrics)]
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
