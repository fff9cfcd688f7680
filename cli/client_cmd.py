"""Commands that talk to a running node's HTTP API: status, balance, transfer, stake,
unstake, unjail, submit.

Signed transactions are built and signed here, with the key in ``--data-dir`` (the
node's own key doubles as its account), and sent to the node, which checks them
against the ledger and gossips them. ``--node`` (or ``AIPG_NODE``) says which node.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import time
from typing import Any

import httpx

from aipg.node.datadir import DataDir
from aipg.wire import Address, Identity, format_amount, parse_amount

from .errors import CliError

DEFAULT_NODE = "http://127.0.0.1:8080"


def add_parser(sub: argparse._SubParsersAction, data_dir_parent: argparse.ArgumentParser) -> None:
    node_parent = argparse.ArgumentParser(add_help=False)
    node_parent.add_argument(
        "--node",
        metavar="URL",
        default=os.environ.get("AIPG_NODE", DEFAULT_NODE),
        help=f"the node's HTTP API (default: $AIPG_NODE or {DEFAULT_NODE})",
    )
    signed = [data_dir_parent, node_parent]

    p = sub.add_parser(
        "status",
        parents=[node_parent],
        help="peers, height, validators, models and queue of a node",
    )
    p.add_argument("--json", action="store_true", help="print the raw JSON")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("balance", parents=signed, help="balance, stake and nonce of an account")
    p.add_argument("address", nargs="?", help="account address (default: the key in --data-dir)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_balance)

    p = sub.add_parser("transfer", parents=signed, help="send AIPG to an address")
    p.add_argument("recipient", metavar="ADDRESS")
    p.add_argument("amount", metavar="AMOUNT", help="in AIPG, e.g. 12.5")
    p.add_argument(
        "--fee", default="0.001", help="fee paid to the block proposer (AIPG, default 0.001)"
    )
    p.set_defaults(func=cmd_transfer)

    p = sub.add_parser(
        "stake",
        parents=signed,
        help="bond AIPG to become (or stay) a validator",
        description="Bond AMOUNT AIPG from the account of --data-dir's key. A validator needs at least "
        "10,000 AIPG bonded; the bond votes from the next epoch on.",
    )
    p.add_argument("amount", metavar="AMOUNT")
    p.add_argument("--fee", default="0.001")
    p.set_defaults(func=cmd_stake)

    p = sub.add_parser(
        "unstake",
        parents=signed,
        help="start unbonding AIPG (released after the unbonding period)",
    )
    p.add_argument("amount", metavar="AMOUNT")
    p.add_argument("--fee", default="0.001")
    p.set_defaults(func=cmd_unstake)

    p = sub.add_parser(
        "unjail",
        parents=signed,
        help="bring a validator jailed for downtime back (after its jail period)",
        description="Send UNJAIL, signed with --data-dir's key. A validator that missed too many "
        "blocks is jailed for the chain's downtime jail period; once that is over, this returns it "
        "to the validator set from the next epoch boundary. Run the node with --validator first, "
        "or it is jailed again.",
    )
    p.add_argument("--fee", default="0.001")
    p.set_defaults(func=cmd_unjail)

    p = sub.add_parser(
        "publish",
        parents=[node_parent],
        help="publish a model directory: the node stores, hosts and announces it",
        description="Hand MODEL_DIR (a manifest.json and its files) to the node running on this "
        "machine: it checks every file's hash, stores the files, hosts the model and announces it "
        "on the mesh, from where other nodes fetch it (`aipg-node join --host-model MODEL_ID`).",
    )
    p.add_argument("model_dir", metavar="MODEL_DIR")
    p.set_defaults(func=cmd_publish)

    p = sub.add_parser(
        "submit",
        parents=[node_parent],
        help="run a job on the network and print the result (and its verification)",
        description="Send a job through the node's OpenAI-compatible API. With --wait-verified, wait "
        "until the receipt is certified by its committee and included in a finalized block.",
    )
    p.add_argument("--model", required=True, help="model id (sha256:...) or name")
    p.add_argument("--prompt", required=True)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--seed", type=int)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--tier", choices=("free", "paid"), default="free")
    p.add_argument(
        "--api-key", default=os.environ.get("AIPG_API_KEY"), help="paid tier key (or $AIPG_API_KEY)"
    )
    p.add_argument(
        "--out", metavar="FILE", help="image jobs: where to write the PNG (default: <job id>.png)"
    )
    p.add_argument(
        "--wait-verified", action="store_true", help="wait for the certificate and the block"
    )
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait (default 120)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_submit)


# --------------------------------------------------------------------------- http


class NodeClient:
    """A small synchronous client for one node's API; errors become CliError."""

    def __init__(self, base_url: str, api_key: str | None = None, timeout: float = 60.0):
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.base_url = base_url.rstrip("/")
        self.http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)

    def request(self, method: str, path: str, **kw: Any) -> Any:
        try:
            r = self.http.request(method, path, **kw)
        except httpx.HTTPError as e:
            raise CliError(
                f"cannot reach the node at {self.base_url} ({e}); is `aipg-node join --api` running?"
            ) from None
        try:
            body = r.json()
        except ValueError:
            body = None
        if r.status_code >= 400:
            err = (body or {}).get("error", {}) if isinstance(body, dict) else {}
            raise CliError(err.get("message") or f"the node answered HTTP {r.status_code}")
        return body

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def post(self, path: str, payload: dict) -> Any:
        return self.request("POST", path, json=payload)


