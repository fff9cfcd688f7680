"""The HTTP API end to end: Hypercorn on 127.0.0.1, the official OpenAI client and raw httpx,
against a gateway that runs the demo models through the real runners."""

from __future__ import annotations

import base64
import io
import json
import logging

import httpx
import openai
import pytest
import trio
import trio.testing
from openapi_spec_validator import validate
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from starlette.routing import Route

from aipg.models import SamplingParams
from aipg.node.http.app import ApiAddress, build_app, serve_api
from aipg.node.http.responses import json_response
from aipg.node.http.routes_chain import chain_routes
from aipg.node.services.gateway_api import JobFailed, UnknownModel
from aipg.testing.apikit import (
    PAID,
    PAID_KEY,
    POOR_KEY,
    PRICE_PER_TOKEN,
    FakeClock,
    app_for,
    demo_models,
    make_gateway,
    running_api,
)

__all__ = ["demo_models"]  # the fixture, imported for pytest

LLM = "aipg-demo-llm"


@pytest.fixture
def gateway(demo_models):
    return make_gateway(demo_models)


@pytest.fixture
async def api(gateway):
    async with running_api(app_for(gateway)) as address:
        yield address


def client(address: ApiAddress, key: str = "free") -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{address.url}/v1", api_key=key, max_retries=0)


def http(address: ApiAddress, **kwargs) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=address.url, timeout=30, **kwargs)


