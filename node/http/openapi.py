"""The OpenAPI 3.1 document of the gateway's HTTP API (served at ``GET /openapi.json``).

Written by hand from the routes in ``node/api.py`` so that it says what the API really
accepts: the request schemas list the fields the handlers read, with the same ranges.
"""

from __future__ import annotations

import copy
from functools import cache

__all__ = ["NODE_PATHS", "openapi_document"]

VERSION = "0.1.0"
# Routes a running node adds to the app (node/chain_api.py); the rest come from build_app.
NODE_PATHS = frozenset({"/api/v1/accounts/{address}", "/api/v1/txs"})

_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}

_STOP = {
    "description": "Up to 4 strings (1 to 64 bytes) that end generation; not included.",
    "oneOf": [
        {"type": "string", "minLength": 1},
        {"type": "array", "items": {"type": "string", "minLength": 1}, "maxItems": 4},
        {"type": "null"},
    ],
}

_SAMPLING = {
    "model": {"type": "string", "description": "Model id (sha256:...) or name."},
    "max_tokens": {"type": ["integer", "null"], "minimum": 1, "maximum": 8192},
    "temperature": {"type": ["number", "null"], "minimum": 0, "maximum": 2, "default": 1},
    "top_p": {"type": ["number", "null"], "minimum": 0, "maximum": 1, "default": 1},
    "top_k": {"type": ["integer", "null"], "minimum": 0, "description": "0: off."},
    "n": {"type": ["integer", "null"], "const": 1},
    "seed": {"type": ["integer", "null"], "minimum": 0, "maximum": 18446744073709551615},
    "stop": _STOP,
    "stream": {"type": ["boolean", "null"], "default": False},
    "stream_options": {
        "type": ["object", "null"],
        "properties": {"include_usage": {"type": "boolean"}},
        "additionalProperties": False,
    },
    "user": {"type": ["string", "null"], "maxLength": 256},
    "presence_penalty": {"type": ["number", "null"], "const": 0},
    "frequency_penalty": {"type": ["number", "null"], "const": 0},
    "logit_bias": {"type": ["object", "null"], "maxProperties": 0},
}

_AIPG = {
    "type": "object",
    "description": "Where to follow the job: GET /api/v1/jobs/{job_id}.",
    "properties": {"job_id": {"type": "string"}, "worker": {"type": "string"}},
}

_USAGE = {
    "type": "object",
    "properties": {
        "prompt_tokens": {"type": "integer"},
        "completion_tokens": {"type": "integer"},
        "total_tokens": {"type": "integer"},
    },
}

_MESSAGE = {
    "type": "object",
    "required": ["role", "content"],
    "additionalProperties": False,
    "properties": {
        "role": {"enum": ["system", "developer", "user", "assistant"]},
        "name": {"type": "string", "maxLength": 256},
        "content": {
            "oneOf": [
                {"type": "string"},
                {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["type", "text"],
                        "properties": {"type": {"const": "text"}, "text": {"type": "string"}},
                    },
                },
            ]
        },
    },
}

