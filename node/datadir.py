"""The node's data directory.

Layout::

    <data dir>/
        node.key        Ed25519 identity, libp2p protobuf encoding, mode 0600
        config.toml     settings; every key can be overridden by a flag
        chain.sqlite    blocks and state
        signrecord.sqlite  what this validator signed
        reputation.sqlite  the gateway's worker scores and bans
        blobs/sha256/   content-addressed model files
        logs/

The default location is the platform's user data dir (``~/.local/share/aipg-node`` on
Linux); ``AIPG_DATA_DIR`` overrides it and ``--data-dir`` overrides both.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from aipg.wire import Identity, load_identity, save_identity

from .config import render_default_config

ENV_DATA_DIR = "AIPG_DATA_DIR"
KEY_FILE = "node.key"
CONFIG_FILE = "config.toml"
CHAIN_FILE = "chain.sqlite"
BLOBS_DIR = "blobs"
LOGS_DIR = "logs"
LATENTS_DIR = "latents"
RUN_FILE = "run.json"  # written while the node runs, removed when it stops
SIGN_RECORD_FILE = "signrecord.sqlite"  # what this validator signed (never sign twice)
REPUTATION_FILE = "reputation.sqlite"  # the gateway's worker scores and bans


class DataDirError(Exception):
    """The data dir is missing, incomplete or would be clobbered; the message says what to do."""


def default_data_dir() -> Path:
    env = os.environ.get(ENV_DATA_DIR)
    if env:
        return Path(env).expanduser()
    return Path(platformdirs.user_data_dir("aipg-node", appauthor=False))


@dataclass(frozen=True)
class DataDir:
    """Paths inside one data dir. Creating the object touches nothing on disk."""

    root: Path

    @classmethod
    def resolve(cls, path: str | os.PathLike[str] | None) -> DataDir:
        return cls(Path(path).expanduser() if path else default_data_dir())

    @property
    def key_file(self) -> Path:
        return self.root / KEY_FILE

    @property
    def config_file(self) -> Path:
        return self.root / CONFIG_FILE

    @property
    def chain_file(self) -> Path:
        return self.root / CHAIN_FILE

    @property
    def blobs_dir(self) -> Path:
        return self.root / BLOBS_DIR

    @property
    def logs_dir(self) -> Path:
        return self.root / LOGS_DIR

    @property
    def latents_dir(self) -> Path:
        """The worker's diffusion latents, kept until each receipt is final."""
        return self.root / LATENTS_DIR

    @property
    def run_file(self) -> Path:
        """Where a running node writes its addresses (for devnets and scripts)."""
        return self.root / RUN_FILE

    @property
    def sign_record_file(self) -> Path:
        return self.root / SIGN_RECORD_FILE

    @property
    def reputation_file(self) -> Path:
        return self.root / REPUTATION_FILE

    def exists(self) -> bool:
        return self.key_file.exists()

    def init(self, identity: Identity | None = None) -> Identity:
        """Create the layout, a new (or the given) identity and a commented config.

        Raises DataDirError when a key already exists: a node's identity is never
        overwritten by accident.
        """
        if self.key_file.exists():
            raise DataDirError(
                f"{self.root} already has a node key ({self.key_file}); "
                "refusing to overwrite it (use another --data-dir, or move the key away)"
            )
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)
        for sub in (self.blobs_dir, self.logs_dir):
            sub.mkdir(exist_ok=True)
        identity = identity or Identity.generate()
        save_identity(identity, self.key_file)
        if not self.config_file.exists():
            self.config_file.write_text(render_default_config())
        return identity

    def load_identity(self) -> Identity:
        """The node's identity; raises KeyFileError (with how to fix it) when unusable."""
        return load_identity(self.key_file)

    def replace_identity(self, identity: Identity) -> None:
        """Install ``identity`` as the node key (``keys import --force``)."""
        self.root.mkdir(parents=True, exist_ok=True)
        save_identity(identity, self.key_file, overwrite=True)