def _identity(args: argparse.Namespace) -> Identity:
    return DataDir.resolve(args.data_dir).load_identity()


def _account(client: NodeClient, address: str) -> dict:
    return client.get(f"/api/v1/accounts/{address}")


def _send_tx(args: argparse.Namespace, kind: str, **fields: Any) -> dict:
    """Build, sign and submit one transaction; returns the node's answer."""
    from aipg.stake.tx import TxKind, make_tx  # the ledger's one way to build a tx

    identity = _identity(args)
    client = NodeClient(args.node)
    status = client.get("/api/v1/status")
    account = _account(client, str(identity.address))
    tx = make_tx(
        identity,
        status["chain_id"],
        TxKind[kind],
        account["next_nonce"],
        fee=parse_amount(args.fee),
        **fields,
    )
    return client.post("/api/v1/txs", {"tx": base64.b64encode(tx.encode()).decode()})


# ------------------------------------------------------------------------ commands


def cmd_status(args: argparse.Namespace) -> int:
    s = NodeClient(args.node).get("/api/v1/status")
    if args.json:
        print(json.dumps(s, indent=2))
        return 0
    print(f"node        {s.get('peer_id')}")
    print(
        f"chain       {s.get('chain_id')}  height {s.get('height')}  finalized {s.get('finalized_hash', '')[:16]}"
    )
    for addr in s.get("listen", []):  # what other operators pass as --bootstrap
        print(f"listening   {addr}/p2p/{s.get('peer_id')}")
    print(f"peers       {len(s.get('peers', []))}")
    vals = s.get("validators", [])
    print(f"validators  {len(vals)} (total stake {s.get('total_stake', '?')} AIPG)")
    for m in s.get("hosted_models", []):
        print(f"hosting     {m}")
    print(f"queue       {s.get('queue', 0)} job(s)")
    return 0


def cmd_balance(args: argparse.Namespace) -> int:
    address = args.address or str(_identity(args).address)
    Address.from_string(address)  # clear error on a typo before asking the node
    a = _account(NodeClient(args.node), address)
    if args.json:
        print(json.dumps(a))
        return 0
    print(f"address    {address}")
    print(f"balance    {a['balance']} AIPG")
    print(f"bonded     {a['bonded']} AIPG")
    print(f"unbonding  {a['unbonding']} AIPG")
    print(f"nonce      {a['next_nonce']}")
    return 0


def _print_tx_answer(answer: dict, what: str) -> int:
    print(f"{what}: tx {answer['tx_id']} accepted into the mempool (next block)")
    return 0


def cmd_transfer(args: argparse.Namespace) -> int:
    recipient = Address.from_string(args.recipient)
    amount = parse_amount(args.amount)
    answer = _send_tx(args, "TRANSFER", amount=amount, recipient=recipient)
    return _print_tx_answer(answer, f"transfer of {format_amount(amount)} AIPG to {recipient}")


def cmd_stake(args: argparse.Namespace) -> int:
    amount = parse_amount(args.amount)
    client = NodeClient(args.node)
    status = client.get("/api/v1/status")
    identity = _identity(args)
    account = _account(client, str(identity.address))
    minimum = int(status["min_validator_stake_units"])
    bonded = int(account["bonded_units"])
    if bonded + amount < minimum:
        raise CliError(
            f"cannot bond {format_amount(amount)} AIPG: a validator needs at least "
            f"{format_amount(minimum)} AIPG (you have {format_amount(bonded)} bonded)"
        )
    if amount > int(account["balance_units"]):
        raise CliError(
            f"cannot bond {format_amount(amount)} AIPG: the balance is {account['balance']} AIPG"
        )
    answer = _send_tx(args, "BOND", amount=amount)
    return _print_tx_answer(answer, f"bond of {format_amount(amount)} AIPG")


