"""bench/inference.py --quick prints the issue 14 figures as its last line, one JSON
object with the keys the report and docs/design.md (D84, D85, D87, D91) quote. No figure is
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
    "ratio_over_mac_kq",  # the Concat layout, ping-pong bound (D87); the headline is GQA (D91)
    "ratio_over_mac_plain",
    "ratio_over_mac_qk",
    "shared_kv_speedup_ctx1024",
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


def test_the_context_only_bench_prints_the_context_figure_alone():
    run = subprocess.run(
        [sys.executable, str(BENCH), "--context-only", "--context-rounds", "1"],
        capture_output=True,
        text=True,
        timeout=540,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    figures = json.loads(run.stdout.strip().splitlines()[-1])
    assert figures["ctx_rounds"] == 1 and figures["ratio_over_mac"] > 0
    assert "ratio_over_mac_kq" in figures and "ttft_added_ms" not in figures
