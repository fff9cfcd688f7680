"""Node configuration: ``config.toml`` in the data dir, every key overridable by a flag.

The file is flat: each key has the name of the ``aipg-node join`` flag that overrides it
(``listen`` ↔ ``--listen``, ``host_model`` ↔ ``--host-model``). Unknown keys and values of
the wrong type are errors that name the key, so a typo never silently does nothing.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aipg.wire import Multiaddr, WireError


class ConfigError(Exception):
    """A config file or flag value is invalid; the message names the key."""


DEFAULT_LISTEN = "/ip4/0.0.0.0/tcp/4001/ws"


@dataclass(frozen=True)
class NodeConfig:
    """Every setting of a running node, with its default."""

    listen: tuple[str, ...] = (DEFAULT_LISTEN,)
    bootstrap: tuple[str, ...] = ()
    max_peers: int = 50
    relays: int = 2  # relay slots to hold when not publicly dialable (behind NAT)
    api: str = (
        ""  # "HOST:PORT" serves the HTTP API (gateway role; port 0: any free port); empty: no API
    )
    free_tier_per_minute: int = 30
    # Paid jobs: "latency" (assigned at once, fee only) or "drawn" (wait for the beacon's
    # draw, fee and pool share); D84.
    paid_route: str = "latency"
    host_model: tuple[str, ...] = ()  # model ids or model directories (worker role)
    threads: int = 0  # ONNX intra-op threads; 0 = one per core
    worker: bool = True  # claim and run jobs for hosted models (false: host them to verify only)
    validator: bool = False  # vote in consensus and committees (needs 10,000 AIPG bonded)
    genesis: str = ""  # genesis file; empty: the one saved in the data dir
    log_level: str = "info"

    def validate(self) -> NodeConfig:
        """Check every value; raises ConfigError naming the key. Returns self."""
        for key in ("listen", "bootstrap"):
            for text in getattr(self, key):
                try:
                    Multiaddr.parse(text)
                except WireError as e:
                    raise ConfigError(f"{key}: {e}") from None
        if self.api:
            host, sep, port = self.api.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
                raise ConfigError(
                    f"api: expected HOST:PORT such as 127.0.0.1:8080, got {self.api!r}"
                )
        if not 1 <= self.max_peers <= 10_000:
            raise ConfigError(f"max_peers: must be between 1 and 10000, got {self.max_peers}")
        if not 1 <= self.relays <= 8:
            raise ConfigError(f"relays: must be between 1 and 8, got {self.relays}")
        if not 0 <= self.threads <= 1024:
            raise ConfigError(f"threads: must be between 0 and 1024, got {self.threads}")
        if not 1 <= self.free_tier_per_minute <= 1_000_000:
            raise ConfigError("free_tier_per_minute: must be between 1 and 1000000")
        if self.paid_route not in ("latency", "drawn"):
            raise ConfigError(f"paid_route: latency or drawn, got {self.paid_route!r}")
        if self.log_level not in ("debug", "info", "warning", "error"):
            raise ConfigError(
                f"log_level: one of debug, info, warning, error; got {self.log_level!r}"
            )
        return self

    def with_overrides(self, **flags: Any) -> NodeConfig:
        """A copy with every flag that was given (not None) applied."""
        given = {k: v for k, v in flags.items() if v is not None}
        unknown = set(given) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ConfigError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        for k, v in given.items():
            if isinstance(v, list):
                given[k] = tuple(v)
        return dataclasses.replace(self, **given).validate()


def _check_type(key: str, value: Any, default: Any) -> Any:
    if isinstance(default, bool):
        if type(value) is not bool:
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if isinstance(default, int):
        if type(value) is not int:
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if isinstance(default, str):
        if type(value) is not str:
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    if isinstance(default, tuple):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{key}: expected a list of strings, got {value!r}")
        return tuple(value)
    raise AssertionError(key)


def load_config(path: str | Path) -> NodeConfig:
    """Read and validate a config file; a missing file gives the defaults."""
    path = Path(path)
    if not path.exists():
        return NodeConfig()
    try:
        raw = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    defaults = NodeConfig()
    known = {f.name: getattr(defaults, f.name) for f in dataclasses.fields(NodeConfig)}
    values = {}
    for key, value in raw.items():
        if key not in known:
            raise ConfigError(f"{path}: unknown key {key!r} (known: {', '.join(known)})")
        values[key] = _check_type(key, value, known[key])
    try:
        return dataclasses.replace(defaults, **values).validate()
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def render_default_config() -> str:
    """The commented config.toml that ``aipg-node init`` writes."""
    return f"""\
# aipg-node configuration.
# Every key here can be overridden by the `aipg-node join` flag of the same name
# (listen -> --listen, host_model -> --host-model). Commented lines show the defaults.

# Multiaddrs to accept peers on (websocket transport).
# listen = ["{DEFAULT_LISTEN}"]

# Peers to dial at start, e.g. "/ip4/198.51.100.7/tcp/4001/ws/p2p/12D3KooW...".
# bootstrap = []

# Most connected peers to keep.
# max_peers = 50

# Behind NAT (not dialable from outside): public relays to hold a slot on, each one
# probed every 30 s and replaced when it drops or alters traffic.
# relays = 2

# Serve the OpenAI-compatible HTTP API (gateway role) on HOST:PORT; empty: off.
# api = ""

# Free-tier requests per minute per client address on this gateway.
# free_tier_per_minute = 30

# Paid jobs: "latency" assigns each at once to a trusted worker (the first token comes
# without waiting for blocks; the job earns its fee only); "drawn" waits for the beacon's
# draw of the worker (a few blocks; the job earns its fee and a pool share).
# paid_route = "latency"

# Models to host and run jobs for (worker role): model ids or model directories.
# host_model = []

# Claim and run jobs for the hosted models; false hosts them only to verify others' work.
# worker = true

# ONNX Runtime intra-op threads for jobs; 0: one per core.
# threads = 0

# Vote in consensus and verification committees (needs 10,000 AIPG bonded).
# validator = false

# Genesis file of the network to join; empty: the one stored in this data dir.
# genesis = ""

# debug, info, warning or error.
# log_level = "info"
"""
