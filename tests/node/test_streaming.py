"""Real token streaming (D50), refusals (D52) and the model's limits at the gateway (D51),
on whole nodes in one trio run: a gateway and a worker over the in-memory transport.

Streaming tests hold the worker's generation mid-way with its token hook (a
threading.Event the test sets once it has seen the first text), so "the first text
arrived before the job finished" is shown by events, not by timing.
"""

from __future__ import annotations

import dataclasses
import threading

import httpx
import pytest
import trio

from aipg.models import DiffusionParams, build_demo_diffusion, build_demo_llm, load_model_dir
from aipg.node.http.app import build_app
from aipg.node.metrics import render_exposition
from aipg.node.protocol.messages import PROTO_JOB, JobAck, TokenChunk
from aipg.node.services.faults import Faults
from aipg.node.services.gateway_api import BadRequest, ImageRequest, JobFailed
from aipg.pouw import PouwError, assignment_id
from aipg.testing.apikit import running_api
from aipg.testing.nodes import NodeSpec, completion, open_node_world
from aipg.wire import Identity, decode, encode, sign

from .apiclient import client

pytestmark = pytest.mark.slow

HOLD_AT = 3  # the generation waits at its 4th token (before streaming it) until released


@pytest.fixture(scope="module")
def llm_dir(tmp_path_factory):
    return build_demo_llm(tmp_path_factory.mktemp("stream") / "llm")


@pytest.fixture(scope="module")
def diffusion_dir(tmp_path_factory):
    return build_demo_diffusion(tmp_path_factory.mktemp("stream") / "diffusion")


class Hold:
    """A worker token hook that blocks the generating thread after token ``HOLD_AT``
    until :meth:`release`; ``held`` tells whether the generation is still held."""

    def __init__(self) -> None:
        self.go = threading.Event()
        self.reached = threading.Event()

    def __call__(self, job_id: bytes, index: int) -> None:
        if index == HOLD_AT:
            self.reached.set()
            assert self.go.wait(60), "the test never released the generation"

    def release(self) -> None:
        self.go.set()


def two_nodes(gateway_spec=None, worker_spec=None):
    return [gateway_spec or NodeSpec(worker=False), worker_spec or NodeSpec()]


async def test_streamed_text_reaches_the_client_while_the_worker_is_still_generating(
    tmp_path, llm_dir
):
    model = load_model_dir(llm_dir)
    async with open_node_world(tmp_path, two_nodes(), [llm_dir]) as world:
        gateway, worker = world.nodes
        await world.wait_for_worker(gateway, model.model_id)
        hold = Hold()
        worker.worker.token_hook = hold
        pieces: list[str] = []
        seen_while_running: list[bool] = []

        async def on_text(piece: str) -> None:
            if not pieces:  # the first text: the job must still be running
                seen_while_running.append(worker.worker.executed == 0 and not hold.go.is_set())
                hold.release()
            pieces.append(piece)

        with trio.fail_after(60):
            result = await gateway.gateway.complete(
                completion("aipg-demo-llm", "the grid", max_tokens=12), on_text
            )
        assert seen_while_running == [True]
        assert "".join(pieces) == result.text and result.completion_tokens > HOLD_AT
        # The same request unstreamed gives the same text (the worker is deterministic).
        worker.worker.token_hook = None
        again = await gateway.gateway.complete(
            completion("aipg-demo-llm", "the grid", max_tokens=12)
        )
        assert again.text == result.text
        assert gateway.gateway.ttft.count() == 2
        text = render_exposition(gateway.metrics())
        assert "aipg_gateway_time_to_first_token_seconds_count 2" in text


async def test_the_openai_client_streams_both_routes_as_the_worker_generates(tmp_path, llm_dir):
    model = load_model_dir(llm_dir)
    async with open_node_world(tmp_path, two_nodes(), [llm_dir]) as world:
        gateway, worker = world.nodes
        await world.wait_for_worker(gateway, model.model_id)
        app = build_app(gateway.gateway, gateway, free_tier_per_minute=1000)
        async with running_api(app) as address:
            api = client(address)
            for chat in (False, True):
                hold = Hold()
                worker.worker.token_hook = hold
                executed = worker.worker.executed
                if chat:
                    stream = await api.chat.completions.create(
                        model="aipg-demo-llm",
                        messages=[{"role": "user", "content": "the grid"}],
                        max_tokens=12,
                        temperature=0,
                        stream=True,
                    )
                else:
                    stream = await api.completions.create(
                        model="aipg-demo-llm",
                        prompt="the grid",
                        max_tokens=12,
                        temperature=0,
                        stream=True,
                    )
                texts: list[str] = []
                with trio.fail_after(60):
                    async for chunk in stream:
                        choice = chunk.choices[0]
                        text = choice.delta.content if chat else choice.text
                        if text:
                            if not texts:  # first text: the worker is still held
                                assert worker.worker.executed == executed
                                assert not hold.go.is_set()
                                hold.release()
                            texts.append(text)
                assert texts and hold.go.is_set()
                assert worker.worker.executed == executed + 1
            async with httpx.AsyncClient(base_url=address.url) as http:
                metrics = (await http.get("/metrics")).text
            assert "aipg_gateway_time_to_first_token_seconds_count 2" in metrics


