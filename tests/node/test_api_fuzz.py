"""Hypothesis throws JSON bodies at every POST route: the answer is never a 5xx, and every
error is OpenAI's error shape. Requests go to the ASGI app in process (httpx's ASGI
transport), through the same middleware and handlers as over a socket."""

from __future__ import annotations

import urllib.parse

import httpx
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from aipg.testing.apikit import PAID_KEY, POOR_KEY, app_for, demo_models, make_gateway

__all__ = ["demo_models"]

LLM = "aipg-demo-llm"

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


def field(valid: st.SearchStrategy) -> st.SearchStrategy:
    """Mostly plausible values, sometimes anything at all."""
    return st.one_of(valid, valid, valid, json_values)


def mutated(base: dict, mutations: dict) -> st.SearchStrategy:
    """A valid ``base`` body with some fields replaced or added, or any JSON value."""
    changes = st.lists(st.sampled_from(sorted(mutations)), max_size=3, unique=True).flatmap(
        lambda keys: st.fixed_dictionaries({k: mutations[k] for k in keys})
    )
    bodies = st.builds(lambda change: {**base, **change}, changes)
    return st.one_of(bodies, bodies, bodies, json_values)


small_ints = st.integers(min_value=-1, max_value=12)
numbers = st.one_of(st.integers(-1, 3), st.floats(-0.5, 2.5, allow_nan=False))
texts = st.text(max_size=30)
models = st.sampled_from([LLM, LLM, LLM, "aipg-demo-diffusion", "nope", ""])
stops = st.one_of(texts, st.lists(texts, max_size=6))
text_parts = st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": texts}), max_size=2)
messages = st.lists(
    st.fixed_dictionaries(
        {"role": field(st.sampled_from(["system", "user", "assistant", "tool"]))},
        optional={"content": field(st.one_of(texts, text_parts)), "name": field(texts)},
    ),
    max_size=3,
)

sampling = {
    "model": field(models),
    "max_tokens": field(small_ints),
    "temperature": field(numbers),
    "top_p": field(numbers),
    "top_k": field(small_ints),
    "n": field(small_ints),
    "seed": field(st.integers(-1, 2**64)),
    "stop": field(stops),
    "stream": field(st.booleans()),
    "stream_options": field(st.fixed_dictionaries({"include_usage": st.booleans()})),
    "presence_penalty": field(numbers),
    "logit_bias": field(st.dictionaries(texts, small_ints, max_size=2)),
    "user": field(texts),
}
completion_bodies = mutated(
    {"model": LLM, "prompt": "hi", "max_tokens": 3},
    {
        **sampling,
        "prompt": field(st.one_of(texts, st.lists(small_ints, max_size=5), st.lists(texts))),
        "echo": field(st.booleans()),
        "best_of": field(small_ints),
    },
)
chat_bodies = mutated(
    {"model": LLM, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3},
    {
        **sampling,
        "messages": field(messages),
        "max_completion_tokens": field(small_ints),
        "response_format": field(st.fixed_dictionaries({"type": st.sampled_from(["text", "x"])})),
        "tools": field(st.lists(json_values, max_size=1)),
    },
)
image_bodies = mutated(
    {"prompt": "a cat", "size": "32x32", "steps": 1},
    {
        "prompt": field(texts),
        "model": field(st.sampled_from(["aipg-demo-diffusion", LLM, "nope"])),
        "size": field(st.sampled_from(["32x32", "64x40", "7x7", "33x32", "4096x8", "auto", ""])),
        "steps": field(st.integers(-1, 3)),
        "guidance_scale": field(numbers),
        "seed": field(st.integers(-1, 2**64)),
        "n": field(small_ints),
        "response_format": field(st.sampled_from(["b64_json", "url"])),
        "negative_prompt": field(texts),
    },
)
routes = st.one_of(
    st.tuples(st.just("/v1/completions"), completion_bodies),
    st.tuples(st.just("/v1/chat/completions"), chat_bodies),
    st.tuples(st.just("/v1/images/generations"), image_bodies),
)
keys = st.sampled_from([None, None, "free", PAID_KEY, PAID_KEY, POOR_KEY, "sk-wrong", ""])


@pytest.fixture(scope="module")
def fuzz_app(demo_models):
    return app_for(make_gateway(demo_models, max_in_flight=1_000), per_minute=1_000_000)


@settings(
    max_examples=250,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(route=routes, key=keys)
async def test_post_routes_never_answer_5xx(fuzz_app, route, key):
    path, body = route
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    transport = httpx.ASGITransport(app=fuzz_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://fuzz") as h:
        response = await h.post(path, json=body, headers=headers)
    event(f"{path} {response.status_code}")
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
    elif response.headers["content-type"].startswith("text/event-stream"):
        assert response.text.endswith("data: [DONE]\n\n")
    else:
        assert response.json()


@settings(max_examples=150, deadline=None)
@given(raw=st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
async def test_raw_bytes_never_answer_5xx(fuzz_app, raw):
    transport = httpx.ASGITransport(app=fuzz_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://fuzz") as h:
        for path in ("/v1/completions", "/v1/chat/completions", "/v1/images/generations"):
            response = await h.post(path, content=raw)
            assert 400 <= response.status_code < 500, response.text


@settings(max_examples=100, deadline=None)
@given(segment=st.text(min_size=1, max_size=80), key=st.text(max_size=40))
async def test_get_routes_never_answer_5xx(fuzz_app, segment, key):
    transport = httpx.ASGITransport(app=fuzz_app)
    quoted = urllib.parse.quote(segment, safe="/:")
    headers = {"Authorization": f"Bearer {key}"} if key.isascii() and key.isprintable() else {}
    async with httpx.AsyncClient(transport=transport, base_url="http://fuzz") as h:
        for path in (f"/api/v1/jobs/{quoted}", f"/v1/models/{quoted}"):
            response = await h.get(path, headers=headers)
            assert response.status_code in (200, 400, 404), response.text
            if response.status_code != 200:
                assert set(response.json()["error"]) == {"message", "type", "param", "code"}
