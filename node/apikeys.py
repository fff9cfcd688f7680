"""Paid-tier API keys of a gateway.

A paid-tier client's account is custodied by the gateway (like a hosted wallet): the
gateway holds the account's key and signs the escrow of each paid job's fee from it.
``api_keys.json`` in the gateway's data dir (mode 0600) maps sha256(API key) to the
account's key file and a display name; the API key itself is shown once and never
stored.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from aipg.wire import Identity, load_identity

from .datadir import DataDir

API_KEYS_FILE = "api_keys.json"
KEY_PREFIX = "aipg-sk-"


@dataclass(frozen=True)
class PaidClient:
    name: str
    identity: Identity

    @property
    def address(self) -> str:
        return str(self.identity.address)


def _digest(api_key: str) -> str:
    return hashlib.sha256(api_key.encode()).hexdigest()


class ApiKeyStore:
    """Read and add paid-tier API keys of one data dir."""

    def __init__(self, data_dir: DataDir):
        self.path = Path(data_dir.root) / API_KEYS_FILE
        self._clients: dict[str, PaidClient] = {}
        self._mtime: int | None = None
        self.reload()

    def reload(self) -> None:
        """Read the key file (again); keys added by ``aipg-node apikey add`` while the
        node runs take effect at the next request."""
        if not self.path.exists():
            self._clients, self._mtime = {}, None
            return
        self._mtime = self.path.stat().st_mtime_ns
        raw = json.loads(self.path.read_text())
        self._clients = {
            digest: PaidClient(entry["name"], load_identity(entry["key_file"]))
            for digest, entry in raw.items()
        }

    def add(self, name: str, key_file: str | Path) -> str:
        """Register the account of ``key_file``; returns the new API key (shown once)."""
        load_identity(key_file)  # a clear KeyFileError now, not at the first paid request
        api_key = KEY_PREFIX + secrets.token_urlsafe(24)
        raw = json.loads(self.path.read_text()) if self.path.exists() else {}
        raw[_digest(api_key)] = {"name": name, "key_file": str(Path(key_file).resolve())}
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(raw, f, indent=2)
        os.replace(tmp, self.path)
        self.reload()
        return api_key

    def _refresh(self) -> None:
        try:
            mtime = self.path.stat().st_mtime_ns
        except FileNotFoundError:
            mtime = None
        if mtime != self._mtime:
            self.reload()

    def by_address(self, address: str) -> PaidClient | None:
        self._refresh()
        return next((c for c in self._clients.values() if c.address == address), None)

    def authenticate(self, api_key: str) -> PaidClient | None:
        if not api_key.startswith(KEY_PREFIX) or len(api_key) > 128:
            return None
        self._refresh()
        digest = _digest(api_key)
        for known, client in self._clients.items():
            if hmac.compare_digest(known, digest):
                return client
        return None
