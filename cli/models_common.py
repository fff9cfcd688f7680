"""What the ``aipg-node models`` commands share: the program name, the one-line usage
error, and model ids as text."""

from __future__ import annotations

PROG = "aipg-node"


class UsageError(Exception):
    """A bad command-line value; shown as one line."""


def id_text(mid: bytes) -> str:
    """``sha256:<hex>``: a model id as users see it (imports aipg.models only when called)."""
    from aipg.models import model_id_text

    return model_id_text(mid)
