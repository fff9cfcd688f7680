"""The gateway's /v1/chat/completions renders with the model's own chat template: whole
nodes in one process (real gateway, worker, committee and chain), the real HTTP API on
127.0.0.1, and models imported from exports the test kit writes."""

from __future__ import annotations

import httpx
import pytest
from tokenizers import Tokenizer as HfTokenizer

from aipg.models import LlmRunner, SamplingParams, load_model_dir
from aipg.models.hf_import import import_export
from aipg.node.http.app import build_app
from aipg.testing.apikit import running_api
from aipg.testing.hf_exports import write_llm_export
from aipg.testing.nodes import NodeSpec, open_node_world

pytestmark = pytest.mark.slow

CHAT = [
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": "What does the grid pay for?"},
]
RENDERED = (
    "<|im_start|>system\nAnswer briefly.<|im_end|>\n"
    "<|im_start|>user\nWhat does the grid pay for?<|im_end|>\n<|im_start|>assistant\n"
)


async def test_chat_uses_the_models_template_and_its_job_is_certified(tmp_path):
    chatml = import_export(write_llm_export(tmp_path / "e1", style="chatml"), tmp_path / "chatml")
    llama = import_export(write_llm_export(tmp_path / "e2", style="llama"), tmp_path / "llama")
    model = load_model_dir(chatml)
    specs = [NodeSpec(worker=False), NodeSpec(), NodeSpec(worker=False), NodeSpec(worker=False)]
    async with open_node_world(tmp_path / "world", specs, [chatml, llama]) as world:
        gateway = world.nodes[0]
        await world.wait_for_worker(gateway, model.model_id)
        await world.wait_for_worker(gateway, load_model_dir(llama).model_id)
        app = build_app(gateway.gateway, gateway, free_tier_per_minute=1000)
        async with running_api(app) as address, httpx.AsyncClient(base_url=address.url) as http:
            body = {
                "model": "tiny-random-chatml",
                "messages": CHAT,
                "max_tokens": 6,
                "temperature": 0,
            }
            r = await http.post("/v1/chat/completions", json=body, timeout=60)
            assert r.status_code == 200, r.text
            answer = r.json()

            # Two user turns in a row: the Llama-2 template's raise_exception is a 400.
            bad = {"model": "tiny-random-llama", "messages": [CHAT[1], CHAT[1]], "max_tokens": 2}
            refused = await http.post("/v1/chat/completions", json=bad, timeout=60)
            assert refused.status_code == 400, refused.text
            error = refused.json()["error"]
            assert "Conversation roles must alternate" in error["message"]
            assert error["param"] == "messages"

            # Token ids past the model's vocabulary: a 400 that says so, not a 500.
            ids = {"model": "tiny-random-chatml", "prompt": [5, 100_000], "max_tokens": 2}
            refused = await http.post("/v1/completions", json=ids, timeout=60)
            assert refused.status_code == 400, refused.text
            assert "outside this model's vocabulary" in refused.json()["error"]["message"]

        job_id = bytes.fromhex(r.headers["X-Aipg-Job-Id"])
        job = gateway.gateway.jobs[job_id].job
        assert job.prompt == RENDERED  # the template's text, not a role: content transcript
        want_ids = HfTokenizer.from_file(str(chatml / "tokenizer.json")).encode(
            RENDERED, add_special_tokens=False
        )
        assert answer["usage"]["prompt_tokens"] == len(want_ids.ids)
        expected = LlmRunner(chatml).generate(
            want_ids.ids, SamplingParams(max_tokens=6), seed=job.seed
        )
        assert answer["choices"][0]["message"]["content"] == expected.text
        assert answer["usage"]["completion_tokens"] == len(expected.token_ids)

        # The committee re-encodes the job's prompt the same way and certifies the work.
        tracked = await world.wait_for_block_with(gateway, job_id)
        assert tracked.certified
