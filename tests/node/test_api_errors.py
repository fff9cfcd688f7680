"""The HTTP API refuses bad input in OpenAI's error shape: malformed and oversized bodies,
every field checked, unknown models and routes, gateway errors and bugs."""

from __future__ import annotations

import httpx
import openai
import pytest
import trio

from aipg.node.services.gateway_api import UnknownModel
from aipg.testing.apikit import app_for, running_api

from .apiclient import LLM, assert_error, client, http


async def test_malformed_bodies_are_400_in_openai_shape(api):
    async with http(api) as h:
        for raw in [
            b"{not json",
            b"[1, 2]",
            b'"text"',
            b"",
            b"null",
            b"\xff\xfe{}",
            b'{"model": "x", "prompt": NaN}',
            b"[" * 100_000,
        ]:
            response = await h.post(
                "/v1/completions", content=raw, headers={"Content-Type": "application/json"}
            )
            assert_error(response, 400)
        response = await h.post(
            "/v1/chat/completions", content=b"{}", headers={"Content-Type": "text/plain"}
        )
        assert_error(response, 415)


async def test_every_field_is_checked(api):
    base = {"model": LLM, "prompt": "x"}
    cases = [
        ({"max_tokens": "10"}, "max_tokens"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": 10.0}, "max_tokens"),
        ({"max_tokens": True}, "max_tokens"),
        ({"max_tokens": 9000}, "max_tokens"),
        ({"temperature": 2.5}, "temperature"),
        ({"temperature": "hot"}, "temperature"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": -1}, "top_k"),
        ({"n": 2}, "n"),
        ({"seed": -1}, "seed"),
        ({"seed": 2**64}, "seed"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"stop": [""]}, "stop"),
        ({"stop": "x" * 65}, "stop"),
        ({"stop": 5}, "stop"),
        ({"stream": "yes"}, "stream"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
        ({"presence_penalty": 0.5}, "presence_penalty"),
        ({"echo": True}, "echo"),
        ({"prompt": 5}, "prompt"),
        ({"prompt": ["a", "b"]}, "prompt"),
        ({"prompt": [1, -2]}, "prompt"),
        ({"model": 7}, "model"),
        ({"max_tokenz": 5}, "max_tokenz"),
    ]
    async with http(api) as h:
        for change, param in cases:
            response = await h.post("/v1/completions", json={**base, **change})
            assert_error(response, 400, param=param)
        chat = {"model": LLM, "messages": [{"role": "user", "content": "hi"}]}
        for change, param in [
            ({"messages": []}, "messages"),
            ({"messages": "hi"}, "messages"),
            ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].role"),
            ({"messages": [{"role": "user"}]}, "messages[0].content"),
            (
                {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
                "messages[0].content[0].type",
            ),
            ({"tools": [{"type": "function"}]}, "tools"),
            ({"response_format": {"type": "json_object"}}, "response_format.type"),
        ]:
            response = await h.post("/v1/chat/completions", json={**chat, **change})
            assert_error(response, 400, param=param)


async def test_lone_surrogates_are_refused_not_crashed_on(api):
    async with http(api) as h:
        raw = b'{"model": "aipg-demo-llm", "prompt": "\\ud800"}'
        response = await h.post("/v1/completions", content=raw)
        assert_error(response, 400, param="prompt")
        raw = b'{"model": "aipg-demo-llm", "prompt": "x", "\\udfff": 1}'
        assert_error(await h.post("/v1/completions", content=raw), 400)


async def test_unknown_model_is_404(api):
    with pytest.raises(openai.NotFoundError):
        await client(api).completions.create(model="no-such-model", prompt="x")
    async with http(api) as h:
        body = {"model": "sha256:" + "0" * 64, "messages": [{"role": "user", "content": "x"}]}
        assert_error(await h.post("/v1/chat/completions", json=body), 404, code="model_not_found")
        assert_error(await h.get("/v1/models/nope"), 404, code="model_not_found")


async def test_over_long_prompt_is_400_before_any_work(api, gateway):
    context = gateway.llm.context_length
    async with http(api) as h:
        long_prompt = " ".join(["grid"] * context)
        response = await h.post("/v1/completions", json={"model": LLM, "prompt": long_prompt})
        assert_error(response, 400, param="prompt", code="context_length_exceeded")
        chat = {"model": LLM, "messages": [{"role": "user", "content": long_prompt}]}
        response = await h.post("/v1/chat/completions", json=chat)
        assert_error(response, 400, param="messages", code="context_length_exceeded")
        ids = {"model": LLM, "prompt": [5] * (context - 10), "max_tokens": 11}
        response = await h.post("/v1/completions", json=ids)
        assert_error(response, 400, param="max_tokens", code="context_length_exceeded")
        # left out, max_tokens is cut to the room that is left
        del ids["max_tokens"]
        ids["prompt"] = [5] * (context - 3)
        ok = await h.post("/v1/completions", json=ids)
        assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] <= 3
    assert len(gateway.requests) == 1 and gateway.requests[0].max_tokens == 3


async def test_oversized_bodies_are_413(gateway):
    app = app_for(gateway, max_body_bytes=4096)
    async with running_api(app) as api, http(api) as h:
        body = {"model": LLM, "prompt": "x" * 5000}
        assert_error(await h.post("/v1/completions", json=body), 413, code="request_too_large")

        async def chunked():  # no Content-Length: the limit holds while reading
            yield b'{"model": "aipg-demo-llm", "prompt": "'
            for _ in range(10):
                yield b"x" * 1000
            yield b'"}'

        response = await h.post("/v1/completions", content=chunked())
        assert_error(response, 413)


async def test_a_body_that_trickles_in_is_408(gateway, autojump_clock):
    app = app_for(gateway, body_timeout_s=30)
    never = trio.Event()

    async def trickle():
        yield b'{"model": "aipg-demo-llm", '
        await never.wait()  # the client stalls; the virtual clock jumps to the deadline
        yield b'"prompt": "x"}'

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as h:
        start = trio.current_time()
        response = await h.post("/v1/completions", content=trickle())
    assert_error(response, 408, code="request_timeout")
    assert trio.current_time() - start == pytest.approx(30)


async def test_unknown_routes_and_methods_answer_in_the_error_shape(api):
    async with http(api) as h:
        assert_error(await h.get("/v1/engines"), 404, code="unknown_url")
        response = await h.get("/v1/completions")
        assert_error(response, 405)
        assert "POST" in response.headers["allow"]
        assert_error(await h.get("/api/v1/jobs/sha256:" + "a" * 64), 404, code="job_not_found")
        assert_error(await h.get("/api/v1/jobs/bad%20id!"), 400, param="job_id")


async def test_gateway_errors_from_any_call_are_mapped(gateway):
    def unknown(name: str):
        raise UnknownModel(f"no {name}")

    gateway.resolve_model = unknown
    async with running_api(app_for(gateway)) as api, http(api) as h:
        body = {"model": LLM, "prompt": "x"}
        assert_error(await h.post("/v1/completions", json=body), 404, code="model_not_found")


async def test_a_gateway_bug_is_a_500_in_the_error_shape(gateway, caplog):
    def broken_status() -> dict:
        raise RuntimeError("bug")

    gateway.status = broken_status
    async with running_api(app_for(gateway)) as api, http(api) as h:
        error = assert_error(await h.get("/api/v1/status"), 500)
        assert error["type"] == "server_error" and "bug" not in error["message"]
        assert (await h.get("/v1/models")).status_code == 200  # the server lives on
    assert any("RuntimeError: bug" in r.exc_text for r in caplog.records if r.exc_text)
