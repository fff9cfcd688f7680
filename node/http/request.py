"""Reading and checking API requests: JSON bodies, typed fields, OpenAI's error shape.

Everything a client sends is checked here before a gateway sees it: the body's size and
JSON, then each field's type and range, and unknown fields (OpenAI refuses them too, so
a typo such as ``max_token`` is an error rather than silently ignored). Every failure is
an :class:`ApiError` naming the field in ``param``.
"""

from __future__ import annotations

import ipaddress
import json
import math
from dataclasses import dataclass
from typing import Any

import trio
from starlette.requests import Request

from aipg.node.services.gateway_api import (
    PaidAccount,
    Tier,
)

from .responses import ApiError, invalid, show

# A body that has not arrived by then is a client holding a connection open, not a prompt.
BODY_TIMEOUT_S = 30.0
MAX_API_KEY_CHARS = 256
# The key that asks for the free tier explicitly (``OpenAI(api_key="free")``).
FREE_TIER_KEY = "free"


# -- reading and checking request bodies ---------------------------------------------------


async def read_json_object(
    request: Request, limit: int, *, timeout_s: float = BODY_TIMEOUT_S
) -> dict:
    """The request body as a JSON object, read at most ``limit`` bytes within ``timeout_s``.

    Raises ApiError: 413 for a body over ``limit`` (by Content-Length or as read), 408 for
    a body still arriving after ``timeout_s`` (a client trickling bytes), 415
    for a Content-Type other than JSON (none at all is taken as JSON), 400 for a body that
    is not UTF-8 JSON, JSON with NaN or Infinity, nesting too deep to parse, or a value
    that is not an object.
    """
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        if declared.isdigit():
            raise _too_large(limit)
        raise invalid("Content-Length is not a number")
    media = request.headers.get("content-type", "application/json").split(";")[0].strip()
    if media.lower() not in ("application/json", ""):
        raise ApiError(
            415,
            f"send the body as Content-Type: application/json (got {show(media)})",
            code="unsupported_media_type",
        )
    chunks, size = [], 0
    with trio.move_on_after(timeout_s) as reading:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            chunks.append(chunk)
    if reading.cancelled_caught:
        raise ApiError(
            408, f"the request body took longer than {timeout_s:g} s", code="request_timeout"
        )
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
                f"unrecognized request argument supplied: {show(unknown[0])}",
                param=f"{where}{unknown[0][:64]}",
            )
        self._body = body
        self._where = where

    def name(self, key: str) -> str:
        return f"{self._where}{key}"

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
                f"{self.name(key)} must be from {lo} to {hi}, got {show(value)}", self.name(key)
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
                f"{self.name(key)} must be from {lo:g} to {hi:g}, got {show(value)}",
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
                f"{self.name(key)} must be one of {', '.join(allowed)}, got {show(value)}",
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


# -- callers: who is asking, and may they ----------------------------------------------


@dataclass(frozen=True)
class Caller:
    """The client of one request: tier, paid account, address."""

    tier: Tier
    account: PaidAccount | None
    client: str


def client_address(request: Request, trusted_proxies: frozenset[str] = frozenset()) -> str:
    """The address a request comes from: the peer's, or, when the peer is one of
    ``trusted_proxies`` (a reverse proxy in front of the node), the last address in
    ``X-Forwarded-For`` that is not itself a trusted proxy. Entries a client could have
    forged (anything left of that) are never used."""
    peer = request.client.host if request.client else "unknown"
    if peer not in trusted_proxies:
        return peer
    hops = [h.strip() for h in request.headers.get("x-forwarded-for", "").split(",")]
    for hop in reversed(hops):
        if hop in trusted_proxies:
            continue
        try:
            return str(ipaddress.ip_address(hop))
        except ValueError:
            return peer  # a malformed hop: trust nothing the header says
    return peer


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
        raise unauthorized("the Authorization header must be 'Bearer <api key>'")
    if not key or key == FREE_TIER_KEY:
        return None
    if len(key) > MAX_API_KEY_CHARS or not key.isascii() or not key.isprintable():
        raise unauthorized("incorrect API key provided")
    return key


def unauthorized(message: str) -> ApiError:
    return ApiError(
        401,
        message,
        type="authentication_error",
        code="invalid_api_key",
        headers={"WWW-Authenticate": 'Bearer realm="aipg"'},
    )
