"""The OpenAPI 3.1 document of the HTTP API (served at ``GET /openapi.json``).

Built from what the handlers check: every limit is a constant of :mod:`.params`,
:mod:`.request` or :mod:`.routes_chain`, and each request schema lists the parser's own
field set (tests/node/test_openapi.py holds the two equal), so the document says what the
API really accepts. It covers the app's routes and the chain routes a node adds.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

from . import params
from .request import FREE_TIER_KEY, MAX_API_KEY_CHARS
from .routes_chain import MAX_HEIGHT_DIGITS, MAX_TX_BODY

__all__ = ["openapi_document"]

VERSION = "0.1.0"

# -- small builders -----------------------------------------------------------------------

_STR = {"type": "string"}
_INT = {"type": "integer"}
_NONEMPTY = {"type": "string", "minLength": 1}
_NOT_SUPPORTED = "Not supported: accepted only at a value that changes nothing."


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _object(properties: dict, required: Iterable[str] = (), closed: bool = False) -> dict:
    """An object schema; ``closed``: other fields are refused (as ``Fields`` does)."""
    schema: dict = {"type": "object", "properties": properties}
    if required:
        schema["required"] = list(required)
    if closed:
        schema["additionalProperties"] = False
    return schema


def _optional(schema: dict) -> dict:
    """``schema`` or JSON null (``Fields`` takes null as absent)."""
    return {**schema, "type": [schema["type"], "null"]}


def _range(kind: str, lo: float, hi: float, **extra: Any) -> dict:
    """An optional field checked by ``Fields.integer`` or ``Fields.number(key, lo, hi)``."""
    return {"type": [kind, "null"], "minimum": lo, "maximum": hi, **extra}


def _text(max_chars: int, description: str) -> dict:
    return {"type": ["string", "null"], "maxLength": max_chars, "description": description}


def _choice(allowed: Iterable[str], default: str) -> dict:
    """A field checked by ``Fields.choice(key, allowed, default)``."""
    return {"enum": [*allowed, None], "default": default}


def _neutral(accepted: Iterable[tuple[str, tuple]]) -> dict:
    """OpenAI's fields a route takes only at a value that changes nothing (NEUTRAL_*)."""
    properties = {}
    for key, values in accepted:
        unique = [v for i, v in enumerate(values) if v not in values[:i]]  # 0 and 0.0 are one
        properties[key] = {"enum": [*unique, None], "description": _NOT_SUPPORTED}
    return properties


def _array(items: dict, lo: int = 0, hi: int | None = None, **extra: Any) -> dict:
    """An array of ``lo`` to ``hi`` (None: any number of) ``items``."""
    schema: dict = {"type": "array", "items": items, **extra}
    if lo:
        schema["minItems"] = lo
    if hi is not None:
        schema["maxItems"] = hi
    return schema


def _opaque(description: str) -> dict:
    """An object whose fields this document does not list."""
    return {"type": "object", "description": description}


# -- schemas ------------------------------------------------------------------------------

_SEED = _range("integer", 0, params.SEED_LIMIT - 1)
_USER = _text(params.MAX_NAME_CHARS, "The caller's own id for its end user; not used.")
_TOKEN_ID = {"type": "integer", "minimum": 0, "maximum": params.TOKEN_ID_LIMIT - 1}
_TOKEN_IDS = _array(_TOKEN_ID, 1, params.MAX_PROMPT_IDS)
_STOP = {
    "description": (
        f"Up to {params.MAX_STOP_STRINGS} strings ({params.MAX_STOP_BYTES} bytes at most) "
        "that end generation; not included in the text."
    ),
    "oneOf": [_NONEMPTY, _array(_NONEMPTY, hi=params.MAX_STOP_STRINGS), {"type": "null"}],
}
_STREAM_OPTIONS = _object(  # params.STREAM_OPTION_FIELDS
    {
        "include_usage": {"type": ["boolean", "null"]},
        **_neutral([("include_obfuscation", (False,))]),
    },
    closed=True,
)

# The fields completions and chat share (params.COMMON_LLM_FIELDS, less the neutral ones).
_SAMPLING = {
    "model": {"type": "string", "maxLength": params.MAX_NAME_CHARS, "description": "Id or name"},
    "max_tokens": _range("integer", 1, params.MAX_TOKENS_LIMIT),
    "temperature": _range("number", 0, params.MAX_TEMPERATURE, default=params.DEFAULT_TEMPERATURE),
    "top_p": _range("number", 0, params.MAX_TOP_P, default=params.DEFAULT_TOP_P),
    "top_k": _range("integer", 0, params.MAX_TOP_K, description="0: off."),
    "n": _range("integer", 1, 1),
    "seed": _SEED,
    "stop": _STOP,
    "stream": {"type": ["boolean", "null"], "default": False},
    "stream_options": _optional(_STREAM_OPTIONS) | {"description": "Only with stream: true."},
    "user": _USER,
}

