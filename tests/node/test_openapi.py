"""The OpenAPI document says what the parsers accept: the same fields, the same limits
(the constants of params.py, request.py and routes_chain.py), and every route served."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from openapi_spec_validator import validate

from aipg.node.http import openapi, params
from aipg.node.http.app import build_app
from aipg.node.http.openapi import openapi_document
from aipg.node.http.request import FREE_TIER_KEY, MAX_API_KEY_CHARS
from aipg.node.http.routes_chain import MAX_HEIGHT_DIGITS, MAX_TX_BODY, chain_routes
from aipg.testing.apikit import demo_models, make_gateway

__all__ = ["demo_models"]  # the fixture, imported for pytest

DOCUMENT = openapi_document()
SCHEMAS = DOCUMENT["components"]["schemas"]
LLM_REQUESTS = ("CompletionRequest", "ChatCompletionRequest")


def properties(schema: str) -> dict:
    return SCHEMAS[schema]["properties"]


def test_document_is_valid_openapi_3_1():
    validate(DOCUMENT)


@pytest.mark.parametrize(
    ("schema", "fields"),
    [
        ("CompletionRequest", params.COMPLETION_FIELDS),
        ("ChatCompletionRequest", params.CHAT_FIELDS),
        ("ImageRequest", params.IMAGE_FIELDS),
    ],
)
def test_request_schema_lists_exactly_the_fields_its_parser_accepts(schema, fields):
    assert set(properties(schema)) == fields
    assert SCHEMAS[schema]["additionalProperties"] is False  # Fields refuses the rest


def test_nested_objects_list_the_fields_their_parsers_accept():
    chat = properties("ChatCompletionRequest")
    message = chat["messages"]["items"]
    assert set(message["properties"]) == params.MESSAGE_FIELDS
    assert message["properties"]["role"]["enum"] == list(params.CHAT_ROLES)
    for schema in LLM_REQUESTS:
        stream_options = properties(schema)["stream_options"]
        assert set(stream_options["properties"]) == params.STREAM_OPTION_FIELDS
    response_format = chat["response_format"]["properties"]["type"]
    assert response_format["enum"] == [*params.RESPONSE_FORMATS, None]


@pytest.mark.parametrize(
    ("schema", "neutral"),
    [
        ("CompletionRequest", params.NEUTRAL_COMPLETION),
        ("ChatCompletionRequest", params.NEUTRAL_CHAT),
    ],
)
def test_neutral_fields_document_exactly_the_values_the_parser_accepts(schema, neutral):
    for key, accepted in neutral:
        documented = properties(schema)[key]["enum"]
        assert documented[-1] is None  # null is absent
        assert all(v in accepted for v in documented[:-1])
        assert all(v in documented for v in accepted)


def test_documented_limits_are_the_parsers_constants():
    for schema in LLM_REQUESTS:
        llm = properties(schema)
        assert llm["max_tokens"]["maximum"] == params.MAX_TOKENS_LIMIT
        assert llm["temperature"]["maximum"] == params.MAX_TEMPERATURE
        assert llm["temperature"]["default"] == params.DEFAULT_TEMPERATURE
        assert llm["top_p"]["maximum"] == params.MAX_TOP_P
        assert llm["top_p"]["default"] == params.DEFAULT_TOP_P
        assert llm["top_k"]["maximum"] == params.MAX_TOP_K
        assert llm["seed"]["maximum"] == params.SEED_LIMIT - 1
        assert llm["stop"]["oneOf"][1]["maxItems"] == params.MAX_STOP_STRINGS
        assert f"({params.MAX_STOP_BYTES} bytes at most)" in llm["stop"]["description"]
        assert llm["model"]["maxLength"] == llm["user"]["maxLength"] == params.MAX_NAME_CHARS
    chat = properties("ChatCompletionRequest")
    assert chat["max_completion_tokens"]["maximum"] == params.MAX_TOKENS_LIMIT
    assert chat["messages"]["maxItems"] == params.MAX_MESSAGES
    assert chat["messages"]["items"]["properties"]["name"]["maxLength"] == params.MAX_NAME_CHARS
    token_ids = properties("CompletionRequest")["prompt"]["oneOf"][1]
    assert token_ids["maxItems"] == params.MAX_PROMPT_IDS
    assert token_ids["items"]["maximum"] == params.TOKEN_ID_LIMIT - 1

    image = properties("ImageRequest")
    assert image["prompt"]["maxLength"] == params.MAX_IMAGE_PROMPT_CHARS
    assert image["steps"]["maximum"] == params.MAX_DIFFUSION_STEPS
    assert image["guidance_scale"]["maximum"] == params.MAX_GUIDANCE
    assert image["seed"]["maximum"] == params.SEED_LIMIT - 1
    assert image["model"]["maxLength"] == image["user"]["maxLength"] == params.MAX_NAME_CHARS
    size = f"sides from 1 to {params.MAX_IMAGE_SIDE}; the model's own limits apply"
    assert size in image["size"]["description"]
    assert f"{params.MAX_NEGATIVE_PROMPT_BYTES} bytes" in image["negative_prompt"]["description"]
    for key, (allowed, default) in params.IMAGE_CHOICES.items():
        assert image[key] == {"enum": [*allowed, None], "default": default}


def test_documented_chain_and_key_limits_are_their_constants():
    paths = DOCUMENT["paths"]
    for path in ("/api/v1/txs", "/api/v1/models/publish"):
        too_large = paths[path]["post"]["responses"]["413"]["description"]
        assert too_large == f"Request body over {MAX_TX_BODY} bytes"
    (height,) = paths["/api/v1/blocks/{height}"]["parameters"]
    assert height["schema"]["pattern"] == f"^[0-9]{{1,{MAX_HEIGHT_DIGITS}}}$"
    bearer = DOCUMENT["components"]["securitySchemes"]["bearer"]["description"]
    assert f"up to {MAX_API_KEY_CHARS} printable" in bearer
    assert f"'{FREE_TIER_KEY}'" in DOCUMENT["info"]["description"]


def test_openapi_module_writes_no_limit_of_its_own():
    """Numbers come from the parsers' constants: openapi.py writes only the bounds 0 and 1
    (least lengths and counts, n, the lowest temperature)."""
    tree = ast.parse(Path(openapi.__file__).read_text(encoding="utf-8"))
    numbers = {
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and type(node.value) in (int, float)
    }
    assert numbers <= {0, 1}


def test_document_has_every_route_and_method_the_app_serves(demo_models):
    gateway = make_gateway(demo_models)
    app = build_app(gateway, gateway, extra_routes=chain_routes(None, None), free_tier_per_minute=1)
    served = {
        (route.path.replace(":path}", "}"), method.lower())
        for route in app.routes
        for method in route.methods - {"HEAD"}
    }
    documented = {
        (path, method)
        for path, item in DOCUMENT["paths"].items()
        for method in item
        if method != "parameters"
    }
    assert documented == served
    for path, item in DOCUMENT["paths"].items():
        named = {p["name"] for p in item.get("parameters", [])}
        assert named == set(re.findall(r"\{(\w+)\}", path)), path
