"""`aipg-node init` and `keys` in temp data dirs, through real subprocesses."""

import base64
import json
import os
import stat
import subprocess
import sys

from aipg.wire import Identity

SPEC_KEY = bytes.fromhex(
    "080112407e0830617c4a7de83925dfb2694556b12936c477a0e1feb2e148ec9da60fee7d"
    "1ed1e8fae2c4a144b8be8fd4b47bf3d3b34b871c3cacf6010f0e42d474fce27e"
)


def aipg(*args, env=None, stdin=None):
    full_env = {k: v for k, v in os.environ.items() if k != "AIPG_DATA_DIR"} | (env or {})
    return subprocess.run(
        [sys.executable, "-m", "aipg.cli", *args],
        capture_output=True,
        text=True,
        env=full_env,
        input=stdin,
        timeout=60,
    )


def test_version_and_help():
    r = aipg("--version")
    assert r.returncode == 0 and r.stdout.startswith("aipg-node ")
    r = aipg("--help")
    assert r.returncode == 0 and "init" in r.stdout and "keys" in r.stdout
    r = aipg("keys", "import", "--help")
    assert r.returncode == 0 and "libp2p" in r.stdout


def test_init_creates_a_private_key_and_a_commented_config(tmp_path):
    d = tmp_path / "node"
    r = aipg("init", "--data-dir", str(d), "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["peer_id"].startswith("12D3KooW") and info["address"].startswith("aipg1")
    assert stat.S_IMODE((d / "node.key").stat().st_mode) == 0o600
    assert (d / "config.toml").read_text().startswith("# aipg-node configuration")
    assert (d / "blobs").is_dir()

    again = aipg("init", "--data-dir", str(d))
    assert again.returncode == 1
    assert "refusing to overwrite" in again.stderr and "Traceback" not in again.stderr

    show = aipg("keys", "show", "--json", env={"AIPG_DATA_DIR": str(d)})
    assert json.loads(show.stdout)["peer_id"] == info["peer_id"]


def test_loose_key_permissions_are_refused_with_the_fix(tmp_path):
    d = tmp_path / "node"
    assert aipg("init", "--data-dir", str(d)).returncode == 0
    os.chmod(d / "node.key", 0o640)
    r = aipg("keys", "show", "--data-dir", str(d))
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1 and "chmod 600" in r.stderr


def test_import_of_a_libp2p_key_and_export_round_trip(tmp_path):
    src = tmp_path / "libp2p.key"
    src.write_bytes(SPEC_KEY)
    d = tmp_path / "node"
    r = aipg("keys", "import", str(src), "--data-dir", str(d))
    assert r.returncode == 0, r.stderr
    assert "12D3KooWBtg3aaRMjxwedh83aGiUkwSxDwUZkzuJcfaqUmo7R3pq" in r.stdout

    exported = aipg("keys", "export", "--data-dir", str(d))
    assert base64.b64decode(exported.stdout) == SPEC_KEY

    refused = aipg("keys", "import", "-", "--data-dir", str(d), stdin=exported.stdout)
    assert refused.returncode == 1 and "--force" in refused.stderr

    other = base64.b64encode(Identity.from_seed(bytes(32)).to_libp2p_protobuf()).decode()
    forced = aipg("keys", "import", "-", "--force", "--data-dir", str(d), stdin=other)
    assert forced.returncode == 0, forced.stderr
    assert (
        str(Identity.from_seed(bytes(32)).peer_id)
        in aipg("keys", "show", "--data-dir", str(d)).stdout
    )

    out = tmp_path / "exported.key"
    assert aipg("keys", "export", "--out", str(out), "--data-dir", str(d)).returncode == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o600


def test_garbage_key_import_is_a_clear_error(tmp_path):
    r = aipg("keys", "import", "-", "--data-dir", str(tmp_path / "n"), stdin="not a key")
    assert r.returncode == 1
    assert "not a libp2p Ed25519 private key" in r.stderr and "Traceback" not in r.stderr


def test_missing_key_says_how_to_create_one(tmp_path):
    r = aipg("keys", "show", "--data-dir", str(tmp_path / "empty"))
    assert r.returncode == 1 and "aipg-node init" in r.stderr