_AIPG = _object({"job_id": _STR, "worker": _STR}) | {
    "description": "Where to follow the job: GET /api/v1/jobs/{job_id}."
}
_USAGE = _object({"prompt_tokens": _INT, "completion_tokens": _INT, "total_tokens": _INT})
_TEXT_PART = _object(
    {"type": {"const": "text"}, "text": _STR}, required=["type", "text"], closed=True
)
_MESSAGE = _object(  # params.MESSAGE_FIELDS
    {
        "role": {"enum": list(params.CHAT_ROLES)},
        "name": {"type": "string", "maxLength": params.MAX_NAME_CHARS},
        "content": {"oneOf": [_STR, {"type": "array", "items": _TEXT_PART}]},
    },
    required=["role", "content"],
    closed=True,
)
_SIZE = {
    "type": ["string", "null"],
    "pattern": "^(auto|[0-9]+x[0-9]+)$",
    "default": "auto",
    "description": (
        f"WIDTHxHEIGHT, sides from 1 to {params.MAX_IMAGE_SIDE}; the model's own limits "
        "apply (multiples of its VAE scale factor from its min to its max size: a 400 "
        "names them); auto: the model's default."
    ),
}


def _completion(kind: str, choice: dict) -> dict:
    """A (chat) completion response: OpenAI's shape plus the ``aipg`` extension."""
    item = {"index": _INT, **choice, "finish_reason": {"enum": ["stop", "length"]}}
    return _object(
        {
            "id": _STR,
            "object": {"const": kind},
            "created": _INT,
            "model": _STR,
            "choices": {"type": "array", "items": _object(item)},
            "usage": _USAGE,
            "aipg": _AIPG,
        }
    )


