"""The namespace test bed end to end (tools/netbed.sh check): nodes on a bridge, two
behind NAT routers that masquerade, one public node a relay that corrupts every circuit
it forwards (``--fault-relay``); the NATed nodes catch it by their relay probes and hold
slots only on the others, a job completes and is certified, a partition of the
validators heals and every node ends on the same block. Needs root and network
namespaces; skipped (with the reason) where they are not available."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]

SCRIPT = Path(__file__).resolve().parents[2] / "tools" / "netbed.sh"


def _namespaces_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    if shutil.which("ip") is None:
        return "needs iproute2 (ip)"
    # one name per process: test workers collect this module at once, and a shared
    # name made the second one's probe fail ("File exists") and skip the test
    name = f"nb-pytest-probe-{os.getpid()}"
    probe = subprocess.run(["ip", "netns", "add", name], capture_output=True)
    if probe.returncode != 0:
        return f"cannot create network namespaces here: {probe.stderr.decode().strip()}"
    subprocess.run(["ip", "netns", "del", name], check=False)
    if subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.count(
        "nb-hub"
    ):
        return "another test bed is up (nb-hub exists); tools/netbed.sh down first"
    return None


UNAVAILABLE = _namespaces_unavailable()


@pytest.mark.skipif(UNAVAILABLE is not None, reason=str(UNAVAILABLE))
def test_jobs_partition_and_heal_across_namespaces_and_nat_past_a_bad_relay(tmp_path):
    env = dict(
        os.environ,
        NETBED_ROOT=str(tmp_path / "bed"),
        PYTHON=sys.executable,
        RELAY_FAULT="corrupt",
        BAD_RELAY="1",
    )
    run = subprocess.run(
        [str(SCRIPT), "check", "5", "2"], env=env, capture_output=True, text=True, timeout=1400
    )
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-4000:]
    assert "converged" in out and "check passed" in out
    assert "avoid the faulty relay node1" in out
    assert out.count("certified") + out.count("paid") >= 2  # a job before and after
