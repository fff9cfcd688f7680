"""A real gateway for the API tests: runs the demo models through ``aipg.models`` runners.

No network: every job runs on this machine, at once, with a fake worker id. It keeps the
parts of a gateway the API depends on for real: model resolution, tokenization and the
context check, a chat template, paid-tier fees taken from an account balance (escrowed
for ``max_tokens`` and the unused part refunded), a bound on jobs in flight (Overloaded),
streaming text deltas from a worker thread, job views and metrics.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from aipg.models import (
    DiffusionRunner,
    LlmRunner,
    ModelError,
    SamplingParams,
    TokenEvent,
    build_demo_diffusion,
    build_demo_llm,
    model_id_text,
)
from aipg.node.http.app import ApiAddress, build_app, serve_api
from aipg.node.metrics import Metric
from aipg.node.services.gateway_api import (
    BadRequest,
    CompletionRequest,
    CompletionResult,
    ImageRequest,
    ImageResult,
    InsufficientFunds,
    ModelInfo,
    Overloaded,
    PaidAccount,
    StreamText,
    TextCallback,
    UnknownModel,
)

WORKER = "12D3KooWApiTestWorker"
PRICE_PER_TOKEN = 10  # base units
IMAGE_PRICE_PER_STEP = 100
CREATED = 1_700_000_000


@dataclass
class Account:
    info: PaidAccount
    balance: int


class RunnerGateway:
    """A :class:`aipg.node.services.gateway_api.Gateway` that runs jobs itself.

    ``accounts`` maps API keys to (account, balance in base units). ``max_in_flight``
    jobs may run at once; more raise Overloaded. ``gate``, when given, is awaited by
    every job before it runs (tests use it to hold jobs in flight).
    """

    def __init__(
        self,
        llm_dir: Path,
        diffusion_dir: Path,
        *,
        accounts: dict[str, tuple[PaidAccount, int]] | None = None,
        max_in_flight: int = 4,
        gate: trio.Event | None = None,
    ) -> None:
        self.llm = LlmRunner(llm_dir)
        self.diffusion = DiffusionRunner(diffusion_dir)
        self._models: dict[str, tuple[ModelInfo, LlmRunner | DiffusionRunner]] = {}
        for runner, kind, context in (
            (self.llm, "llm", self.llm.context_length),
            (self.diffusion, "diffusion", 0),
        ):
            info = ModelInfo(
                id=model_id_text(runner.model.model_id),
                name=runner.model.manifest.name,
                kind=kind,
                context_length=context,
                created=CREATED,
            )
            self._models[info.id] = (info, runner)
        self.accounts = {k: Account(a, b) for k, (a, b) in (accounts or {}).items()}
        self.max_in_flight = max_in_flight
        self.in_flight = 0
        self.gate = gate
        self.job_started = trio.Event()
        self.job_ended = trio.Event()
        self.jobs: dict[str, dict] = {}
        self.requests: list[CompletionRequest | ImageRequest] = []

    # -- models ---------------------------------------------------------------------------

    def list_models(self) -> list[ModelInfo]:
        return [info for info, _ in self._models.values()]

    def resolve_model(self, name_or_id: str) -> ModelInfo | None:
        for info, _ in self._models.values():
            if name_or_id in (info.id, info.name):
                return info
        return None

    def _runner(self, model: str):
        entry = self._models.get(model)
        if entry is None:
            raise UnknownModel(f"no model {model}")
        return entry[1]

    def count_tokens(self, model: ModelInfo, text: str) -> int:
        runner = self._runner(model.id)
        try:
            return len(runner.tokenizer.encode(text))
        except ModelError as e:
            raise BadRequest(str(e), "prompt") from None

    def render_chat(self, model: ModelInfo, messages: list[dict]) -> str:
        turns = "".join(f"<{m['role']}>\n{m['content']}\n" for m in messages)
        return turns + "<assistant>\n"

    # -- jobs -----------------------------------------------------------------------------

    async def complete(
        self, req: CompletionRequest, on_text: TextCallback | None = None
    ) -> CompletionResult:
        runner = self._runner(req.model)
        assert isinstance(runner, LlmRunner)
        self.requests.append(req)
        ids = req.prompt_ids or runner.tokenizer.encode(req.prompt)
        try:
            runner.check_prompt(ids)
        except ModelError as e:
            raise BadRequest(str(e), "prompt") from None
        params = SamplingParams(
            temperature_milli=req.temperature_milli,
            top_k=req.top_k,
            top_p_milli=req.top_p_milli,
            max_tokens=req.max_tokens,
            stop=req.stop,
        )
        job_id = self._job_id(req)
        escrow = self._escrow(req.account, req.max_tokens * PRICE_PER_TOKEN)
        async with self._slot(job_id, req):
            generation = await self._generate(runner, ids, params, req, on_text)
        self._refund(req.account, escrow - len(generation.token_ids) * PRICE_PER_TOKEN)
        result = CompletionResult(
            job_id=job_id,
            model=req.model,
            text=generation.text,
            prompt_tokens=len(ids),
            completion_tokens=len(generation.token_ids),
            finish_reason=generation.finish_reason,
            worker=WORKER,
        )
        self.jobs[job_id].update(
            status="completed",
            completion_tokens=result.completion_tokens,
            output_sha256=hashlib.sha256(result.text.encode()).hexdigest(),
        )
        return result

    async def _generate(self, runner: LlmRunner, ids, params, req, on_text):
        seed = req.seed if req.seed is not None else 0
        if on_text is None:
            return await trio.to_thread.run_sync(runner.generate, ids, params, seed)
        stream = StreamText(req.stop)
        tokens: list[int] = []

        def on_token(event: TokenEvent) -> None:  # on the worker thread
            tokens.append(event.token_id)
            delta = stream.push(runner.tokenizer.decode(tokens))
            if delta:
                trio.from_thread.run(on_text, delta)

        generation = await trio.to_thread.run_sync(runner.generate, ids, params, seed, on_token)
        rest = stream.finish(generation.text)
        if rest:
            await on_text(rest)
        return generation

    async def generate_image(self, req: ImageRequest) -> ImageResult:
        runner = self._runner(req.model)
        assert isinstance(runner, DiffusionRunner)
        self.requests.append(req)
        params = req.diffusion_params(runner.model.manifest.default_diffusion)
        try:
            runner.check_params(params)
        except ModelError as e:
            param = "size" if "width" in str(e) or "height" in str(e) else "steps"
            raise BadRequest(str(e), param) from None
        job_id = self._job_id(req)
        self._escrow(req.account, params.steps * IMAGE_PRICE_PER_STEP)
        async with self._slot(job_id, req):
            seed = req.seed if req.seed is not None else 0
            image = await trio.to_thread.run_sync(runner.generate, req.prompt, params, seed)
        self.jobs[job_id].update(status="completed")
        return ImageResult(job_id=job_id, model=req.model, png=image.png, worker=WORKER)

    def _job_id(self, req) -> str:
        digest = hashlib.sha256(f"{len(self.jobs)}:{req!r}".encode()).hexdigest()
        return f"sha256:{digest}"

    @contextlib.asynccontextmanager
    async def _slot(self, job_id: str, req) -> AsyncIterator[None]:
        if self.in_flight >= self.max_in_flight:
            self._refund(req.account, 0)
            raise Overloaded(f"{self.in_flight} jobs in flight", retry_after_s=3)
        self.in_flight += 1
        self.jobs[job_id] = {
            "job_id": job_id,
            "status": "running",
            "model": req.model,
            "tier": req.tier,
            "worker": WORKER,
            "receipt": None,
            "verdicts": [],
            "certificate": None,
            "block_height": None,
        }
        self.job_started.set()
        try:
            if self.gate is not None:
                await self.gate.wait()
            yield
        finally:
            self.in_flight -= 1
            self.job_ended.set()

    def _escrow(self, account: PaidAccount | None, fee: int) -> int:
        if account is None:
            return 0
        held = self._account(account)
        if held.balance < fee:
            raise InsufficientFunds(
                f"the job costs up to {fee} units; {account.address} has {held.balance}"
            )
        held.balance -= fee
        return fee

    def _refund(self, account: PaidAccount | None, amount: int) -> None:
        if account is not None and amount > 0:
            self._account(account).balance += amount

    def _account(self, account: PaidAccount) -> Account:
        return next(a for a in self.accounts.values() if a.info == account)

    # -- views ----------------------------------------------------------------------------

    def job_view(self, job_id: str) -> dict | None:
        return self.jobs.get(job_id)

    def status(self) -> dict:
        return {
            "peers": 0,
            "height": 0,
            "finalized": None,
            "validators": [],
            "hosted_models": [info.id for info in self.list_models()],
            "queue": self.in_flight,
        }

    def metrics(self) -> list[Metric]:
        states: dict[str, float] = {"running": 0, "completed": 0}
        for job in self.jobs.values():
            states[job["status"]] += 1
        return [
            Metric.single("aipg_peers", "Connected peers", "gauge", 0),
            Metric.by_label(
                "aipg_jobs", "Jobs seen by this gateway, by state", "gauge", "state", states
            ),
        ]

    def authenticate(self, api_key: str) -> PaidAccount | None:
        held = self.accounts.get(api_key)
        return held.info if held else None


# -- fixtures ---------------------------------------------------------------------------

PAID_KEY = "sk-aipg-test-paid"
POOR_KEY = "sk-aipg-test-poor"
PAID = PaidAccount(address="aipg1paidclient", name="paid")
POOR = PaidAccount(address="aipg1poorclient", name="poor")


@pytest.fixture(scope="session")
def demo_models(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("api-demo")
    return build_demo_llm(root / "llm"), build_demo_diffusion(root / "diffusion")


def make_gateway(demo_models, **kwargs) -> RunnerGateway:
    accounts = {PAID_KEY: (PAID, 10**9), POOR_KEY: (POOR, 5)}
    return RunnerGateway(*demo_models, accounts=accounts, **kwargs)


@contextlib.asynccontextmanager
async def running_api(app) -> AsyncIterator[ApiAddress]:
    """Serve ``app`` with Hypercorn on 127.0.0.1, any port, for the block's duration."""
    async with trio.open_nursery() as nursery:
        address = await nursery.start(serve_api, app, "127.0.0.1", 0)
        try:
            yield address
        finally:
            nursery.cancel_scope.cancel()


class FakeClock:
    """Seconds for the rate limiter that only move when a test moves them."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def app_for(gateway, *, per_minute: int = 10_000, clock=None, **kwargs):
    return build_app(gateway, gateway, free_tier_per_minute=per_minute, clock=clock, **kwargs)
