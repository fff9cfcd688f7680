"""`aipg-node devnet` and `make demo`: plan, start, drive and watch a local devnet.

The jobs go through the gateway's OpenAI-compatible API as plain HTTP (the end-to-end
tests send the same requests with the official ``openai`` client); their fate (receipt,
verdicts, certificate, block) is read back from the native API.
"""

from __future__ import annotations

import base64
import json
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import httpx
import trio

from aipg.node.apikeys import ApiKeyStore
from aipg.node.datadir import DataDir

from .plan import Devnet, DevnetError, DevnetPlan, plan_devnet

LLM_PROMPTS = (
    "The grid pays for useful work",
    "Validators check every receipt",
    "A node hosts a model and",
)
IMAGE_PROMPT = "a lighthouse over a calm sea"


def build_demo_models(models_dir: Path) -> dict[str, str]:
    """Build the demo models (seeded, byte-identical on every run) into ``models_dir``."""
    from aipg.models import build_demo

    models_dir.mkdir(parents=True, exist_ok=True)
    llm, diffusion = build_demo(models_dir)
    return {"llm": str(llm), "diffusion": str(diffusion)}


def aipg_job_id(response: Any) -> str:
    """The network's job id, from the ``aipg`` extension of an OpenAI-shaped response."""
    extra = getattr(response, "model_extra", None) or {}
    return (extra.get("aipg") or {}).get("job_id", "")


@dataclass
class DemoJob:
    label: str
    tier: str
    kind: str
    job_id: str = ""
    gateway: int = 0  # the node whose API the job went through (and is followed on)
    view: dict = field(default_factory=dict)
    output: str = ""


