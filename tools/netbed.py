"""Helper of tools/netbed.sh: plans the devnet, prints join commands, drives the API.

python tools/netbed.py plan ROOT N            # genesis, data dirs, demo models
python tools/netbed.py peer ROOT I            # node I's peer ID
python tools/netbed.py cmd ROOT I IP [BOOT..] # node I's join command (one line)
python tools/netbed.py status URL             # "height finalized_hash peers"
python tools/netbed.py job URL [TIMEOUT]      # a free completion, until certified
python tools/netbed.py block URL HEIGHT       # that block's hash
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
        ip, boot = args[2], args[3:]
        line = [
            sys.executable, "-m", "aipg.cli", "join",
            "--data-dir", node.data_dir, "--genesis", plan.genesis,
            "--listen", f"/ip4/{ip}/tcp/4001/ws", "--api", f"{ip}:8080", "--validator",
        ]  # fmt: skip
        for b in boot:
            line += ["--bootstrap", b]
        for m in node.host_models:
            line += ["--host-model", m]
        print(shlex.join(line))
    elif cmd == "status":
        s = httpx.get(f"{args[0]}/api/v1/status", timeout=5).json()
        print(s["height"], s["finalized_hash"], len(s["peers"]))
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
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=60) as http:
        llm = None
        while llm is None and time.monotonic() < deadline:
            models = http.get(f"{url}/v1/models").json()["data"]
            llm = next((m["id"] for m in models if m.get("kind") == "llm"), None)
            if llm is None:
                time.sleep(1)  # until a worker announces the demo LLM
        if llm is None:
            print("no worker serves the demo LLM", file=sys.stderr)
            return 1
        body = {"model": llm, "prompt": "the mesh heals", "max_tokens": 8, "temperature": 0}
        r = http.post(f"{url}/v1/completions", json=body)
        r.raise_for_status()
        reply = r.json()
        job_id = (reply.get("aipg") or {}).get("job_id")
        print("completion:", json.dumps(reply["choices"][0]["text"]), "job", job_id)
        while time.monotonic() < deadline:
            view = http.get(f"{url}/api/v1/jobs/{job_id}").json()
            if view.get("status") in ("certified", "paid"):
                print("job", job_id, view["status"], "worker", view.get("worker"))
                return 0
            if view.get("status") in ("fraud", "failed"):
                print("job", job_id, view["status"], file=sys.stderr)
                return 1
            time.sleep(1)  # polling another process over HTTP
    print("job not certified in time", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
