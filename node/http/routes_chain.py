"""The HTTP API's chain and model routes: accounts, transactions, blocks, and
publishing a model.

``GET /api/v1/accounts/{address}`` — balance, bond, unbonding, next nonce, and the
height from which a validator jailed for downtime may unjail (null when it is not).
``POST /api/v1/txs`` with ``{"tx": "<base64 of a signed Transaction>"}`` — checked
against the ledger (with the mempool ahead of it), kept and gossiped; a refused
transaction is a 400 saying why (the ledger's own words).
``GET /api/v1/blocks/{height}`` — a finalized block's header and contents, summarised.
``POST /api/v1/models/publish`` with ``{"path": "<model directory>"}`` — from the node's
own machine only: the node stores, hosts and announces the model.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
from pathlib import Path
from typing import Protocol

from starlette.requests import Request
from starlette.routing import Route

from aipg.models import ModelError
from aipg.node.services.catalog import KnownModel
from aipg.stake.chain import Chain
from aipg.stake.state import State
from aipg.stake.tx import Transaction
from aipg.stake.types import LedgerError
from aipg.wire import Address, WireError, decode, format_amount

from .request import read_json_object
from .responses import ApiError, error_response, invalid, json_response

MAX_TX_BODY = 64 * 1024
MAX_HEIGHT_DIGITS = 18  # any such height fits an int64


class ChainApi(Protocol):
    """What these routes read from and send to the chain (the chain service)."""

    chain: Chain

    @property
    def state(self) -> State: ...

    def next_nonce(self, address: bytes) -> int: ...

    async def submit_tx(self, tx: Transaction) -> bytes: ...


class ModelPublisher(Protocol):
    """What the publish route asks of the node's models (the model service)."""

    async def publish(self, path: Path) -> KnownModel: ...


def chain_routes(chain: ChainApi, models: ModelPublisher) -> list[Route]:
    """The routes, bound to the node's chain and model services."""

    async def account(request: Request):
        text = request.path_params["address"]
        try:
            address = Address.from_string(text)
        except WireError as e:
            return error_response(invalid(f"not an account address: {e}", "address"))
        s = chain.state
        acct = s.account(address.raw)
        bonded = unbonding = 0
        downtime_jailed_until = None
        for key, bond in s.bonds.items():
            if Address.from_public_key(key) == address:
                bonded = bond.stake
                unbonding = s.unbonding_total(key)
                downtime_jailed_until = s.downtime_jailed_until(key) or None
        return json_response(
            {
                "address": str(address),
                "balance": format_amount(acct.balance),
                "balance_units": acct.balance,
                "bonded": format_amount(bonded),
                "bonded_units": bonded,
                "unbonding": format_amount(unbonding),
                "unbonding_units": unbonding,
                "next_nonce": chain.next_nonce(address.raw),
                "height": s.height,
                "downtime_jailed_until": downtime_jailed_until,
            }
        )

    async def submit_tx(request: Request):
        try:
            body = await read_json_object(request, MAX_TX_BODY)
            raw = body.get("tx")
            if not isinstance(raw, str):
                raise invalid('expected {"tx": "<base64 of a signed transaction>"}', "tx")
            try:
                data = base64.b64decode(raw, validate=True)
            except (binascii.Error, ValueError):
                raise invalid("tx is not base64", "tx") from None
            try:
                tx = decode(data, Transaction)
            except WireError as e:
                raise invalid(f"not a transaction: {e}", "tx") from None
            try:
                txid = await chain.submit_tx(tx)
            except LedgerError as e:
                raise invalid(f"transaction refused: {e}", "tx", "tx_refused") from None
        except ApiError as e:
            return error_response(e)
        return json_response({"tx_id": txid.hex(), "accepted": True})

    async def block(request: Request):
        text = request.path_params["height"]
        # isascii: str.isdigit() also takes digits such as "²" that int() refuses
        if not (text.isascii() and text.isdigit()) or len(text) > MAX_HEIGHT_DIGITS:
            return error_response(invalid("a block height is a non-negative integer", "height"))
        height = int(text)
        fb = chain.chain.store.finalized(height) if height > 0 else None
        if fb is None:
            return error_response(
                ApiError(
                    404,
                    f"no finalized block at height {height}",
                    param="height",
                    code="block_not_found",
                )
            )
        b = fb.block
        return json_response(
            {
                "height": b.height,
                "hash": b.hash.hex(),
                "parent_hash": b.header.parent_hash.hex(),
                "time_ms": b.header.time_ms,
                "proposer": b.header.proposer.hex(),
                "vrf_proof": b.header.vrf_proof.hex(),
                "transactions": len(b.body.transactions),
                "certificates": [c.receipt.job_id.hex() for c in b.body.certificates],
                "frauds": [f.receipt.job_id.hex() for f in b.body.frauds],
                "double_signs": [e.vote_a.signer.hex() for e in b.body.double_signs],
                "equivocations": [e.receipt_a.job_id.hex() for e in b.body.equivocations],
                "commit_signers": len(fb.commit.precommits),
            }
        )

    async def publish(request: Request):
        try:
            peer = ipaddress.ip_address(request.client.host if request.client else "0.0.0.0")
        except ValueError:
            peer = ipaddress.ip_address("0.0.0.0")
        if not peer.is_loopback:
            return error_response(
                ApiError(403, "models are published from the node's own machine", code="forbidden")
            )
        try:
            body = await read_json_object(request, MAX_TX_BODY)
            path = body.get("path")
            if not isinstance(path, str) or not path:
                raise invalid('expected {"path": "<model directory>"}', "path")
            try:
                model = await models.publish(Path(path))
            except ModelError as e:
                raise invalid(f"cannot publish {path}: {e}", "path") from None
        except ApiError as e:
            return error_response(e)
        return json_response(
            {"model_id": model.id_text, "name": model.manifest.name, "kind": model.kind}
        )

    return [
        Route("/api/v1/models/publish", publish, methods=["POST"]),
        Route("/api/v1/blocks/{height}", block, methods=["GET"]),
        Route("/api/v1/accounts/{address}", account, methods=["GET"]),
        Route("/api/v1/txs", submit_tx, methods=["POST"]),
    ]
