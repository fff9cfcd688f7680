"""Bounded tables: the one eviction rule shared by every per-job, per-peer and per-model
table of the node and of pouw.

A table is an :class:`~collections.OrderedDict` whose order is its age (oldest first; a
table kept in least-recently-used order moves an entry to the end when it is used).
:func:`evict_over` drops entries until the table fits its bound, taking first the
oldest entry the first rule accepts, then the oldest the second rule accepts, and so on;
an entry no rule accepts is never evicted (the table's admission rule bounds those).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import TypeVar

__all__ = ["evict_over"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

_NONE = object()


def evict_over(
    table: OrderedDict[K, V], bound: int, *rules: Callable[[V], bool]
) -> list[tuple[K, V]]:
    """Evict from ``table`` until it holds at most ``bound`` entries, by ``rules`` in
    order (none: the oldest entry goes). Returns the evicted ``(key, value)`` pairs in
    eviction order. The table may stay above ``bound`` when no rule accepts what is left."""
    evicted: list[tuple[K, V]] = []
    while len(table) > bound:
        if not rules:
            evicted.append(table.popitem(last=False))
            continue
        key = _NONE
        for rule in rules:
            key = next((k for k, v in table.items() if rule(v)), _NONE)
            if key is not _NONE:
                break
        if key is _NONE:
            break
        evicted.append((key, table.pop(key)))  # type: ignore[arg-type]
    return evicted
