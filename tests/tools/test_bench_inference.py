"""bench/inference.py --quick prints the issue 14 figures as its last line, one JSON
object with the keys the report and docs/design.md (D84, D85, D87) quote. No figure is
asserted against a target: benchmarks are never timed assertions."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

BENCH = Path(__file__).resolve().parents[2] / "bench" / "inference.py"
KEYS = (
    "ttft_added_ms",  # paid, the latency route (D84)
    "ttft_added_ms_free",  # free, waits for its draw
    "ttft_scheduling_ms",
    "ttft_stream_ms",
    "ttft_scheduling_ms_free",
    "ttft_stream_ms_free",
    "tokens_per_s_ctx64",
    "tokens_per_s_ctx1024",
    "mac_ratio_ctx1024",
    "tokens_per_s_ratio",
    "ratio_over_mac",
    "ratio_over_mac_plain",
    "ratio_over_mac_qk",
    "chunk_bytes",
    "chunk_signature_bytes",
    "chunk_sign_us",
    "chunk_verify_us",
)


def test_the_quick_bench_prints_every_key():
    run = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--context-rounds", "1", "--ttft-rounds", "1"],
        capture_output=True,
        text=True,
        timeout=540,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    figures = json.loads(run.stdout.strip().splitlines()[-1])
    missing = [k for k in KEYS if k not in figures]
    assert not missing
    assert figures["ttft_rounds"] == 1 and figures["ctx_rounds"] == 1
    assert figures["chunk_signature_bytes"] == 96
    assert all(figures[k] > 0 for k in ("tokens_per_s_ctx64", "tokens_per_s_ctx1024"))