def assert_error(response: httpx.Response, status: int, *, param=None, code=None) -> dict:
    """The response is OpenAI's error shape with this status (and param / code)."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    if param is not None:
        assert error["param"] == param
    if code is not None:
        assert error["code"] == code
    return error


# -- OpenAI client ------------------------------------------------------------------------


async def test_models_are_listed_and_retrievable(api, gateway):
    models = await client(api).models.list()
    by_name = {m.name: m for m in models.data}
    assert set(by_name) == {"aipg-demo-llm", "aipg-demo-diffusion"}
    llm = by_name[LLM]
    assert llm.id.startswith("sha256:") and llm.kind == "llm"
    assert llm.context_length == gateway.llm.context_length
    assert (await client(api).models.retrieve(llm.id)).name == LLM


async def test_completion_is_the_runners_output(api, gateway):
    result = await client(api).completions.create(
        model=LLM, prompt="The grid", max_tokens=12, temperature=0.7, top_p=0.9, seed=42
    )
    prompt_ids = gateway.llm.tokenizer.encode("The grid")
    expected = gateway.llm.generate(
        prompt_ids, SamplingParams(temperature_milli=700, top_p_milli=900, max_tokens=12), 42
    )
    (choice,) = result.choices
    assert choice.text == expected.text
    assert choice.finish_reason == expected.finish_reason
    assert result.usage.prompt_tokens == len(prompt_ids)
    assert result.usage.completion_tokens == len(expected.token_ids)
    assert result.model == gateway.resolve_model(LLM).id
    assert result.object == "text_completion"
    job_id = result.model_extra["aipg"]["job_id"]
    async with http(api) as h:
        job = (await h.get(f"/api/v1/jobs/{job_id}")).json()
    assert job["status"] == "completed" and job["job_id"] == job_id


async def test_streamed_completion_adds_up_to_the_whole_completion(api):
    oa = client(api)
    whole = await oa.completions.create(model=LLM, prompt="Blocks", max_tokens=40, seed=7)
    chunks = [
        chunk
        async for chunk in await oa.completions.create(
            model=LLM, prompt="Blocks", max_tokens=40, seed=7, stream=True
        )
    ]
    assert len(chunks) > 2
    assert "".join(c.choices[0].text for c in chunks) == whole.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks][-1] == whole.choices[0].finish_reason
    assert all(c.choices[0].finish_reason is None for c in chunks[:-1])
    assert len({c.id for c in chunks}) == 1


async def test_chat_completion_and_its_stream_agree(api, gateway):
    oa = client(api)
    messages = [
        {"role": "system", "content": "You are terse."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Name a "},
                {"type": "text", "text": "validator."},
            ],
        },
    ]
    whole = await oa.chat.completions.create(
        model=LLM, messages=messages, max_tokens=20, seed=3, temperature=0
    )
    message = whole.choices[0].message
    assert message.role == "assistant" and message.content
    rendered = gateway.render_chat(
        None,
        [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Name a validator."},
        ],
    )
    assert gateway.requests[-1].prompt == rendered
    assert gateway.requests[-1].chat is True
    stream = await oa.chat.completions.create(
        model=LLM,
        messages=messages,
        max_completion_tokens=20,
        seed=3,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == message.content
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage
    assert chunks[-2].choices[0].finish_reason == whole.choices[0].finish_reason


async def test_stop_strings_cut_the_text_in_both_modes(api, gateway):
    oa = client(api)
    free_run = await oa.completions.create(model=LLM, prompt="a", max_tokens=30, seed=11)
    text = free_run.choices[0].text
    stop = text[5:7]  # a string the unstopped run is known to produce
    assert len(stop) == 2
    cut = await oa.completions.create(model=LLM, prompt="a", max_tokens=30, seed=11, stop=[stop])
    assert cut.choices[0].text == text[: text.find(stop)]
    assert cut.choices[0].finish_reason == "stop"
    chunks = await oa.completions.create(
        model=LLM, prompt="a", max_tokens=30, seed=11, stop=stop, stream=True
    )
    assert "".join([c.choices[0].text async for c in chunks]) == cut.choices[0].text


async def test_image_generation_returns_a_png_of_the_asked_size(api, gateway):
    images = await client(api).images.generate(
        prompt="a lighthouse", size="64x32", extra_body={"steps": 3, "seed": 5}
    )
    png = base64.b64decode(images.data[0].b64_json)
    assert Image.open(io.BytesIO(png)).size == (64, 32)
    assert gateway.requests[-1].size == (64, 32) and gateway.requests[-1].steps == 3


async def test_image_sizes_and_steps_are_validated(api):
    async with http(api) as h:
        for body, param in [
            ({"prompt": "x", "size": "65x64"}, "size"),
            ({"prompt": "x", "size": "big"}, "size"),
            ({"prompt": "x", "size": "512x512"}, "size"),  # over the demo model's 256
            ({"prompt": "x", "steps": 0}, "steps"),
            ({"prompt": "x", "steps": 501}, "steps"),
            ({"prompt": "x", "n": 2}, "n"),
            ({"prompt": "x", "response_format": "url"}, "response_format"),
            ({"prompt": ""}, "prompt"),
            ({"prompt": "x", "model": LLM}, "model"),
        ]:
            assert_error(await h.post("/v1/images/generations", json=body), 400, param=param)


# -- tiers ----------------------------------------------------------------------------------


async def test_paid_tier_pays_for_exactly_the_tokens_generated(api, gateway):
    before = gateway.accounts[PAID_KEY].balance
    result = await client(api, PAID_KEY).completions.create(
        model=LLM, prompt="pay", max_tokens=9, seed=1
    )
    request = gateway.requests[-1]
    assert request.tier == "paid" and request.account == PAID
    spent = before - gateway.accounts[PAID_KEY].balance
    assert spent == result.usage.completion_tokens * PRICE_PER_TOKEN


async def test_paid_tier_without_funds_is_402_even_when_streaming(api):
    with pytest.raises(openai.APIStatusError) as refused:
        await client(api, POOR_KEY).completions.create(model=LLM, prompt="x", max_tokens=9)
    assert refused.value.status_code == 402
    async with http(api, headers={"Authorization": f"Bearer {POOR_KEY}"}) as h:
        body = {"model": LLM, "prompt": "x", "max_tokens": 9, "stream": True}
        assert_error(await h.post("/v1/completions", json=body), 402, code="insufficient_funds")


async def test_a_wrong_api_key_is_401_never_the_free_tier(api, gateway):
    with pytest.raises(openai.AuthenticationError):
        await client(api, "sk-not-a-key").completions.create(model=LLM, prompt="x")
    for header in ("Bearer sk-wrong", "Basic dXNlcjpwdw==", "Bearer " + "k" * 300):
        async with http(api, headers={"Authorization": header}) as h:
            body = {"model": LLM, "prompt": "x"}
            response = await h.post("/v1/completions", json=body)
            assert_error(response, 401, code="invalid_api_key")
            assert response.headers["www-authenticate"].startswith("Bearer")
    assert gateway.requests == []


async def test_no_key_and_the_free_key_are_the_free_tier(api, gateway):
    async with http(api) as h:
        body = {"model": LLM, "prompt": "x", "max_tokens": 2}
        assert (await h.post("/v1/completions", json=body)).status_code == 200
    await client(api, "free").completions.create(model=LLM, prompt="x", max_tokens=2)
    assert [r.tier for r in gateway.requests] == ["free", "free"]
    assert all(r.account is None for r in gateway.requests)


async def test_free_tier_is_rate_limited_per_client_with_retry_after(gateway):
    clock = FakeClock()
    async with running_api(app_for(gateway, per_minute=2, clock=clock)) as api, http(api) as h:
        body = {"model": LLM, "prompt": "x", "max_tokens": 1}
        for _ in range(2):
            assert (await h.post("/v1/completions", json=body)).status_code == 200
        limited = await h.post("/v1/completions", json=body)
        assert_error(limited, 429, code="rate_limit_exceeded")
        assert limited.headers["retry-after"] == "30"
        # the paid tier is not held to the free tier's rate
        paid = {"Authorization": f"Bearer {PAID_KEY}"}
        assert (await h.post("/v1/completions", json=body, headers=paid)).status_code == 200
        # neither are reads
        assert (await h.get("/v1/models")).status_code == 200
        clock.now += 30
        assert (await h.post("/v1/completions", json=body)).status_code == 200
        # a wrong key draws on the address's free bucket: guesses are rate-limited too
        clock.now += 30
        wrong = {"Authorization": "Bearer sk-guess"}
        assert (await h.post("/v1/completions", json=body, headers=wrong)).status_code == 401
        assert (await h.post("/v1/completions", json=body, headers=wrong)).status_code == 429
        clock.now += 30
        malformed = {"Authorization": "Basic dXNlcjpwdw=="}
        assert (await h.post("/v1/completions", json=body, headers=malformed)).status_code == 401
        assert (await h.post("/v1/completions", json=body, headers=malformed)).status_code == 429
        metrics = (await h.get("/metrics")).text
        assert "aipg_api_rate_limited_total 3" in metrics


async def test_the_client_behind_a_trusted_proxy_is_limited_not_the_proxy(gateway):
    clock = FakeClock()
    app = app_for(gateway, per_minute=1, clock=clock, trusted_proxies=["127.0.0.1"])
    body = {"model": LLM, "prompt": "x", "max_tokens": 1}
    async with running_api(app) as api, http(api) as h:
        for client in ("198.51.100.7", "198.51.100.8"):
            forwarded = {"X-Forwarded-For": f"203.0.113.9, {client}"}
            assert (
                await h.post("/v1/completions", json=body, headers=forwarded)
            ).status_code == 200
        again = {"X-Forwarded-For": "198.51.100.7"}
        limited = await h.post("/v1/completions", json=body, headers=again)
        assert_error(limited, 429)
        assert "198.51.100.7" in limited.json()["error"]["message"]
        # a forged (malformed) hop makes the proxy itself the client
        forged = {"X-Forwarded-For": "198.51.100.7, not-an-ip"}
        assert (await h.post("/v1/completions", json=body, headers=forged)).status_code == 200
    # without trusting the proxy, the header is ignored: every request is 127.0.0.1's
    app = app_for(gateway, per_minute=1, clock=clock)
    async with running_api(app) as api, http(api) as h:
        for client, status in (("198.51.100.7", 200), ("198.51.100.8", 429)):
            headers = {"X-Forwarded-For": client}
            response = await h.post("/v1/completions", json=body, headers=headers)
            assert response.status_code == status


async def test_browsers_may_call_from_the_configured_origins_only(gateway):
    app = app_for(gateway, cors_origins=["https://chat.example"])
    preflight = {
        "Origin": "https://chat.example",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type",
    }
    async with running_api(app) as api, http(api) as h:
        allowed = await h.options("/v1/chat/completions", headers=preflight)
        assert allowed.status_code == 200
        assert allowed.headers["access-control-allow-origin"] == "https://chat.example"
        refused = await h.options(
            "/v1/chat/completions", headers={**preflight, "Origin": "https://evil.example"}
        )
        assert refused.status_code == 400
        models = await h.get("/v1/models", headers={"Origin": "https://chat.example"})
        assert "x-request-id" in models.headers["access-control-expose-headers"].lower()
    async with running_api(app_for(gateway)) as api, http(api) as h:
        models = await h.get("/v1/models", headers={"Origin": "https://chat.example"})
        assert "access-control-allow-origin" not in models.headers


async def test_overloaded_gateway_is_503_with_retry_after(demo_models):
    gate = trio.Event()
    gateway = make_gateway(demo_models, max_in_flight=1, gate=gate)
    async with running_api(app_for(gateway)) as api, http(api) as h, trio.open_nursery() as n:
        body = {"model": LLM, "prompt": "x", "max_tokens": 2}
        first: list[httpx.Response] = []

        async def held_request() -> None:
            first.append(await h.post("/v1/completions", json=body))

        n.start_soon(held_request)
        with trio.fail_after(10):
            await gateway.job_started.wait()
        busy = await h.post("/v1/completions", json=body)
        assert_error(busy, 503, code="overloaded")
        assert busy.headers["retry-after"] == "3"
        gate.set()
    assert first[0].status_code == 200


# -- bad input ------------------------------------------------------------------------------


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


# -- observability --------------------------------------------------------------------------


async def test_request_ids_and_access_log(api, caplog):
    caplog.set_level(logging.INFO, logger="aipg.node.api")
    async with http(api) as h:
        mine = await h.get("/v1/models", headers={"X-Request-Id": "client-id-123"})
        assert mine.headers["x-request-id"] == "client-id-123"
        made = await h.get("/v1/models", headers={"X-Request-Id": "bad id\x7f"})
        assert len(made.headers["x-request-id"]) == 24
        result = await h.post(
            "/v1/completions", json={"model": LLM, "prompt": "x", "max_tokens": 1}
        )
        assert result.json()["id"] == "cmpl-" + result.headers["x-request-id"]
        assert result.headers["x-aipg-job-id"] == result.json()["aipg"]["job_id"]
    lines = [r.getMessage() for r in caplog.records if r.name == "aipg.node.api"]
    assert any('"GET /v1/models" 200' in line and "rid=client-id-123" in line for line in lines)


async def test_metrics_are_prometheus_text(api):
    async with http(api) as h:
        await h.post("/v1/completions", json={"model": LLM, "prompt": "x", "max_tokens": 2})
        await h.post("/v1/completions", json={"model": "nope", "prompt": "x"})
        for i in range(3):
            await h.request("BREW", f"/pot/{i}")
        response = await h.get("/metrics")
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    requests = {
        (s.labels["route"], s.labels["status"]): s.value
        for s in families["aipg_api_requests"].samples
    }
    methods = {s.labels["method"] for s in families["aipg_api_requests"].samples}
    assert methods == {"POST", "other"}  # (this GET is counted once it is answered)
    assert requests[("/v1/completions", "200")] == 1
    assert requests[("/v1/completions", "404")] == 1
    assert ("other", "404") in requests  # an unknown route is one label, whatever its path
    jobs = {s.labels["state"]: s.value for s in families["aipg_jobs"].samples}
    assert jobs["completed"] == 1
    assert families["aipg_api_request_duration_seconds"].type == "histogram"
    tokens = {s.labels["tier"]: s.value for s in families["aipg_api_completion_tokens"].samples}
    assert tokens["free"] == 2


async def test_extra_routes_are_observed_under_their_own_name(gateway):
    async def account(request):
        return json_response({"address": request.path_params["address"]})

    app = app_for(
        gateway, extra_routes=[Route("/api/v1/accounts/{address}", account, methods=["GET"])]
    )
    async with running_api(app) as api, http(api) as h:
        response = await h.get("/api/v1/accounts/aipg1x")
        assert response.json() == {"address": "aipg1x"} and response.headers["x-request-id"]
        metrics = (await h.get("/metrics")).text
    assert 'route="/api/v1/accounts/{address}",method="GET",status="200"' in metrics


async def test_openapi_document_is_valid_and_covers_every_route(api, gateway):
    async with http(api) as h:
        document = (await h.get("/openapi.json")).json()
    validate(document)
    app = build_app(gateway, gateway, extra_routes=chain_routes(None, None), free_tier_per_minute=1)
    routes = {r.path.replace(":path}", "}") for r in app.routes}
    assert routes == set(document["paths"])


@pytest.mark.parametrize("height", ["%C2%B2", "-1", "1" * 19])  # "²": isdigit, not int()
async def test_a_block_height_is_up_to_18_ascii_digits(gateway, height):
    app = app_for(gateway, extra_routes=chain_routes(None, None))  # refused before the chain
    async with running_api(app) as api, http(api) as h:
        assert_error(await h.get(f"/api/v1/blocks/{height}"), 400, param="height")


async def test_status_is_the_gateways(api, gateway):
    async with http(api) as h:
        status = (await h.get("/api/v1/status")).json()
    assert status == json.loads(json.dumps(gateway.status()))


async def test_cancelling_serve_api_closes_the_listener(gateway):
    app = app_for(gateway)
    async with trio.open_nursery() as nursery:
        address = await nursery.start(serve_api, app, "127.0.0.1", 0)
        async with http(address) as h:
            assert (await h.get("/v1/models")).status_code == 200
        nursery.cancel_scope.cancel()
    with pytest.raises(OSError):
        await trio.open_tcp_stream("127.0.0.1", address.port)


@pytest.mark.parametrize(
    ("failure", "error_type"),
    [(JobFailed("the worker vanished"), "server_error"), (RuntimeError("bug"), "server_error")],
)
async def test_a_failure_mid_stream_ends_it_with_an_error_event(gateway, failure, error_type):
    async def fail_after_some_text(req, on_text=None):
        await on_text("partial ")
        raise failure

    gateway.complete = fail_after_some_text
    body = {"model": LLM, "prompt": "x", "max_tokens": 5, "stream": True}
    async with running_api(app_for(gateway)) as api, http(api) as h:
        response = await h.post("/v1/completions", json=body)
        assert response.status_code == 200
        events = [json.loads(e[6:]) for e in response.text.split("\n\n") if e]
        assert events[0]["choices"][0]["text"] == "partial "
        assert events[-1]["error"]["type"] == error_type
        assert "[DONE]" not in response.text
        with pytest.raises(openai.APIError):
            async for _ in await client(api).completions.create(**body):
                pass
        assert (await h.get("/v1/models")).status_code == 200


async def test_shutdown_stops_listening_and_lets_requests_in_flight_finish(demo_models):
    gate, shutdown, stopped = trio.Event(), trio.Event(), trio.Event()
    gateway = make_gateway(demo_models, gate=gate)
    app = app_for(gateway)

    async def serve(task_status=trio.TASK_STATUS_IGNORED) -> None:
        await serve_api(app, "127.0.0.1", 0, shutdown=shutdown, task_status=task_status)
        stopped.set()

    responses: list[httpx.Response] = []
    async with trio.open_nursery() as nursery:
        address = await nursery.start(serve)
        async with http(address) as h:

            async def held_request() -> None:
                body = {"model": LLM, "prompt": "x", "max_tokens": 3}
                responses.append(await h.post("/v1/completions", json=body))

            nursery.start_soon(held_request)
            with trio.fail_after(10):
                await gateway.job_started.wait()
            shutdown.set()
            await trio.testing.wait_all_tasks_blocked()
            assert not stopped.is_set()  # a request is still in flight
            with pytest.raises(OSError):
                await trio.open_tcp_stream("127.0.0.1", address.port)
            gate.set()
            with trio.fail_after(10):
                await stopped.wait()
    assert responses[0].status_code == 200


async def test_a_client_leaving_mid_stream_cancels_the_job(demo_models):
    gate = trio.Event()
    gateway = make_gateway(demo_models, gate=gate)
    async with running_api(app_for(gateway)) as api:
        body = {"model": LLM, "prompt": "x", "max_tokens": 50, "stream": True}
        async with http(api) as h, trio.open_nursery() as nursery:

            async def leave_when_started() -> None:
                await gateway.job_started.wait()
                nursery.cancel_scope.cancel()  # drops the connection

            nursery.start_soon(leave_when_started)
            await h.post("/v1/completions", json=body)
        with trio.fail_after(10):
            await gateway.job_ended.wait()
        assert gateway.in_flight == 0
        async with http(api) as h:
            metrics = (await h.get("/metrics")).text
        assert "aipg_api_streams_open 0" in metrics
