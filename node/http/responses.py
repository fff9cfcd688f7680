"""The API's answers: JSON responses, and errors in OpenAI's shape
``{"error": {"message", "type", "param", "code"}}`` with the status each deserves."""

from __future__ import annotations

import json
from typing import Any

from starlette.responses import Response

from aipg.node.services.gateway_api import (
    BadRequest,
    GatewayError,
    InsufficientFunds,
    JobFailed,
    Overloaded,
    UnknownModel,
)

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
        text = json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":"))
        return text.encode("ascii")


def json_response(content: Any, status: int = 200, headers: dict | None = None) -> Response:
    return Response(json_bytes(content), status, headers, media_type="application/json")


def error_response(error: ApiError) -> Response:
    return json_response(error.body(), error.status, error.headers)


def show(value: Any, limit: int = 40) -> str:
    """A client-supplied value, quoted and cut short, for an error message."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
