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
import re
from dataclasses import dataclass
from typing import Any

import trio
from starlette.requests import Request
from starlette.responses import Response

from .gateway_api import (
    BadRequest,
    CompletionRequest,
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
# A body that has not arrived by then is a client holding a connection open, not a prompt.
BODY_TIMEOUT_S = 30.0
# The key that asks for the free tier explicitly (``OpenAI(api_key="free")``).
FREE_TIER_KEY = "free"
_SIZE = re.compile(r"([0-9]{1,5})x([0-9]{1,5})\Z")


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


# -- images ------------------------------------------------------------------------------


def image_request(fields: Fields, info: ModelInfo, caller: Caller) -> ImageRequest:
    """The job of an images request for model ``info`` (ApiError 400 for a bad field)."""
    prompt = fields.text("prompt", required=True, max_chars=MAX_IMAGE_PROMPT_CHARS)
    if not prompt.strip():
        raise invalid("prompt must not be empty", "prompt")
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
            f"negative_prompt is longer than {MAX_NEGATIVE_PROMPT_BYTES} bytes", "negative_prompt"
        )
    return ImageRequest(
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


def parse_size(fields: Fields) -> tuple[int, int] | None:
    """``size`` "WIDTHxHEIGHT": sides multiples of 8 from 8 to 2048 (None: model default)."""
    text = fields.text("size", default="auto")
    if text == "auto":
        return None
    match = _SIZE.match(text)
    if not match:
        raise invalid(f"size must be 'WIDTHxHEIGHT' such as '256x256', got {show(text)}", "size")
    width, height = int(match[1]), int(match[2])
    for side in (width, height):
        if not 8 <= side <= MAX_IMAGE_SIDE or side % 8:
            raise invalid(
                f"image sides must be multiples of 8 from 8 to {MAX_IMAGE_SIDE}, got {text}",
                "size",
            )
    return width, height


# -- what the LLM routes accept -------------------------------------------------------------


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


# The fields each route knows; NEUTRAL_* are OpenAI's that we accept only at a value that
# changes nothing.
COMMON_LLM_FIELDS = frozenset(
    {
        "model", "max_tokens", "temperature", "top_p", "top_k", "n", "stop", "seed",
        "stream", "stream_options", "user", "presence_penalty", "frequency_penalty",
        "logit_bias", "logprobs",
    }
)  # fmt: skip
COMPLETION_FIELDS = COMMON_LLM_FIELDS | {"prompt", "echo", "best_of", "suffix"}
CHAT_FIELDS = COMMON_LLM_FIELDS | {
    "messages", "max_completion_tokens", "top_logprobs", "response_format", "tools",
    "tool_choice", "parallel_tool_calls", "store", "metadata",
}  # fmt: skip
NEUTRAL_COMMON = (
    ("presence_penalty", (0, 0.0)),
    ("frequency_penalty", (0, 0.0)),
    ("logit_bias", ({},)),
)
NEUTRAL_COMPLETION = (
    *NEUTRAL_COMMON,
    ("logprobs", (0,)),
    ("echo", (False,)),
    ("best_of", (1,)),
    ("suffix", ("",)),
)
NEUTRAL_CHAT = (
    *NEUTRAL_COMMON,
    ("logprobs", (False,)),
    ("top_logprobs", (0,)),
    ("tools", ([],)),
    ("tool_choice", ("none", "auto")),
    ("parallel_tool_calls", (False, True)),
    ("store", (False,)),
    ("metadata", ({},)),
)
IMAGE_FIELDS = frozenset(
    {
        "prompt", "model", "n", "size", "response_format", "quality", "style", "user",
        "steps", "guidance_scale", "seed", "negative_prompt", "output_format",
    }
)  # fmt: skip
