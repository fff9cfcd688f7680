import argparse
import re

import pytest

from aipg.cli import chain_cmd
from aipg.stake.genesis import (
    MAINNET_PARAMS,
    Genesis,
    GenesisError,
    genesis_from_toml,
    genesis_to_toml,
    load_genesis,
    make_genesis,
)
from aipg.wire import UNITS_PER_AIPG, Identity, decode, encode

AIPG = UNITS_PER_AIPG


def _ident(i: int) -> Identity:
    return Identity.from_seed(bytes([i]) * 32)


def _genesis(**kw) -> Genesis:
    return make_genesis(
        "aipg-test-1",
        operations_wallet=_ident(9).address,
        allocations=[(_ident(1).address, 1_000 * AIPG), (_ident(2).address, 5)],
        validators=[(_ident(3).public_bytes, 10_000 * AIPG, "v3")],
        **kw,
    )


def test_toml_round_trip_is_identical():
    g = _genesis()
    assert genesis_from_toml(genesis_to_toml(g)) == g
    assert decode(encode(g), Genesis) == g
    assert g.supply == 11_000 * AIPG + 5


def test_params_override_and_defaults():
    g = _genesis(params=MAINNET_PARAMS.replace(target_block_time_ms=1_000))
    back = genesis_from_toml(genesis_to_toml(g))
    assert back.params.target_block_time_ms == 1_000
    assert back.params.block_reward == 500 * AIPG


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t.replace('\nstake = "10000"', '\nstake = "9999"'), "at least 10,000"),
        (lambda t: t.replace("chain_id", "chain"), "missing key"),
        (lambda t: re.sub(r'amount = "[^"]*"', "amount = 5", t, count=1), "quoted AIPG"),
        (lambda t: t.replace("aipg1", "aipg2", 1), "address"),
        (lambda t: t + "\nnonsense = [", "TOML"),
        (lambda t: t.replace("epoch_length = 100", "epoch_length = 0"), "epoch_length"),
        (lambda t: t.replace("[params]", "[params]\nfoo = 1"), "unknown parameter"),
    ],
)
def test_bad_genesis_is_rejected_with_a_reason(edit, message):
    with pytest.raises(GenesisError, match=message):
        genesis_from_toml(edit(genesis_to_toml(_genesis())))


def test_supply_over_cap_is_rejected():
    with pytest.raises(GenesisError, match="max supply"):
        make_genesis(
            "x",
            operations_wallet=_ident(9).address,
            allocations=[(_ident(1).address, 200_000_000 * AIPG)],
            validators=[(_ident(3).public_bytes, 10_000 * AIPG, "")],
        )


def _run(argv):
    parser = argparse.ArgumentParser(prog="aipg-node")
    chain_cmd.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_genesis_new_and_tokenomics(tmp_path, capsys):
    out = tmp_path / "genesis.toml"
    key = tmp_path / "v.key"
    from aipg.wire import save_identity

    save_identity(_ident(4), key)
    rc = _run(
        [
            "genesis", "new", "--chain-id", "aipg-dev-1",
            "--operations-wallet", str(_ident(9).address),
            "--alloc", f"{_ident(1).address}=1,250.5",
            "--validator", f"{_ident(3).public_bytes.hex()}=10000",
            "--validator", f"{key}=20000",
            "--param", "target_block_time_ms=2000",
            "--out", str(out),
        ]
    )  # fmt: skip
    assert rc == 0
    g = load_genesis(out)
    assert g.params.target_block_time_ms == 2000
    assert {v.public_key for v in g.validators} == {_ident(3).public_bytes, _ident(4).public_bytes}
    assert g.allocations[0].amount == 1_250_50000000
    assert _run(["genesis", "new", "--chain-id", "x", "--operations-wallet",
                 str(_ident(9).address), "--out", str(out)]) == 2  # fmt: skip
    assert "exists" in capsys.readouterr().err

    capsys.readouterr()
    assert _run(["tokenomics", "--genesis", str(out)]) == 0
    text = capsys.readouterr().out
    assert "100,000–199,999" in text and "250" in text and "converges" in text


def test_cli_tokenomics_mainnet(capsys):
    assert _run(["tokenomics"]) == 0
    text = capsys.readouterr().out
    assert "1–99,999" in text and "500" in text and "25 " in text


def test_cli_genesis_new_bad_input(tmp_path, capsys):
    rc = _run(["genesis", "new", "--chain-id", "x", "--operations-wallet", "nope",
               "--out", str(tmp_path / "g.toml")])  # fmt: skip
    assert rc == 2
    assert "cannot make genesis" in capsys.readouterr().err
