"""`aipg-node models import` and `models run --messages` through real subprocesses, on
exports the test kit writes: an operator's path from an export to a stored model."""

from __future__ import annotations

import json
import subprocess
import sys

from tokenizers import Tokenizer as HfTokenizer

from aipg.models import LlmRunner, SamplingParams
from aipg.testing.hf_exports import write_llm_export

CHAT = [
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": "What does the grid pay for?"},
]


def models(*args):
    return subprocess.run(
        [sys.executable, "-m", "aipg.cli", "models", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_import_run_messages_check_add(tmp_path):
    src = write_llm_export(tmp_path / "export", layout="split", style="chatml")
    out = tmp_path / "model"
    r = models("import", str(src), "--out", str(out), "--json")
    assert r.returncode == 0, r.stderr
    imported = json.loads(r.stdout)
    assert imported["dir"] == str(out) and imported["name"] == "tiny-random-chatml"
    assert (imported["kv_heads"], imported["layers"], imported["eos_ids"]) == (2, 2, [2, 0])
    assert imported["tokenizer"] == "tokenizers" and imported["chat_template"] is True

    messages = tmp_path / "chat.json"
    messages.write_text(json.dumps(CHAT))
    r = models("run", str(out), "--messages", str(messages), "--max-tokens", "6", "--json")
    assert r.returncode == 0, r.stderr
    ran = json.loads(r.stdout)
    rendered = (
        "<|im_start|>system\nAnswer briefly.<|im_end|>\n"
        "<|im_start|>user\nWhat does the grid pay for?<|im_end|>\n<|im_start|>assistant\n"
    )
    lib = HfTokenizer.from_file(str(out / "tokenizer.json"))
    assert ran["prompt_ids"] == lib.encode(rendered, add_special_tokens=False).ids
    runner = LlmRunner(out)
    want = runner.generate(ran["prompt_ids"], SamplingParams(max_tokens=6), seed=0)
    assert ran["tokens"] == want.token_ids and ran["model_id"] == imported["model_id"]

    r = models("check", str(out), "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["ok"], r.stdout
    data = str(tmp_path / "node")
    r = models("add", str(out), "--data-dir", data)
    assert r.returncode == 0 and r.stdout.strip() == imported["model_id"], r.stderr
    listed = json.loads(models("list", "--data-dir", data, "--json").stdout)["models"]
    assert [m["model_id"] for m in listed] == [imported["model_id"]]


def test_import_errors_are_one_line(tmp_path):
    r = models("import", str(tmp_path))
    assert r.returncode == 1 and r.stderr.count("\n") == 1
    assert "not an optimum or diffusers export" in r.stderr
    src = write_llm_export(tmp_path / "export", config_changes={"num_key_value_heads": 1})
    r = models("import", str(src))
    assert r.returncode == 1 and "num_key_value_heads" in r.stderr and "Traceback" not in r.stderr
    assert not (src / "manifest.json").exists()

    good = write_llm_export(tmp_path / "good")
    assert models("import", str(good)).returncode == 0  # in place
    bad = tmp_path / "bad.json"
    bad.write_text("[{]")
    r = models("run", str(good), "--messages", str(bad))
    assert r.returncode == 1 and "not valid JSON" in r.stderr
    bad.write_text(json.dumps([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]))
    r = models("run", str(good), "--messages", str(bad))
    assert r.returncode == 1 and "Conversation roles must alternate" in r.stderr
    r = models("run", str(good), "--messages", str(bad), "--prompt", "x")
    assert r.returncode == 2 and "not allowed with" in r.stderr