class DevnetDriver:
    """Sends the demo jobs and follows them to their blocks."""

    def __init__(self, devnet: Devnet, api_key: str, out: TextIO):
        self.devnet = devnet
        self.api_key = api_key
        self.out = out
        self.gateway = devnet.node(0).api_url
        self.http = httpx.AsyncClient(base_url=self.gateway, timeout=60.0)
        self._apis: dict[int, httpx.AsyncClient] = {0: self.http}

    def api(self, index: int) -> httpx.AsyncClient:
        """An HTTP client for node ``index``'s API (node 0's is ``http``)."""
        if index not in self._apis:
            url = self.devnet.node(index).api_url
            self._apis[index] = httpx.AsyncClient(base_url=url, timeout=60.0)
        return self._apis[index]

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    async def models(self) -> dict[str, dict]:
        r = await self.http.get("/v1/models")
        r.raise_for_status()
        return {m.get("kind", "llm"): m for m in r.json()["data"]}

    async def _post(self, path: str, body: dict, paid: bool, gateway: int = 0) -> dict:
        headers = {"Authorization": f"Bearer {self.api_key}"} if paid else {}
        r = await self.api(gateway).post(path, json=body, headers=headers, timeout=120.0)
        if r.status_code != 200:
            raise DevnetError(f"POST {path} answered {r.status_code}: {r.text[:300]}")
        return r.json()

    async def _stream_chat(self, body: dict, gateway: int = 0) -> tuple[str, str]:
        """A streamed chat completion: (job id, text), read event by event."""
        text, jid = [], ""
        api = self.api(gateway)
        async with api.stream("POST", "/v1/chat/completions", json=body) as r:
            if r.status_code != 200:
                raise DevnetError(f"streamed chat answered {r.status_code}")
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[len("data: ") :])
                jid = (chunk.get("aipg") or {}).get("job_id", jid)
                for choice in chunk.get("choices", []):
                    text.append(choice.get("delta", {}).get("content") or "")
        return jid, "".join(text)

    async def run_job(self, job: DemoJob, models: dict[str, dict], image_path: Path) -> None:
        paid = job.tier == "paid"
        if job.kind == "image":
            r = await self._post(
                "/v1/images/generations",
                {
                    "model": models["diffusion"]["id"],
                    "prompt": IMAGE_PROMPT,
                    "size": "64x64",
                    "response_format": "b64_json",
                    "n": 1,
                },
                paid,
                job.gateway,
            )
            image_path.write_bytes(base64.b64decode(r["data"][0]["b64_json"]))
            job.job_id = r["aipg"]["job_id"]
            job.output = f"image written to {image_path}"
        elif job.label.startswith("stream"):
            job.job_id, job.output = await self._stream_chat(
                {
                    "model": models["llm"]["id"],
                    "messages": [{"role": "user", "content": LLM_PROMPTS[1]}],
                    "max_tokens": 24,
                    "stream": True,
                    "seed": 11,
                },
                job.gateway,
            )
        else:
            prompt = LLM_PROMPTS[2] if paid else LLM_PROMPTS[0]
            body = {"model": models["llm"]["id"], "prompt": prompt, "max_tokens": 24, "seed": 5}
            r = await self._post("/v1/completions", body, paid, job.gateway)
            job.job_id, job.output = r["aipg"]["job_id"], r["choices"][0]["text"]
        self.say(f"  {job.label:<10} {job.tier:<5} job {job.job_id[:18]}…  {job.output[:60]!r}")

    async def wait_certified(self, jobs: list[DemoJob], deadline: float) -> None:
        pending = [j for j in jobs if j.job_id]
        while pending:
            for job in list(pending):
                r = await self.api(job.gateway).get(f"/api/v1/jobs/{job.job_id}")
                if r.status_code == 200:
                    job.view = r.json()
                    if job.view.get("block_height") is not None:
                        pending.remove(job)
                        self.say(f"  {job.label:<10} certified in block {job.view['block_height']}")
                    elif job.view.get("audit") == "not audited":  # its claim's draw (D79)
                        pending.remove(job)
                        self.say(f"  {job.label:<10} paid unaudited (its claim was not drawn)")
            if time.monotonic() > deadline:
                raise DevnetError(
                    f"{len(pending)} job(s) not certified in time: {[j.label for j in pending]}"
                )
            if pending:
                await trio.sleep(0.5)  # polling remote processes over HTTP

    async def balances(self, plan: DevnetPlan) -> list[tuple[str, str, str]]:
        rows = [("operations wallet", plan.operations_wallet), ("paid client", plan.client_address)]
        rows += [(f"node{n.index} (validator, worker)", n.address) for n in plan.nodes]
        out = []
        for name, address in rows:
            r = await self.http.get(f"/api/v1/accounts/{address}")
            a = r.json()
            out.append((name, a.get("balance", "?"), a.get("bonded", "?")))
        return out

    async def live_line(self) -> str:
        parts = []
        for n in self.devnet.nodes:
            try:
                r = await self.http.get(n.api_url + "/api/v1/status", timeout=2.0)
                s = r.json()
                parts.append(
                    f"node{n.plan.index}: h={s.get('height')} peers={len(s.get('peers', []))}"
                )
            except (httpx.HTTPError, ValueError):
                parts.append(f"node{n.plan.index}: down")
        return " | ".join(parts)


