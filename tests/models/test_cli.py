"""`aipg-node models ...` through real subprocesses."""

import hashlib
import json
import subprocess
import sys


def models(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "aipg.cli", "models", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
    )


def test_build_run_check_add_list(tmp_path):
    r = models("build-demo", str(tmp_path / "demo"), "--json")
    assert r.returncode == 0, r.stderr
    built = json.loads(r.stdout)
    llm, diffusion = built["llm"]["dir"], built["diffusion"]["dir"]

    r = models("run", llm, "--prompt", "Hello node", "--max-tokens", "12", "--seed", "3", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert len(out["tokens"]) == 12 and out["output_hash"].startswith("sha256:")
    again = models(
        "run",
        llm,
        "--prompt",
        "Hello node",
        "--max-tokens",
        "12",
        "--seed",
        "3",
        "--threads",
        "2",
        "--json",
    )
    assert json.loads(again.stdout)["output_hash"] == out["output_hash"]

    png = tmp_path / "img.png"
    r = models("run", diffusion, "--prompt", "a kite", "--steps", "3", "--out", str(png), "--json")
    assert r.returncode == 0, r.stderr
    image = json.loads(r.stdout)
    assert image["output_hash"] == "sha256:" + hashlib.sha256(png.read_bytes()).hexdigest()

    for model in (llm, diffusion):
        r = models("check", model, "--json")
        report = json.loads(r.stdout)
        assert r.returncode == 0 and report["ok"], r.stdout
        assert report["same_run_equal"] and report["threads_equal"]

    data = str(tmp_path / "node")
    assert models("add", llm, "--data-dir", data).stdout.strip() == built["llm"]["model_id"]
    listed = json.loads(models("list", "--data-dir", data, "--json").stdout)["models"]
    assert [m["model_id"] for m in listed] == [built["llm"]["model_id"]]


def test_errors_are_one_line(tmp_path):
    r = models("run", str(tmp_path), "--prompt", "x")
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "manifest.json" in r.stderr
    models("build-demo", str(tmp_path / "d"))
    llm = str(tmp_path / "d" / "llm")
    r = models("run", llm, "--prompt", "x", "--max-tokens", "1000000000")
    assert r.returncode == 1 and "max_tokens" in r.stderr and "Traceback" not in r.stderr
    r = models("run", llm, "--prompt", "x", "--steps", "4")
    assert r.returncode == 1 and "--steps" in r.stderr
    r = models("run", llm, "--prompt", "x", "--temperature", "0.0001")
    assert r.returncode == 1 and "--temperature" in r.stderr
    (tmp_path / "d" / "llm" / "model.onnx").write_bytes(b"broken")
    r = models("check", llm)
    assert r.returncode == 1 and "sha256" in r.stdout and "FAILED" in r.stdout


def test_progress_bar_draws_on_a_terminal_only():
    import io

    from aipg.cli.models_cmd import ProgressBar

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    term = Terminal()
    bar = ProgressBar(term)
    for done in (0, 1 << 20, 3 << 20):
        bar.update(done, 3 << 20)
    bar.finish()
    lines = term.getvalue().split("\r")[1:]
    assert lines[0].startswith("[" + "." * 30 + "]   0%")
    assert lines[1].startswith("[" + "#" * 10 + "." * 20 + "]  33%  1.0/3.0 MiB")
    assert lines[2] == "[" + "#" * 30 + "] 100%  3.0/3.0 MiB\n"
    quiet = io.StringIO()
    ProgressBar(quiet).update(1, 2)
    assert quiet.getvalue() == ""


def test_check_reports_outputs_that_differ_across_thread_counts(
    tmp_path, llm_dir, monkeypatch, capsys
):
    import numpy as np

    from aipg.cli import models_cmd
    from aipg.models import LlmRunner

    honest_prefill = LlmRunner.prefill

    def two_threads_drift(self, token_ids):
        logits = honest_prefill(self, token_ids)
        return logits + np.float32(1e-6) if self.factory.threads == 2 else logits

    monkeypatch.setattr(LlmRunner, "prefill", two_threads_drift)
    assert models_cmd.main(["models", "check", str(llm_dir), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["same_run_equal"] and not report["threads_equal"] and not report["ok"]
