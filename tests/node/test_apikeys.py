import json
import subprocess
import sys

import pytest

from aipg.node.apikeys import ApiKeyStore
from aipg.node.datadir import DataDir
from aipg.wire import Identity, KeyFileError, save_identity


def test_keys_are_stored_hashed_and_picked_up_by_a_running_store(tmp_path):
    gateway = DataDir.resolve(tmp_path / "gw")
    gateway.init()
    account = Identity.generate()
    save_identity(account, tmp_path / "client.key")
    running = ApiKeyStore(gateway)  # what a running gateway holds
    assert running.authenticate("aipg-sk-anything") is None

    key = ApiKeyStore(gateway).add("alice", tmp_path / "client.key")  # e.g. the CLI
    assert key not in (tmp_path / "gw" / "api_keys.json").read_text()
    client = running.authenticate(key)
    assert client is not None and client.address == str(account.address) and client.name == "alice"
    assert running.by_address(str(account.address)) == client
    assert running.authenticate(key + "x") is None
    assert running.authenticate("not-a-key") is None


def test_an_unreadable_account_key_is_refused_up_front(tmp_path):
    gateway = DataDir.resolve(tmp_path / "gw")
    gateway.init()
    with pytest.raises(KeyFileError):
        ApiKeyStore(gateway).add("bob", tmp_path / "missing.key")


def test_apikey_command(tmp_path):
    gateway = DataDir.resolve(tmp_path / "gw")
    gateway.init()
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "aipg.cli",
            "apikey",
            "--data-dir",
            str(gateway.root),
            "--account-key",
            str(gateway.key_file),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    key = r.stdout.strip()
    assert key.startswith("aipg-sk-")
    assert ApiKeyStore(gateway).authenticate(key) is not None
    assert len(json.loads((gateway.root / "api_keys.json").read_text())) == 1