def print_table(out: TextIO, jobs: list[DemoJob]) -> None:
    header = ("job", "tier", "worker", "work units", "verdicts", "block", "reward paid (AIPG)")
    rows = []
    for j in jobs:
        v = j.view
        votes = v.get("verdicts", [])
        valid = sum(1 for x in votes if x.get("valid"))
        rows.append(
            (
                j.label,
                j.tier,
                (v.get("worker") or "")[:14] + "…",
                str(v.get("work_units", "")),
                f"{valid}/{len(votes)} valid" if votes else v.get("audit", ""),
                str(v.get("block_height", "")),
                v.get("reward", ""),
            )
        )
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        print("  " + "  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)), file=out)


async def drive_devnet(
    plan: DevnetPlan,
    *,
    jobs: int,
    exit_when_done: bool,
    timeout: float,
    out: TextIO,
    gateways: int = 1,
) -> int:
    deadline = time.monotonic() + timeout
    api_key = ApiKeyStore(DataDir.resolve(plan.nodes[0].data_dir)).add(
        "devnet client", plan.client_key
    )
    async with Devnet(plan) as devnet:
        t0 = time.monotonic()
        await devnet.start(progress=lambda m: print(f"  {m}", file=out, flush=True))
        print(
            "  waiting for nodes 1.. to fetch the published models over the blob protocol",
            file=out,
            flush=True,
        )
        await devnet.wait_models_hosted()
        print(
            f"{len(devnet.nodes)} nodes up in {time.monotonic() - t0:.1f} s; gateway {devnet.node(0).api_url}",
            file=out,
            flush=True,
        )
        driver = DevnetDriver(devnet, api_key, out)
        if jobs:
            await _run_jobs(driver, plan, jobs, deadline, gateways)
            if exit_when_done:
                return 0
        print("live view (Ctrl-C stops every node):", file=out, flush=True)
        while True:
            print("  " + await driver.live_line(), file=out, flush=True)
            await trio.sleep(2.0)


async def _run_jobs(
    driver: DevnetDriver, plan: DevnetPlan, count: int, deadline: float, gateways: int = 1
) -> None:
    models = await driver.models()
    kinds = [
        ("completion", "free", "llm"),
        ("stream-chat", "free", "llm"),
        ("completion", "paid", "llm"),
        ("image", "free", "image"),
    ]
    jobs = [
        DemoJob(f"{label}{'' if i < len(kinds) else i}", tier, kind)
        for i, (label, tier, kind) in enumerate(kinds[i % len(kinds)] for i in range(count))
    ]
    free = [j for j in jobs if j.tier == "free"]
    for n, job in enumerate(free):  # free jobs through the gateways in turn (D97)
        job.gateway = n % max(1, gateways)
    image_path = Path(plan.root) / "image.png"
    driver.say(f"submitting {len(jobs)} job(s) through the OpenAI-compatible API:")
    for job in jobs:
        await driver.run_job(job, models, image_path)
    driver.say("waiting until every receipt is certified in a finalized block:")
    await driver.wait_certified(jobs, deadline)
    driver.say("\njobs:")
    print_table(driver.out, jobs)
    driver.say("\nbalances:")
    for name, balance, bonded in await driver.balances(plan):
        driver.say(f"  {name:<28} balance {balance:>16}   bonded {bonded:>10}")
    if any(j.kind == "image" for j in jobs):
        driver.say(f"\nimage: {image_path}")


def run_devnet_cli(
    *,
    root: Path,
    nodes: int,
    block_time_ms: int,
    jobs: int,
    exit_when_done: bool,
    timeout: float,
    out: TextIO,
    gateways: int = 1,
) -> int:
    """Plan a fresh devnet under ``root`` and run it (see ``aipg-node devnet --help``)."""
    t0 = time.monotonic()
    plan = plan_devnet(
        root,
        nodes,
        block_time_ms=block_time_ms,
        build_models=build_demo_models,
        progress=lambda m: print(f"  {m}", file=out, flush=True),
    )
    print(
        f"devnet {plan.chain_id}: {nodes} node(s) in {root} (planned in {time.monotonic() - t0:.1f} s)",
        file=out,
        flush=True,
    )
    work = drive_devnet(
        plan,
        jobs=jobs,
        exit_when_done=exit_when_done,
        timeout=timeout,
        out=out,
        gateways=gateways,
    )
    return trio.run(_until_signal, work, out)


async def _until_signal(work, out: TextIO) -> int:
    """Run ``work``; SIGINT (Ctrl-C) or SIGTERM cancels it, which stops every node the
    devnet started (the nodes run in sessions of their own, so the terminal's signal
    reaches only us)."""
    result = 130
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def run() -> None:
                nonlocal result
                result = await work
                nursery.cancel_scope.cancel()

            nursery.start_soon(run)
            async for signum in signals:
                print(f"\n{signal.Signals(signum).name}: stopping every node", file=out, flush=True)
                nursery.cancel_scope.cancel()
                break
    return result


def summary_json(plan: DevnetPlan) -> str:
    return json.dumps({"chain_id": plan.chain_id, "nodes": [n.peer_id for n in plan.nodes]})


ProgressFn = Callable[[str], None]