_SCHEMAS = {
    "Error": _object(
        {
            "error": _object(
                {"message": _STR, "type": _STR, "param": _optional(_STR), "code": _optional(_STR)},
                required=["message", "type", "param", "code"],
            )
        },
        required=["error"],
    ),
    "Model": _object(
        {
            "id": {"type": "string", "description": "sha256:<hex> of the model manifest"},
            "object": {"const": "model"},
            "created": _INT,
            "owned_by": _STR,
            "name": _STR,
            "kind": {"enum": ["llm", "diffusion"]},
            "context_length": _INT,
        },
        required=["id", "object", "created", "owned_by"],
    ),
    "ModelList": _object({"object": {"const": "list"}, "data": _array(_ref("Model"))}),
    "CompletionRequest": _object(  # params.COMPLETION_FIELDS
        {
            **_SAMPLING,
            "prompt": {
                "description": "Text, token ids, or a list holding one of those.",
                "oneOf": [_STR, _TOKEN_IDS, _array(_STR, 1, 1), _array(_TOKEN_IDS, 1, 1)],
            },
            **_neutral(params.NEUTRAL_COMPLETION),
        },
        required=["model", "prompt"],
        closed=True,
    ),
    "Completion": _completion("text_completion", {"text": _STR}),
    "ChatCompletionRequest": _object(  # params.CHAT_FIELDS
        {
            **_SAMPLING,
            "messages": _array(_MESSAGE, 1, params.MAX_MESSAGES),
            "max_completion_tokens": _range("integer", 1, params.MAX_TOKENS_LIMIT),
            "response_format": _optional(
                _object({"type": _choice(params.RESPONSE_FORMATS, "text")}, closed=True)
            ),
            **_neutral(params.NEUTRAL_CHAT),
        },
        required=["model", "messages"],
        closed=True,
    ),
    "ChatCompletion": _completion(
        "chat.completion",
        {"message": _object({"role": {"const": "assistant"}, "content": _STR})},
    ),
    "ImageRequest": _object(  # params.IMAGE_FIELDS
        {
            "prompt": _NONEMPTY | {"maxLength": params.MAX_IMAGE_PROMPT_CHARS},
            "model": _text(params.MAX_NAME_CHARS, "Default: a diffusion model served here."),
            "n": _range("integer", 1, 1),
            "size": _SIZE,
            **{key: _choice(*choices) for key, choices in params.IMAGE_CHOICES.items()},
            "steps": _range("integer", 1, params.MAX_DIFFUSION_STEPS),
            "guidance_scale": _range("number", 0, params.MAX_GUIDANCE, default=None),
            "seed": _SEED,
            "negative_prompt": _optional(_STR)
            | {"description": f"At most {params.MAX_NEGATIVE_PROMPT_BYTES} bytes of UTF-8."},
            "user": _USER,
        },
        required=["prompt"],
        closed=True,
    ),
    "ImagesResponse": _object(
        {
            "created": _INT,
            "data": _array(
                _object({"b64_json": _STR}), 1, 1, description="the image, a base64 PNG"
            ),
            "aipg": _AIPG,
        }
    ),
    "Job": _opaque("Status, receipt, verdicts, certificate and block height of a job."),
    "Status": _opaque("Peers, height, finalized block, validators, hosted models, queue."),
    # The chain routes (routes_chain.py).
    "Account": _object(
        {
            "address": _STR,
            "balance": {"type": "string", "description": "AIPG, e.g. '12.5'"},
            "balance_units": {"type": "integer", "description": "base units"},
            "bonded": _STR,
            "bonded_units": _INT,
            "unbonding": _STR,
            "unbonding_units": _INT,
            "next_nonce": _INT,
            "height": _INT,
            "downtime_jailed_until": {
                "type": ["integer", "null"],
                "description": "jailed for downtime: UNJAIL is valid from this height",
            },
        }
    ),
    "TxRequest": _object(
        {"tx": {"type": "string", "contentEncoding": "base64", "description": "a signed tx"}},
        required=["tx"],
    ),
    "TxAccepted": _object({"tx_id": _STR, "accepted": {"const": True}}),
    "Block": _object(
        {
            "height": _INT,
            "hash": {"type": "string", "description": "hex"},
            "parent_hash": {"type": "string", "description": "hex"},
            "time_ms": _INT,
            "proposer": {"type": "string", "description": "the proposer's public key, hex"},
            "vrf_proof": {
                "type": "string",
                "description": "the proposer's ECVRF proof over the previous beacon, hex",
            },
            "transactions": {"type": "integer", "description": "how many"},
            "certificates": _array(_STR, description="job ids of the certified receipts, hex"),
            "frauds": _array(_STR, description="job ids of the fraud proofs, hex"),
            "double_signs": _array(_STR, description="public keys of the double signers, hex"),
            "equivocations": _array(_STR, description="jobs whose worker signed two results"),
            "commit_signers": {"type": "integer", "description": "precommits in its commit"},
        }
    ),
    "PublishRequest": _object(
        {"path": _NONEMPTY | {"description": "a model directory"}},
        required=["path"],
    ),
    "PublishedModel": _object(
        {
            "model_id": {"type": "string", "description": "sha256:<hex> of the manifest"},
            "name": _STR,
            "kind": {"enum": ["llm", "diffusion"]},
        }
    ),
}

# -- paths --------------------------------------------------------------------------------


def _json(schema: str) -> dict:
    return {"application/json": {"schema": _ref(schema)}}


def _error(description: str, retry_after: bool = False) -> dict:
    response: dict = {"description": description, "content": _json("Error")}
    if retry_after:
        response["headers"] = {"Retry-After": {"description": "Seconds to wait", "schema": _INT}}
    return response


def _ok(schema: str, stream: bool = False) -> dict:
    content = _json(schema)
    if stream:
        content["text/event-stream"] = {
            "schema": {"type": "string", "description": "data: <chunk JSON> events, then [DONE]"}
        }
    return {"description": "OK", "content": content}


def _body(schema: str) -> dict:
    return {"required": True, "content": _json(schema)}


_BODY_ERRORS = {
    "408": _error("The request body did not arrive in time"),
    "415": _error("Content-Type is not application/json"),
}
_JOB_ERRORS = {
    "400": _error("Invalid request (field named in error.param)"),
    "401": _error("Unknown API key"),
    "402": _error("The paid account cannot cover the fee"),
    "404": _error("Unknown model"),
    "413": _error("Request body too large"),
    **_BODY_ERRORS,
    "429": _error("Free-tier rate limit", retry_after=True),
    "502": _error("No worker produced a result"),
    "503": _error("The network is busy", retry_after=True),
}
_SMALL_BODY_ERRORS = {"413": _error(f"Request body over {MAX_TX_BODY} bytes"), **_BODY_ERRORS}


