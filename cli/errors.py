"""Errors the CLI shows as one line (no traceback)."""

from aipg.models import ModelError
from aipg.node.config import ConfigError
from aipg.node.datadir import DataDirError
from aipg.wire import KeyFileError, WireError


class CliError(Exception):
    """A mistake in how a command was called or what it was given."""


# Exceptions whose message is written for the user: shown as `aipg-node: <message>`.
USER_ERRORS: tuple[type[BaseException], ...] = (
    CliError,
    ModelError,
    ConfigError,
    DataDirError,
    KeyFileError,
    WireError,
    FileNotFoundError,
    PermissionError,
    IsADirectoryError,
)
