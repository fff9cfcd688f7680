"""`aipg-node unjail` against a fake node API: clear refusals while it cannot work, and
a signed UNJAIL transaction once it can."""

import base64

import pytest

from aipg.cli import client_cmd
from aipg.cli.main import main
from aipg.node.datadir import DataDir
from aipg.stake.tx import Transaction, TxKind
from aipg.wire import decode


class FakeNode:
    """The two routes the command reads and the one it posts to."""

    def __init__(self, jailed_until, height):
        self.account = {"next_nonce": 3, "height": height, "downtime_jailed_until": jailed_until}
        self.posted = []

    def __call__(self, base_url, *args, **kwargs):
        return self

    def get(self, path):
        if path == "/api/v1/status":
            return {"chain_id": "aipg-test-1"}
        assert path.startswith("/api/v1/accounts/")
        return self.account

    def post(self, path, payload):
        self.posted.append((path, payload))
        return {"tx_id": "ab" * 32, "accepted": True}


@pytest.fixture
def data_dir(tmp_path):
    d = DataDir.resolve(tmp_path / "validator")
    d.init()
    return str(d.root)


def unjail(monkeypatch, data_dir, node):
    monkeypatch.setattr(client_cmd, "NodeClient", node)
    return main(["unjail", "--data-dir", data_dir, "--node", "http://fake"])


def test_unjail_while_still_jailed_says_until_when(monkeypatch, data_dir, capsys):
    node = FakeNode(jailed_until=130, height=100)
    assert unjail(monkeypatch, data_dir, node) == 1
    err = capsys.readouterr().err
    assert "cannot unjail yet: jailed for downtime until height 130 (the chain is at 100)" in err
    assert "try again in 30 block(s)" in err
    assert node.posted == []


def test_unjail_when_not_jailed_says_so(monkeypatch, data_dir, capsys):
    assert unjail(monkeypatch, data_dir, FakeNode(jailed_until=None, height=100)) == 1
    assert "not jailed for downtime" in capsys.readouterr().err


def test_unjail_after_the_period_sends_a_signed_unjail(monkeypatch, data_dir, capsys):
    node = FakeNode(jailed_until=130, height=130)
    assert unjail(monkeypatch, data_dir, node) == 0
    ((path, payload),) = node.posted
    tx = decode(base64.b64decode(payload["tx"]), Transaction)
    assert path == "/api/v1/txs" and tx.kind == TxKind.UNJAIL and tx.nonce == 3
    assert tx.signer == DataDir.resolve(data_dir).load_identity().public_bytes
    assert "unjail" in capsys.readouterr().out