def _job_route(summary: str, body: str, response: str, stream: bool) -> dict:
    return {
        "post": {
            "summary": summary,
            "security": [{}, {"bearer": []}],
            "requestBody": _body(body),
            "responses": {"200": _ok(response, stream=stream), **_JOB_ERRORS},
        }
    }


def _get(summary: str, responses: dict, **path_params: dict) -> dict:
    """A GET route; ``path_params``: the schema of each ``{name}`` in its path."""
    route: dict = {"get": {"summary": summary, "responses": responses}}
    if path_params:
        route["parameters"] = [
            {"name": name, "in": "path", "required": True, "schema": schema}
            for name, schema in path_params.items()
        ]
    return route


def _post(summary: str, body: str, responses: dict) -> dict:
    return {"post": {"summary": summary, "requestBody": _body(body), "responses": responses}}


_PATHS = {
    "/v1/models": _get("Models jobs can be sent to", {"200": _ok("ModelList")}),
    "/v1/models/{model}": _get(
        "One model", {"200": _ok("Model"), "404": _error("Unknown model")}, model=_STR
    ),
    "/v1/completions": _job_route(
        "Complete a prompt (OpenAI-compatible)", "CompletionRequest", "Completion", True
    ),
    "/v1/chat/completions": _job_route(
        "Chat completion (OpenAI-compatible)", "ChatCompletionRequest", "ChatCompletion", True
    ),
    "/v1/images/generations": _job_route(
        "Generate an image (OpenAI-compatible, b64_json)", "ImageRequest", "ImagesResponse", False
    ),
    "/api/v1/jobs/{job_id}": _get(
        "A job's status, receipt, verdicts, certificate and block",
        {"200": _ok("Job"), "400": _error("Not a job id"), "404": _error("Unknown job")},
        job_id=_STR,
    ),
    "/api/v1/status": _get("Node status", {"200": _ok("Status")}),
    "/api/v1/accounts/{address}": _get(
        "An account's balance, bond, unbonding and next nonce",
        {"200": _ok("Account"), "400": _error("Not an account address")},
        address=_STR,
    ),
    "/api/v1/txs": _post(
        "Submit a signed transaction (checked against the ledger, gossiped)",
        "TxRequest",
        {
            "200": _ok("TxAccepted"),
            "400": _error("Not a transaction, or refused by the ledger (code tx_refused)"),
            **_SMALL_BODY_ERRORS,
        },
    ),
    "/api/v1/blocks/{height}": _get(
        "A finalized block: its header, what it holds, and how many signed its commit",
        {
            "200": _ok("Block"),
            "400": _error("Not a block height"),
            "404": _error("No finalized block at that height (code block_not_found)"),
        },
        height={"type": "string", "pattern": f"^[0-9]{{1,{MAX_HEIGHT_DIGITS}}}$"},
    ),
    "/api/v1/models/publish": _post(
        "Store, host and announce a model directory (from the node's own machine only)",
        "PublishRequest",
        {
            "200": _ok("PublishedModel"),
            "400": _error("No path, or the directory cannot be published (the reason says why)"),
            "403": _error("The request did not come from the node's own machine"),
            **_SMALL_BODY_ERRORS,
        },
    ),
    "/metrics": _get(
        "Prometheus metrics",
        {
            "200": {
                "description": "Prometheus text exposition format",
                "content": {"text/plain": {"schema": _STR}},
            }
        },
    ),
    "/openapi.json": _get(
        "This document",
        {"200": {"description": "OpenAPI 3.1", "content": {"application/json": {}}}},
    ),
}

_BEARER = {
    "type": "http",
    "scheme": "bearer",
    "description": f"An API key of up to {MAX_API_KEY_CHARS} printable ASCII characters.",
}


_DOCUMENT = {
    "openapi": "3.1.0",
    "info": {
        "title": "aipg-node gateway API",
        "version": VERSION,
        "description": (
            "OpenAI-compatible completions, chat and images served by the AI Power Grid "
            "network, plus native job, status and chain routes. Free tier: no key (or "
            f"the key '{FREE_TIER_KEY}'), rate-limited per client address. Paid tier: "
            "Authorization: Bearer <api key>."
        ),
    },
    "paths": _PATHS,
    "components": {"schemas": _SCHEMAS, "securitySchemes": {"bearer": _BEARER}},
}


def openapi_document() -> dict:
    """The document as a fresh dict (callers may change their copy)."""
    return copy.deepcopy(_DOCUMENT)
