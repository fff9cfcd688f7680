"""The API's route handlers: OpenAI-compatible routes and the native job, status,
metrics and OpenAPI routes (the chain's routes are in :mod:`.routes_chain`).

- ``GET /v1/models``, ``GET /v1/models/{model}``
- ``POST /v1/completions``, ``POST /v1/chat/completions`` (``stream: true`` answers with
  server-sent events in OpenAI's chunk format, ending with ``data: [DONE]``)
- ``POST /v1/images/generations`` (``response_format`` ``b64_json``)
- ``GET /api/v1/jobs/{job_id}``, ``GET /api/v1/status``
- ``GET /metrics`` (Prometheus text format), ``GET /openapi.json``
"""

from __future__ import annotations

import base64
import functools
import math
import re
import time

from starlette.requests import Request
from starlette.responses import Response

from aipg.node.metrics import CONTENT_TYPE, render_exposition
from aipg.node.services.gateway_api import (
    CompletionRequest,
    CompletionResult,
    Gateway,
    GatewayError,
    ModelInfo,
    NodeView,
    TextCallback,
)

from .observe import ApiMetrics
from .openapi import openapi_document
from .params import (
    CHAT_FIELDS,
    COMPLETION_FIELDS,
    IMAGE_FIELDS,
    MAX_NAME_CHARS,
    NEUTRAL_CHAT,
    NEUTRAL_COMPLETION,
    check_response_format,
    completion_request,
    fit_context,
    image_request,
    parse_messages,
    parse_prompt,
    parse_sampling,
    parse_stream,
)
from .ratelimit import KeyedLimiter, RateLimited
from .request import (
    BODY_TIMEOUT_S,
    Caller,
    Fields,
    bearer_key,
    client_address,
    read_json_object,
    unauthorized,
)
from .responses import ApiError, gateway_error, invalid, json_response, show
from .stream import ChunkShape, CompletionStream

_JOB_ID = re.compile(r"[A-Za-z0-9:_\-]{1,160}\Z")


class Api:
    """The route handlers, bound to one gateway, the node's views and the free tier's limiter."""

    def __init__(
        self,
        gateway: Gateway,
        node: NodeView,
        limiter: KeyedLimiter,
        max_body_bytes: int,
        metrics: ApiMetrics,
        trusted_proxies: frozenset[str] = frozenset(),
        body_timeout_s: float = BODY_TIMEOUT_S,
    ) -> None:
        self.gateway = gateway
        self.node = node
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
        return json_response(self.node.status())

    async def metrics_text(self, request: Request) -> Response:
        self.metrics.clients.set(len(self.limiter))
        text = render_exposition([*self.node.metrics(), *self.metrics.collect()])
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
