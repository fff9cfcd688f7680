"""Models on chain: each model's cost, registered once, and the work a certificate is
paid for, computed from that cost and the receipt's counts.

A ``REGISTER_MODEL`` transaction names the model (``job_id`` holds its id), carries its
:class:`~aipg.models.cost.ModelCost` encoded in ``memo`` and burns at least
``model_registration_fee`` (``amount``), so the registry cannot be flooded. The first
registration of a model id stands; a cost never changes (a new version of a model is a
new model id). The ledger cannot count MACs, having no model files: nodes that host the
model recompute the cost and refuse a wrong registration (the mempool and their
committee votes, ``check_cost``); a worker serves only models whose registered cost it
agrees with, so an honest worker is never convicted over a cost somebody else lied about.

The work a certificate earns (:func:`certified_work`) is never the receipt's
``work_units``: it is the registered cost applied to the receipt's counts, and the counts
are bounded by the registered limits (prompt and total tokens from the context length;
steps and latent pixels). A model nobody registered earns no pool share (its paid jobs
still get their fees).
"""

from __future__ import annotations

from aipg.models.cost import (
    COST_KIND_DIFFUSION,
    COST_KIND_LLM,
    ModelCost,
    diffusion_job_macs,
    llm_job_macs,
    work_units_of,
)
from aipg.pouw import Job, Receipt
from aipg.wire import WireError, decode

from .money import debit
from .state import RegisteredModel, State
from .tx import Transaction
from .types import LedgerError

__all__ = [
    "certified_work",
    "check_register_model",
    "register_model",
    "registered_cost",
]


def registered_cost(s: State, model_id: bytes) -> ModelCost | None:
    """The cost registered for ``model_id``, or None."""
    row = s.models.get(model_id)
    if row is None:
        return None
    cache = s.__dict__.setdefault("_costs", {})
    cost = cache.get(row.cost)
    if cost is None:
        cost = cache[row.cost] = decode(row.cost, ModelCost)
    return cost


def _cost_of(tx: Transaction) -> ModelCost:
    try:
        return decode(tx.memo, ModelCost)
    except WireError as e:
        raise LedgerError(f"the memo is not a ModelCost: {e}") from None


def check_register_model(s: State, tx: Transaction) -> None:
    cost = _cost_of(tx)
    mid = tx.job_id.hex()[:16]
    if cost.model_id != tx.job_id:
        raise LedgerError(f"the cost is for another model than {mid}")
    if tx.job_id in s.models:
        raise LedgerError(f"model {mid} is already registered; a cost never changes")
    if tx.amount < s.params.model_registration_fee:
        raise LedgerError(
            f"a registration burns at least {s.params.model_registration_fee}, not {tx.amount}"
        )
    if cost.kind == COST_KIND_LLM:
        if cost.token_macs == 0 or not 0 < cost.max_prompt_tokens < cost.max_total_tokens:
            raise LedgerError("an LLM cost needs token MACs and prompt < total token limits")
    elif cost.step_pixel + cost.step_fixed == 0 or not cost.max_steps or not cost.max_latent_pixels:
        raise LedgerError("a diffusion cost needs step MACs and step and pixel limits")


def register_model(s: State, tx: Transaction) -> None:
    debit(s, tx.sender, tx.amount)
    s.burned += tx.amount
    s.put("models", tx.job_id, RegisteredModel(tx.memo, tx.signer, s.height))


def certified_work(s: State, job: Job, receipt: Receipt) -> int:
    """The work units ``receipt`` earns for ``job`` under the model's registered cost;
    0 for a model nobody registered. Raises LedgerError when the receipt's counts are
    outside the model's registered limits."""
    cost = registered_cost(s, job.model_id)
    if cost is None:
        return 0
    if job.llm is not None:
        if cost.kind != COST_KIND_LLM:
            raise LedgerError("an LLM job for a model registered as diffusion")
        n, m = receipt.prompt_tokens, receipt.output_tokens
        if n > cost.max_prompt_tokens or n + m > cost.max_total_tokens:
            raise LedgerError(
                f"{n} prompt + {m} output tokens is over the model's limits "
                f"({cost.max_prompt_tokens} prompt, {cost.max_total_tokens} in all)"
            )
        return work_units_of(llm_job_macs(cost, n, m))
    assert job.diffusion is not None
    if cost.kind != COST_KIND_DIFFUSION:
        raise LedgerError("a diffusion job for a model registered as an LLM")
    f = max(1, cost.vae_scale_factor)
    pixels = (job.diffusion.width // f) * (job.diffusion.height // f)
    if receipt.latent_pixels != pixels:
        raise LedgerError(f"claims {receipt.latent_pixels} latent pixels; the job's are {pixels}")
    if receipt.steps > cost.max_steps or receipt.latent_pixels > cost.max_latent_pixels:
        raise LedgerError(
            f"{receipt.steps} steps over {receipt.latent_pixels} latent pixels is over the "
            f"model's limits ({cost.max_steps} steps, {cost.max_latent_pixels} pixels)"
        )
    guided = job.diffusion.guidance_milli > 1000
    return work_units_of(diffusion_job_macs(cost, receipt.steps, receipt.latent_pixels, guided))
