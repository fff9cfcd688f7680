"""Helper of tools/netbed.sh: plans the devnet, prints join commands, drives the API.

python tools/netbed.py plan ROOT N            # genesis, data dirs, demo models
python tools/netbed.py peer ROOT I            # node I's peer ID
python tools/netbed.py cmd ROOT I IP [BOOT..] # node I's join command (one line)
python tools/netbed.py status URL             # "height finalized_hash peers"
python tools/netbed.py job URL [TIMEOUT]      # a free completion, until certified
python tools/netbed.py block URL HEIGHT       # that block's hash
python tools/netbed.py reach URL              # "reachability relay_failures relay,relay"
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from pathlib import Path

import httpx

from aipg.devnet.plan import DevnetPlan, plan_devnet
from aipg.devnet.run import build_demo_models
from aipg.node.datadir import DataDir


def main(argv: list[str]) -> int:
    cmd, args = argv[0], argv[1:]
    if cmd == "plan":
        plan = plan_devnet(
            Path(args[0]), int(args[1]), block_time_ms=1000, build_models=build_demo_models
        )
        print(len(plan.nodes))
    elif cmd == "peer":
        plan = DevnetPlan.load(Path(args[0]))
        print(DataDir.resolve(plan.nodes[int(args[1])].data_dir).load_identity().peer_id)
    elif cmd == "cmd":
        plan = DevnetPlan.load(Path(args[0]))
        node = plan.nodes[int(args[1])]
        ip, role, boot = args[2], args[3], args[4:]
        line = [
            sys.executable, "-m", "aipg.cli", "join",
            "--data-dir", node.data_dir, "--genesis", plan.genesis,
            "--listen", f"/ip4/{ip}/tcp/4001/ws", "--api", f"{ip}:8080", "--validator",
        ]  # fmt: skip
        if role != "worker":
            line.append("--no-worker")  # hosts the models to verify and seed, runs no jobs
        for b in boot:
            line += ["--bootstrap", b]
        for m in node.host_models:
            line += ["--host-model", m]
        print(shlex.join(line))
    elif cmd == "status":
        s = httpx.get(f"{args[0]}/api/v1/status", timeout=5).json()
        print(s["height"], s["finalized_hash"], len(s["peers"]))
    elif cmd == "reach":
        r = httpx.get(f"{args[0]}/api/v1/status", timeout=5).json()["reach"]
        print(r["reachability"], r["relay_failures"], ",".join(r["relays"]) or "-")
    elif cmd == "block":
        b = httpx.get(f"{args[0]}/api/v1/blocks/{args[1]}", timeout=5).json()
        print(json.dumps(b.get("hash") or b.get("block_hash") or b, sort_keys=True)[:200])
    elif cmd == "job":
        timeout = float(args[1]) if len(args) > 1 else 180
        return job(args[0], timeout)
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


def job(url: str, timeout: float) -> int:
    """A completion and an image (its committee fetches the worker's latents), each
    until its receipt is certified; prints each job's worker."""
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=120) as http:
        kinds: dict[str, str] = {}
        while len(kinds) < 2 and time.monotonic() < deadline:
            kinds = {m.get("kind"): m["id"] for m in http.get(f"{url}/v1/models").json()["data"]}
            kinds = {k: v for k, v in kinds.items() if k in ("llm", "diffusion")}
            if len(kinds) < 2:
                time.sleep(1)  # until workers announce both demo models
        if len(kinds) < 2:
            print("no worker serves the demo models", file=sys.stderr)
            return 1
        llm = {"model": kinds["llm"], "prompt": "the mesh heals", "max_tokens": 8, "temperature": 0}
        image = {"model": kinds["diffusion"], "prompt": "a lighthouse", "seed": 3}
        for path, body in (("/v1/completions", llm), ("/v1/images/generations", image)):
            r = http.post(f"{url}{path}", json=body)
            if r.status_code != 200:
                print(f"{path}: {r.status_code} {r.text[:300]}", file=sys.stderr)
                return 1
            job_id = (r.json().get("aipg") or {}).get("job_id")
            if not wait_certified(http, url, job_id, deadline):
                return 1
    return 0


def wait_certified(http: httpx.Client, url: str, job_id: str, deadline: float) -> bool:
    while time.monotonic() < deadline:
        view = http.get(f"{url}/api/v1/jobs/{job_id}").json()
        if view.get("status") in ("certified", "paid"):
            print("job", job_id, view["status"], "worker", view.get("worker"))
            return True
        if view.get("status") in ("fraud", "failed", "reviewing", "slashed"):
            print("job", job_id, view["status"], json.dumps(view)[:500], file=sys.stderr)
            return False
        time.sleep(1)  # polling another process over HTTP
    print(f"job {job_id} not certified in time", file=sys.stderr)
    return False


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
