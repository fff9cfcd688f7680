"""What each job route accepts: the limits of every field, the field sets of each
request kind, and the parsers that turn checked fields into gateway requests.

The OpenAPI document (:mod:`.openapi`) is built from the same constants, so it says
exactly what the parsers accept.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from aipg.node.services.gateway_api import (
    CompletionRequest,
    ImageRequest,
    ModelInfo,
)

from .request import Caller, Fields, check_text
from .responses import invalid, show

# One job generates at most this many tokens (aipg.models.MAX_TOKENS).
MAX_TOKENS_LIMIT = 8192
MAX_TEMPERATURE = 2.0  # OpenAI's range
DEFAULT_TEMPERATURE = 1.0  # OpenAI's default: the model's own distribution
MAX_TOP_P = 1.0  # a probability mass
DEFAULT_TOP_P = MAX_TOP_P  # nucleus sampling off
MAX_TOP_K = 1 << 20
MAX_STOP_STRINGS = 4  # OpenAI's limit (the sampling record allows 8)
MAX_STOP_BYTES = 64  # SamplingParams: a stop string is at most 64 bytes
MAX_MESSAGES = 256
MAX_NAME_CHARS = 256  # model names, user ids, message names
MAX_IMAGE_PROMPT_CHARS = 4000
MAX_NEGATIVE_PROMPT_BYTES = 1024  # DiffusionParams.negative_prompt
# Sides the API parses (a DiffusionParams side is a u16). What a model supports — sides
# that are multiples of its VAE's scale factor from its min_size to its max_size — the
# gateway checks against the model's manifest (D51): a 400 that names those limits.
MAX_IMAGE_SIDE = 65535
MAX_DIFFUSION_STEPS = 500  # DiffusionParams.steps
MAX_GUIDANCE = 100.0  # DiffusionParams.guidance_milli / 1000
MAX_PROMPT_IDS = MAX_TOKENS_LIMIT * 4
TOKEN_ID_LIMIT = 1 << 32  # token ids are unsigned 32-bit
SEED_LIMIT = 1 << 64  # seeds are unsigned 64-bit
_SIZE = re.compile(r"([0-9]{1,5})x([0-9]{1,5})\Z")

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
    temperature = fields.number("temperature", 0.0, MAX_TEMPERATURE, DEFAULT_TEMPERATURE)
    top_p = fields.number("top_p", 0.0, MAX_TOP_P, DEFAULT_TOP_P)
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
    """``stop``: a string or a list of up to MAX_STOP_STRINGS non-empty strings of at most
    MAX_STOP_BYTES bytes."""
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
    inner = Fields(options, STREAM_OPTION_FIELDS, "stream_options.")
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
    if any(not 0 <= t < TOKEN_ID_LIMIT for t in ids):
        raise invalid(f"token ids must be from 0 to {TOKEN_ID_LIMIT - 1}", "prompt")
    return list(ids)


CHAT_ROLES = ("system", "developer", "user", "assistant")
MESSAGE_FIELDS = frozenset({"role", "content", "name"})
STREAM_OPTION_FIELDS = frozenset({"include_usage", "include_obfuscation"})


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
    fields = Fields(value, MESSAGE_FIELDS, f"{where}.")
    role = fields.text("role", required=True)
    if role not in CHAT_ROLES:
        raise invalid(
            f"{where}.role must be one of {', '.join(CHAT_ROLES)} (tools are not supported)",
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


# -- images ------------------------------------------------------------------------------


def image_request(fields: Fields, info: ModelInfo, caller: Caller) -> ImageRequest:
    """The job of an images request for model ``info`` (ApiError 400 for a bad field)."""
    prompt = fields.text("prompt", required=True, max_chars=MAX_IMAGE_PROMPT_CHARS)
    if not prompt.strip():
        raise invalid("prompt must not be empty", "prompt")
    fields.integer("n", 1, 1)
    for key, (allowed, default) in IMAGE_CHOICES.items():
        fields.choice(key, allowed, default)
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
    """``size`` "WIDTHxHEIGHT": sides from 1 to MAX_IMAGE_SIDE (None: the model's
    default); the gateway checks them against the model's own limits."""
    text = fields.text("size", default="auto")
    if text == "auto":
        return None
    match = _SIZE.match(text)
    if not match:
        raise invalid(f"size must be 'WIDTHxHEIGHT' such as '256x256', got {show(text)}", "size")
    width, height = int(match[1]), int(match[2])
    for side in (width, height):
        if not 1 <= side <= MAX_IMAGE_SIDE:
            raise invalid(f"image sides must be from 1 to {MAX_IMAGE_SIDE}, got {text}", "size")
    return width, height


# -- what the LLM routes accept -------------------------------------------------------------


RESPONSE_FORMATS = ("text",)  # no JSON mode: a worker's output is not constrained


def check_response_format(fields: Fields) -> None:
    value = fields.raw("response_format")
    if value is None:
        return
    if not isinstance(value, dict):
        raise invalid("response_format must be an object", "response_format")
    inner = Fields(value, frozenset({"type"}), "response_format.")
    inner.choice("type", RESPONSE_FORMATS, "text")


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
# The image fields that name one of a few choices: (allowed, default). Whatever is asked,
# the answer is one base64 PNG.
IMAGE_CHOICES = {
    "response_format": (("b64_json",), "b64_json"),
    "quality": (("standard", "auto"), "auto"),
    "style": (("natural", "vivid"), "natural"),
    "output_format": (("png",), "png"),
}