async def test_a_result_that_disagrees_with_its_stream_fails_the_attempt_at_once(tmp_path, llm_dir):
    model = load_model_dir(llm_dir)
    liar = NodeSpec(faults=Faults(misstream=True))
    async with open_node_world(tmp_path, two_nodes(worker_spec=liar), [llm_dir]) as world:
        gateway, worker = world.nodes
        await world.wait_for_worker(gateway, model.model_id)
        pieces: list[str] = []

        async def on_text(piece: str) -> None:
            pieces.append(piece)

        # No other worker: the job fails as soon as the report is refused, not after
        # the 45 s attempt timeout.
        with trio.fail_after(30), pytest.raises(JobFailed, match="no worker could run"):
            await gateway.gateway.complete(completion("aipg-demo-llm", "the grid"), on_text)
        reputation = gateway.gateway.scheduler.reputation
        assert reputation.score(worker.identity.public_bytes) == reputation.config.initial - 50


async def test_a_refused_assignment_fails_or_moves_on_at_once_and_costs_no_reputation(
    tmp_path, llm_dir
):
    model = load_model_dir(llm_dir)
    refuser = NodeSpec(faults=Faults(refuse_jobs=True))
    async with open_node_world(tmp_path, two_nodes(worker_spec=refuser), [llm_dir]) as world:
        gateway, worker = world.nodes
        await world.wait_for_worker(gateway, model.model_id)
        with trio.fail_after(30), pytest.raises(JobFailed, match="refusing"):
            await gateway.gateway.complete(completion("aipg-demo-llm", "the grid"))
        assert worker.worker.refused == 1
        assert gateway.gateway.refusals.value(code="1") == 1
        assert 'aipg_gateway_refusals{code="1"} 1' in render_exposition(gateway.metrics())
        reputation = gateway.gateway.scheduler.reputation
        assert reputation.score(worker.identity.public_bytes) == reputation.config.initial


async def test_the_gateway_checks_the_models_limits_and_a_worker_refuses_what_slips_through(
    tmp_path, llm_dir, diffusion_dir
):
    llm, diffusion = load_model_dir(llm_dir), load_model_dir(diffusion_dir)
    async with open_node_world(tmp_path, two_nodes(), [llm_dir, diffusion_dir]) as world:
        gateway, worker = world.nodes
        await world.wait_for_worker(gateway, diffusion.model_id)
        await world.wait_for_worker(gateway, llm.model_id)
        g = gateway.gateway
        limit = diffusion.manifest.diffusion.max_size
        big = image_request(size=(limit + 8, limit))
        with pytest.raises(BadRequest, match=f"from .* to {limit}") as refused:
            await g.generate_image(big)
        assert refused.value.param == "size"
        vocab = llm.manifest.llm.vocab_size
        oov = dataclasses.replace(completion("aipg-demo-llm", ""), prompt_ids=[5, vocab])
        with pytest.raises(BadRequest, match="vocabulary") as refused:
            await g.complete(oov)
        assert refused.value.param == "prompt"
        context = llm.manifest.llm.context_length
        with pytest.raises(BadRequest, match=f"context length is {context}"):
            await g.complete(completion("aipg-demo-llm", "the grid", max_tokens=context))
        # A job over the limits that reaches a worker anyway (a gateway that skipped its
        # check): the worker refuses it at once and the gateway fails it at once.
        known = g.catalog.get(diffusion.model_id)
        params = DiffusionParams(steps=2, width=limit + 8, height=limit)
        entry = await g._submit(known, "x", None, params, 1, "free", None, "127.0.0.1", 0)
        with trio.fail_after(30), pytest.raises(JobFailed, match="does not fit"):
            await g._wait(entry)
        assert worker.worker.refused == 1 and worker.worker.executed == 0


def image_request(size=None) -> ImageRequest:
    return ImageRequest(
        model="aipg-demo-diffusion",
        prompt="a lighthouse",
        size=size,
        steps=None,
        guidance_milli=None,
        seed=1,
        tier="free",
        account=None,
        client="127.0.0.1",
    )