def cmd_unstake(args: argparse.Namespace) -> int:
    amount = parse_amount(args.amount)
    client = NodeClient(args.node)
    account = _account(client, str(_identity(args).address))
    if amount > int(account["bonded_units"]):
        raise CliError(
            f"cannot unbond {format_amount(amount)} AIPG: you have {account['bonded']} AIPG bonded"
        )
    answer = _send_tx(args, "UNBOND", amount=amount)
    return _print_tx_answer(answer, f"unbonding of {format_amount(amount)} AIPG")


def cmd_unjail(args: argparse.Namespace) -> int:
    account = _account(NodeClient(args.node), str(_identity(args).address))
    until, height = account.get("downtime_jailed_until"), int(account["height"])
    if until is None:
        raise CliError("cannot unjail: this validator is not jailed for downtime (nothing to do)")
    if height < until:
        raise CliError(
            f"cannot unjail yet: jailed for downtime until height {until} (the chain is at "
            f"{height}); try again in {until - height} block(s)"
        )
    answer = _send_tx(args, "UNJAIL")
    return _print_tx_answer(answer, "unjail (a validator again from the next epoch boundary)")


def cmd_publish(args: argparse.Namespace) -> int:
    path = os.path.abspath(args.model_dir)
    if not os.path.isfile(os.path.join(path, "manifest.json")):
        raise CliError(f"{args.model_dir} is not a model directory (no manifest.json)")
    r = NodeClient(args.node).post("/api/v1/models/publish", {"path": path})
    print(f"published {r['name']} ({r['kind']}): {r['model_id']}")
    print(
        f"other nodes can host it with: aipg-node join --host-model {r['model_id']}",
        file=sys.stderr,
    )
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    if args.tier == "paid" and not args.api_key:
        raise CliError("the paid tier needs an API key: pass --api-key or set AIPG_API_KEY")
    client = NodeClient(
        args.node, args.api_key if args.tier == "paid" else None, timeout=args.timeout
    )
    models = client.get("/v1/models")["data"]
    model = next((m for m in models if args.model in (m["id"], m.get("name"))), None)
    if model is None:
        raise CliError(
            f"unknown model {args.model!r}; the node serves: {', '.join(m.get('name', m['id']) for m in models)}"
        )
    out: dict[str, Any] = {}
    if model.get("kind") == "diffusion":
        body = {"model": model["id"], "prompt": args.prompt, "response_format": "b64_json", "n": 1}
        if args.seed is not None:
            body["seed"] = args.seed
        r = client.post("/v1/images/generations", body)
        job_id = (r.get("aipg") or {}).get("job_id", "")
        png = base64.b64decode(r["data"][0]["b64_json"])
        path = args.out or f"{job_id}.png"
        with open(path, "wb") as f:
            f.write(png)
        out |= {"job_id": job_id, "image": path}
    else:
        body = {
            "model": model["id"],
            "prompt": args.prompt,
            "max_tokens": args.max_tokens,
            "temperature": args.temperature,
        }
        if args.seed is not None:
            body["seed"] = args.seed
        r = client.post("/v1/completions", body)
        job_id = (r.get("aipg") or {}).get("job_id", "")
        out |= {"job_id": job_id, "text": r["choices"][0]["text"], "usage": r.get("usage")}
    if args.wait_verified:
        out["job"] = _wait_verified(client, job_id, args.timeout)
    if args.json:
        print(json.dumps(out))
        return 0
    if "text" in out:
        print(out["text"])
    else:
        print(f"image written to {out['image']}")
    print(f"job {job_id}", file=sys.stderr)
    if "job" in out:
        j = out["job"]
        votes = ", ".join(
            f"{v['validator'][:12]}…={'valid' if v['valid'] else 'INVALID'}"
            for v in j.get("verdicts", [])
        )
        print(
            f"receipt {j['receipt']['id'][:16]}… by worker {j['receipt']['worker'][:16]}…",
            file=sys.stderr,
        )
        print(f"verdicts: {votes}", file=sys.stderr)
        print(f"certified in block {j['block_height']}", file=sys.stderr)
    return 0


def _wait_verified(client: NodeClient, job_id: str, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        j = client.get(f"/api/v1/jobs/{job_id}")
        if j.get("block_height") is not None:
            return j
        if j.get("status") in ("fraud", "failed"):
            raise CliError(f"job {job_id} ended as {j['status']}: {j.get('reason', '')}")
        time.sleep(0.5)  # polling a remote node over HTTP
    raise CliError(f"job {job_id} was not certified in a finalized block within {timeout:.0f} s")