_SCHEMAS = {
    "Error": _ERROR,
    "Model": {
        "type": "object",
        "required": ["id", "object", "created", "owned_by"],
        "properties": {
            "id": {"type": "string", "description": "sha256:<hex> of the model manifest"},
            "object": {"const": "model"},
            "created": {"type": "integer"},
            "owned_by": {"type": "string"},
            "name": {"type": "string"},
            "kind": {"enum": ["llm", "diffusion"]},
            "context_length": {"type": "integer"},
        },
    },
    "ModelList": {
        "type": "object",
        "properties": {
            "object": {"const": "list"},
            "data": {"type": "array", "items": {"$ref": "#/components/schemas/Model"}},
        },
    },
    "CompletionRequest": {
        "type": "object",
        "required": ["model", "prompt"],
        "additionalProperties": False,
        "properties": {
            **_SAMPLING,
            "prompt": {
                "description": "Text, token ids, or a list holding one of those.",
                "oneOf": [
                    {"type": "string"},
                    {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 1},
                    {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 1},
                    {
                        "type": "array",
                        "minItems": 1,
                        "maxItems": 1,
                        "items": {"type": "array", "items": {"type": "integer", "minimum": 0}},
                    },
                ],
            },
            "echo": {"type": ["boolean", "null"], "const": False},
            "best_of": {"type": ["integer", "null"], "const": 1},
            "logprobs": {"type": ["integer", "null"], "const": 0},
            "suffix": {"type": ["string", "null"], "const": ""},
        },
    },
    "Completion": {
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "object": {"const": "text_completion"},
            "created": {"type": "integer"},
            "model": {"type": "string"},
            "choices": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "index": {"type": "integer"},
                        "text": {"type": "string"},
                        "finish_reason": {"enum": ["stop", "length"]},
                    },
                },
            },
            "usage": _USAGE,
            "aipg": _AIPG,
        },
    },
    "ChatCompletionRequest": {
        "type": "object",
        "required": ["model", "messages"],
        "additionalProperties": False,
        "properties": {
            **_SAMPLING,
            "messages": {"type": "array", "items": _MESSAGE, "minItems": 1, "maxItems": 256},
            "max_completion_tokens": {"type": ["integer", "null"], "minimum": 1, "maximum": 8192},
            "logprobs": {"type": ["boolean", "null"], "const": False},
            "response_format": {
                "type": ["object", "null"],
                "properties": {"type": {"const": "text"}},
            },
            "tools": {"type": ["array", "null"], "maxItems": 0},
            "tool_choice": {"enum": ["none", "auto", None]},
        },
    },
    "ChatCompletion": {
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "object": {"const": "chat.completion"},
            "created": {"type": "integer"},
            "model": {"type": "string"},
            "choices": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "index": {"type": "integer"},
                        "message": {
                            "type": "object",
                            "properties": {
                                "role": {"const": "assistant"},
                                "content": {"type": "string"},
                            },
                        },
                        "finish_reason": {"enum": ["stop", "length"]},
                    },
                },
            },
            "usage": _USAGE,
            "aipg": _AIPG,
        },
    },
    "ImageRequest": {
        "type": "object",
        "required": ["prompt"],
        "additionalProperties": False,
        "properties": {
            "prompt": {"type": "string", "minLength": 1, "maxLength": 4000},
            "model": {"type": ["string", "null"], "description": "Default: a diffusion model."},
            "n": {"type": ["integer", "null"], "const": 1},
            "size": {
                "type": ["string", "null"],
                "pattern": "^(auto|[0-9]+x[0-9]+)$",
                "description": "WIDTHxHEIGHT, multiples of 8 the model supports; auto: default.",
            },
            "response_format": {"enum": ["b64_json", None]},
            "steps": {"type": ["integer", "null"], "minimum": 1, "maximum": 500},
            "guidance_scale": {"type": ["number", "null"], "minimum": 0, "maximum": 100},
            "seed": {"type": ["integer", "null"], "minimum": 0, "maximum": 18446744073709551615},
            "negative_prompt": {"type": ["string", "null"]},
            "quality": {"enum": ["standard", "auto", None]},
            "style": {"enum": ["natural", "vivid", None]},
            "output_format": {"enum": ["png", None]},
            "user": {"type": ["string", "null"], "maxLength": 256},
        },
    },
    "ImagesResponse": {
        "type": "object",
        "properties": {
            "created": {"type": "integer"},
            "data": {
                "type": "array",
                "items": {"type": "object", "properties": {"b64_json": {"type": "string"}}},
            },
            "aipg": _AIPG,
        },
    },
    "Account": {
        "type": "object",
        "properties": {
            "address": {"type": "string"},
            "balance": {"type": "string", "description": "AIPG, e.g. '12.5'"},
            "balance_units": {"type": "integer", "description": "base units (1 AIPG = 1e8)"},
            "bonded": {"type": "string"},
            "bonded_units": {"type": "integer"},
            "unbonding": {"type": "string"},
            "unbonding_units": {"type": "integer"},
            "next_nonce": {"type": "integer"},
            "height": {"type": "integer"},
        },
    },
    "TxRequest": {
        "type": "object",
        "required": ["tx"],
        "properties": {
            "tx": {"type": "string", "contentEncoding": "base64", "description": "signed tx"}
        },
    },
    "TxAccepted": {
        "type": "object",
        "properties": {"tx_id": {"type": "string"}, "accepted": {"const": True}},
    },
    "Job": {
        "type": "object",
        "description": "Status, receipt, verdicts, certificate and block height of a job.",
        "additionalProperties": True,
    },
    "Status": {
        "type": "object",
        "description": "Peers, height, finalized block, validators, hosted models, queue.",
        "additionalProperties": True,
    },
}