async def test_the_api_answers_a_request_over_the_models_limits_with_a_400_naming_it(
    tmp_path, llm_dir, diffusion_dir
):
    diffusion = load_model_dir(diffusion_dir)
    llm = load_model_dir(llm_dir)
    async with open_node_world(tmp_path, [NodeSpec()], [llm_dir, diffusion_dir]) as world:
        (node,) = world.nodes
        await world.wait_for_worker(node, diffusion.model_id)
        app = build_app(node.gateway, node, free_tier_per_minute=1000)
        async with running_api(app) as address, httpx.AsyncClient(base_url=address.url) as http:
            limit = diffusion.manifest.diffusion.max_size
            body = {"model": "aipg-demo-diffusion", "prompt": "x", "size": "512x512"}
            answer = await http.post("/v1/images/generations", json=body)
            assert answer.status_code == 400
            error = answer.json()["error"]
            assert error["param"] == "size" and f"to {limit}" in error["message"]
            vocab = llm.manifest.llm.vocab_size
            body = {"model": "aipg-demo-llm", "prompt": [1, vocab + 5], "max_tokens": 2}
            answer = await http.post("/v1/completions", json=body)
            assert answer.status_code == 400, answer.text
            error = answer.json()["error"]
            assert error["param"] == "prompt" and str(vocab) in error["message"]


async def test_junk_and_foreign_token_chunks_are_refused_and_change_nothing(tmp_path, llm_dir):
    model = load_model_dir(llm_dir)
    async with open_node_world(tmp_path, two_nodes(), [llm_dir]) as world:
        gateway, worker = world.nodes
        await world.wait_for_worker(gateway, model.model_id)
        hold = Hold()
        worker.worker.token_hook = hold
        g = gateway.gateway
        results = []

        async def run() -> None:
            results.append(await g.complete(completion("aipg-demo-llm", "the grid", max_tokens=12)))

        async def send(data: bytes) -> JobAck:
            answer = await worker.host.request(gateway.identity.peer_id, PROTO_JOB, data, timeout=5)
            return decode(answer, JobAck)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(run)
            with trio.fail_after(60):
                await trio.to_thread.run_sync(hold.reached.wait)
            (jid,) = [j for j, e in g.jobs.items() if not e.done.is_set()]
            relay = g.jobs[jid].relay
            aid = assignment_id(g.scheduler.assignment(jid))
            # The hook holds token HOLD_AT before it is pushed; the chunks of the tokens
            # before it may still be on their way. Nothing else comes while it is held.
            await world.until(gateway, lambda: len(relay.tokens) >= HOLD_AT, 30)
            streamed = list(relay.tokens)
            assert len(streamed) == HOLD_AT
            vocab = model.manifest.llm.vocab_size
            key = worker.identity
            bad = [
                b"\x00junk",
                encode(TokenChunk(jid, aid, len(streamed), (5,))),  # unsigned (D85)
                encode(
                    sign(TokenChunk(jid, aid, len(streamed), (5,)), gateway.identity)
                ),  # not its
                encode(
                    sign(TokenChunk(b"\x01" * 32, aid, len(streamed), (5,)), key)
                ),  # another job
                encode(
                    sign(TokenChunk(jid, b"\x02" * 32, len(streamed), (5,)), key)
                ),  # another assignment
                encode(sign(TokenChunk(jid, aid, len(streamed) + 1, (5,)), key)),  # a gap
                encode(sign(TokenChunk(jid, aid, 0, (5,)), key)),  # a replay
                encode(sign(TokenChunk(jid, aid, len(streamed), ()), key)),  # empty
                encode(
                    sign(TokenChunk(jid, aid, len(streamed), (vocab,)), key)
                ),  # outside the vocabulary
                encode(
                    sign(TokenChunk(jid, aid, len(streamed), (5,) * 12), key)
                ),  # past max_tokens
            ]
            for data in bad:
                ack = await send(data)
                assert not ack.ok and ack.reason
            # From a peer that does not hold the assignment (the transport names it).
            stranger = Identity.from_seed(b"\x09" * 32).peer_id
            with pytest.raises(PouwError, match="another peer"):
                g.on_tokens(stranger, sign(TokenChunk(jid, aid, len(relay.tokens), (5,)), key))
            assert relay.tokens[: len(streamed)] == streamed and len(relay.tokens) <= HOLD_AT + 1
            hold.release()
        (result,) = results
        again = await g.complete(completion("aipg-demo-llm", "the grid", max_tokens=12))
        assert result.text == again.text  # the junk changed nothing the client saw
