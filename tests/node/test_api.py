"""The HTTP API end to end, through the official OpenAI client and raw httpx: the routes
give the runners' output, and the tiers (keys, fees, rate limits, proxies, CORS, overload)
decide who may call them. Served by Hypercorn on 127.0.0.1 in front of a gateway that runs
the demo models through the real runners (fixtures in conftest.py)."""

from __future__ import annotations

import base64
import io

import httpx
import openai
import pytest
import trio
from PIL import Image

from aipg.models import SamplingParams
from aipg.testing.apikit import (
    PAID,
    PAID_KEY,
    POOR_KEY,
    PRICE_PER_TOKEN,
    FakeClock,
    app_for,
    make_gateway,
    running_api,
)

from .apiclient import LLM, assert_error, client, http

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
