"""What the API measures and logs: request ids, the access log, request metrics, and a
JSON 500 for any exception that escapes a route."""

from __future__ import annotations

import logging
import re
import secrets
import time
from collections.abc import Sequence

from starlette.routing import BaseRoute, Match, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from aipg.node.metrics import Counter, Gauge, Histogram

from .responses import ApiError, error_response, show

log = logging.getLogger("aipg.node.api")

_REQUEST_ID = re.compile(r"[A-Za-z0-9._\-]{8,128}\Z")
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


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


# -- middleware: request ids, errors, access log, metrics --------------------------------


class ObserveMiddleware:
    """Outermost ASGI layer: gives each request an id (``X-Request-Id``, the client's if
    it is a sane one), turns any escaped exception into a JSON 500 (logged), and records
    the access log line and the request metrics."""

    def __init__(self, app: ASGIApp, routes: Sequence[BaseRoute], metrics: ApiMetrics) -> None:
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
        for route in self.routes:
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
