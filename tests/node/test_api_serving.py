"""The HTTP API as a service: request ids and the access log, Prometheus metrics, the
OpenAPI document, status, and how serving ends (cancellation, failures mid-stream,
graceful shutdown, clients that leave)."""

from __future__ import annotations

import json
import logging

import httpx
import openai
import pytest
import trio
import trio.testing
from openapi_spec_validator import validate
from prometheus_client.parser import text_string_to_metric_families
from starlette.routing import Route

from aipg.node.http.app import build_app, serve_api
from aipg.node.http.responses import json_response
from aipg.node.http.routes_chain import chain_routes
from aipg.node.services.gateway_api import JobFailed
from aipg.testing.apikit import app_for, make_gateway, running_api

from .apiclient import LLM, assert_error, client, http


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
