"""Model costs on chain, from a hosting node's side (D60).

A node that hosts a model can count its cost itself (``KnownModel.measured_cost``), so
it is the one that checks registrations of it: its mempool refuses a ``REGISTER_MODEL``
whose cost differs from the count (so it neither gossips nor proposes one), and it
registers the models it hosts that have no cost on chain yet, when its account can pay
the fee. The ledger cannot do either: it has no model files.
"""

from __future__ import annotations

import logging
from typing import Protocol

import trio

from aipg.models import ModelError
from aipg.models.cost import ModelCost, check_cost
from aipg.stake.state import State
from aipg.stake.tx import Transaction, TxKind
from aipg.stake.types import LedgerError
from aipg.wire import Identity, WireError, decode, encode

log = logging.getLogger(__name__)


class HostedModels(Protocol):
    def get(self, mid: bytes): ...
    def hosted(self) -> list: ...


class CostChain(Protocol):
    @property
    def state(self) -> State: ...
    async def submit_tx(self, tx: Transaction) -> bytes: ...


class ModelCosts:
    def __init__(self, identity: Identity, catalog: HostedModels, chain: CostChain, sign_tx):
        self.identity = identity
        self.catalog = catalog
        self.chain = chain
        self.sign_tx = sign_tx  # (identity, chain id, kind, **fields) -> pooled Transaction

    def check(self, tx: Transaction) -> None:
        """Raise LedgerError for a registration of a model hosted here whose cost is not
        what its files give."""
        if tx.kind != TxKind.REGISTER_MODEL:
            return
        model = self.catalog.get(tx.job_id)
        if model is None or model.model_dir is None:
            return
        try:
            claimed = decode(tx.memo, ModelCost)
            check_cost(model.model_dir, claimed, model.measured_cost())
        except (WireError, ModelError) as e:
            raise LedgerError(f"model {model.id_text}: {e}") from None

    def refresh(self) -> None:
        """After a block: mark each hosted model whose registered cost is not what its
        files give (the worker then serves it no more, the verifier votes BINDING on its
        jobs), and clear the mark when they agree."""
        state = self.chain.state
        for model in self.catalog.hosted():
            row = state.models.get(model.id)
            if row is None:
                model.cost_refused = ""
                continue
            try:
                check_cost(model.model_dir, decode(row.cost, ModelCost), model.measured_cost())
                model.cost_refused = ""
            except (WireError, ModelError) as e:
                model.cost_refused = f"the chain's cost of this model is wrong: {e}"
                log.warning("model %s: %s", model.id_text, model.cost_refused)

    async def register_hosted(self) -> list[bytes]:
        """Register each hosted model without a cost on chain (once the account can pay
        the fee). Returns the ids registered; a refusal (another node was first) is
        logged, not raised."""
        done = []
        for model in self.catalog.hosted():
            state = self.chain.state
            if model.id in state.models:
                continue
            fee = state.params.model_registration_fee
            if state.balance(self.identity.address) < fee:
                log.info("cannot pay the %d registration fee of %s", fee, model.id_text)
                continue
            try:
                cost = await trio.to_thread.run_sync(model.measured_cost)
                tx = self.sign_tx(
                    self.identity,
                    state.chain_id,
                    TxKind.REGISTER_MODEL,
                    amount=fee,
                    job_id=model.id,
                    memo=encode(cost),
                )
                await self.chain.submit_tx(tx)
            except (ModelError, LedgerError) as e:
                log.info("model %s not registered: %s", model.id_text, e)
                continue
            log.info("registered the cost of %s", model.id_text)
            done.append(model.id)
        return done
