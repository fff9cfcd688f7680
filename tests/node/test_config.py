import pytest

from aipg.node.config import ConfigError, NodeConfig, load_config, render_default_config


def test_default_config_file_parses_to_the_defaults(tmp_path):
    p = tmp_path / "config.toml"
    p.write_text(render_default_config())
    assert load_config(p) == NodeConfig()
    # uncommenting every key gives a valid file too
    uncommented = "\n".join(
        line[2:] if line.startswith("# ") and " = " in line else line
        for line in render_default_config().splitlines()
    )
    p.write_text(uncommented)
    assert load_config(p) == NodeConfig()


@pytest.mark.parametrize(
    "text, message",
    [
        ("listne = []", "unknown key 'listne'"),
        ('max_peers = "many"', "max_peers: expected an integer"),
        ('listen = ["/ip4/1.2.3.4/udp/1"]', "listen: unknown multiaddr protocol /udp"),
        ('api = "localhost"', "api: expected HOST:PORT"),
        ("validator = 1", "validator: expected true or false"),
        ("relays = 0", "relays: must be between 1 and 8"),
        ("this is not toml", "not valid TOML"),
    ],
)
def test_bad_config_names_the_key(tmp_path, text, message):
    p = tmp_path / "config.toml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(p)


def test_flags_override_file_values():
    cfg = NodeConfig(max_peers=5).with_overrides(
        max_peers=None, api="127.0.0.1:8080", bootstrap=["/ip4/127.0.0.1/tcp/1/ws"]
    )
    assert (
        cfg.max_peers == 5
        and cfg.api == "127.0.0.1:8080"
        and cfg.bootstrap == ("/ip4/127.0.0.1/tcp/1/ws",)
    )
    with pytest.raises(ConfigError, match="max_peers"):
        NodeConfig().with_overrides(max_peers=0)