def _error(description: str, retry_after: bool = False) -> dict:
    response: dict = {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }
    if retry_after:
        response["headers"] = {
            "Retry-After": {"description": "Seconds to wait", "schema": {"type": "integer"}}
        }
    return response


def _ok(schema: str, description: str = "OK", stream: bool = False) -> dict:
    content: dict = {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}}
    if stream:
        content["text/event-stream"] = {
            "schema": {"type": "string", "description": "data: <chunk JSON> events, then [DONE]"}
        }
    return {"description": description, "content": content}


_JOB_ERRORS = {
    "400": _error("Invalid request (field named in error.param)"),
    "401": _error("Unknown API key"),
    "402": _error("The paid account cannot cover the fee"),
    "404": _error("Unknown model"),
    "408": _error("The request body did not arrive in time"),
    "413": _error("Request body too large"),
    "415": _error("Content-Type is not application/json"),
    "429": _error("Free-tier rate limit", retry_after=True),
    "502": _error("No worker produced a result"),
    "503": _error("The network is busy", retry_after=True),
}


def _job_route(summary: str, request: str, response: str, stream: bool) -> dict:
    return {
        "post": {
            "summary": summary,
            "security": [{}, {"bearer": []}],
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": {"$ref": f"#/components/schemas/{request}"}}
                },
            },
            "responses": {"200": _ok(response, stream=stream), **_JOB_ERRORS},
        }
    }


def _get(summary: str, responses: dict) -> dict:
    return {"get": {"summary": summary, "responses": responses}}


_PATHS = {
    "/v1/models": _get("Models jobs can be sent to", {"200": _ok("ModelList")}),
    "/v1/models/{model}": {
        "parameters": [
            {"name": "model", "in": "path", "required": True, "schema": {"type": "string"}}
        ],
        **_get("One model", {"200": _ok("Model"), "404": _error("Unknown model")}),
    },
    "/v1/completions": _job_route(
        "Complete a prompt (OpenAI-compatible)", "CompletionRequest", "Completion", True
    ),
    "/v1/chat/completions": _job_route(
        "Chat completion (OpenAI-compatible)", "ChatCompletionRequest", "ChatCompletion", True
    ),
    "/v1/images/generations": _job_route(
        "Generate an image (OpenAI-compatible, b64_json)", "ImageRequest", "ImagesResponse", False
    ),
    "/api/v1/jobs/{job_id}": {
        "parameters": [
            {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}
        ],
        **_get(
            "A job's status, receipt, verdicts, certificate and block",
            {"200": _ok("Job"), "400": _error("Not a job id"), "404": _error("Unknown job")},
        ),
    },
    "/api/v1/status": _get("Node status", {"200": _ok("Status")}),
    # The chain routes are added by node/chain_api.py on a running node.
    "/api/v1/accounts/{address}": {
        "parameters": [
            {"name": "address", "in": "path", "required": True, "schema": {"type": "string"}}
        ],
        **_get(
            "An account's balance, bond, unbonding and next nonce",
            {"200": _ok("Account"), "400": _error("Not an account address")},
        ),
    },
    "/api/v1/txs": {
        "post": {
            "summary": "Submit a signed transaction (checked against the ledger, gossiped)",
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/TxRequest"}}
                },
            },
            "responses": {
                "200": _ok("TxAccepted"),
                "400": _error("Not a transaction, or refused by the ledger (code tx_refused)"),
                "413": _error("Request body too large"),
            },
        }
    },
    "/metrics": _get(
        "Prometheus metrics",
        {
            "200": {
                "description": "Prometheus text exposition format 0.0.4",
                "content": {"text/plain": {"schema": {"type": "string"}}},
            }
        },
    ),
    "/openapi.json": _get(
        "This document",
        {"200": {"description": "OpenAPI 3.1", "content": {"application/json": {}}}},
    ),
}


@cache
def _document() -> dict:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "aipg-node gateway API",
            "version": VERSION,
            "description": (
                "OpenAI-compatible completions, chat and images served by the AI Power Grid "
                "network, plus native job and status routes. Free tier: no key (or the key "
                "'free'), rate-limited per client address. Paid tier: "
                "Authorization: Bearer <api key>."
            ),
        },
        "paths": _PATHS,
        "components": {
            "schemas": _SCHEMAS,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


def openapi_document() -> dict:
    """The document as a fresh dict (callers may change their copy)."""
    return copy.deepcopy(_document())
