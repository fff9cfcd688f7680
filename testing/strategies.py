"""Hypothesis strategies derived from record declarations, for every registered type.

The one module of the kit that needs hypothesis (the ``dev`` extra)."""

from __future__ import annotations

import types
import typing
from typing import Annotated, Any

from hypothesis import strategies as st

from aipg.wire.codec import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_ITEMS,
    DEFAULT_MAX_STR,
    Len,
    MaxLen,
    Range,
)

# Keep generated values small: limits are tested separately, and huge values only slow things.
_CAP = 40


def for_annotation(annotation: Any) -> st.SearchStrategy[Any]:
    base, meta = annotation, ()
    if typing.get_origin(annotation) is Annotated:
        base, *meta = typing.get_args(annotation)
    rng = next((m for m in meta if isinstance(m, Range)), None)
    max_len = next((m.n for m in meta if isinstance(m, MaxLen)), None)
    exact = next((m.n for m in meta if isinstance(m, Len)), None)
    origin = typing.get_origin(base)
    if origin in (typing.Union, types.UnionType):
        (inner,) = [a for a in typing.get_args(base) if a is not type(None)]
        return st.none() | for_annotation(inner)
    if origin is tuple:
        item = typing.get_args(base)[0]
        limit = min(_CAP // 4, DEFAULT_MAX_ITEMS if max_len is None else max_len)
        if _is_record(item):
            limit = min(limit, 2)  # records nest records: keep the trees small
        return st.lists(for_annotation(item), max_size=limit).map(tuple)
    if base is bool:
        return st.booleans()
    if base is int:
        lo, hi = (rng.lo, rng.hi) if rng else (0, 2**64 - 1)
        return st.integers(lo, hi)
    if base is bytes:
        if exact is not None:
            return st.binary(min_size=exact, max_size=exact)
        return st.binary(max_size=min(_CAP, DEFAULT_MAX_BYTES if max_len is None else max_len))
    if base is str:
        return st.text(max_size=min(_CAP, DEFAULT_MAX_STR if max_len is None else max_len))
    if hasattr(base, "__wire_tag__"):
        return records(base)
    raise TypeError(f"no strategy for {annotation}")


def _is_record(annotation: Any) -> bool:
    base = (
        typing.get_args(annotation)[0] if typing.get_origin(annotation) is Annotated else annotation
    )
    if typing.get_origin(base) in (typing.Union, types.UnionType):
        base = next(a for a in typing.get_args(base) if a is not type(None))
    return hasattr(base, "__wire_tag__")


def records(cls: type) -> st.SearchStrategy[Any]:
    """Arbitrary valid instances of the record type ``cls``."""
    return st.builds(cls, *[for_annotation(fc.annotation) for fc in cls.__wire_fields__])
