"""The canonical codec: frozen records encoded as msgpack arrays.

A record is a frozen dataclass declared with :func:`record`. On the wire it is the
msgpack array ``[tag, version, field_1, ..., field_n]`` in declaration order. Field
types are a small closed set, with their limits in ``Annotated`` metadata:

==========================  =====================================================
``int``                     with :class:`Range` (default: 0 .. 2**64-1)
``bool``
``bytes``                   with :class:`Len` (exact) or :class:`MaxLen`
``str``                     with :class:`MaxLen` (characters), always valid UTF-8
``SomeRecord``              a nested record, encoded as its own array
``tuple[T, ...]``           with :class:`MaxLen` (items)
``T | None``                ``nil`` on the wire
==========================  =====================================================

Maps and floats are not allowed: a map has no canonical order and a float has no
place in consensus data (amounts are integers; ratios are fixed-point integers).

Every record validates its fields on construction, so a record that exists is valid,
whether it was built locally or decoded from the network. Decoding is strict: msgpack
size limits first, then tag, version and field count, then each field's type and range,
then a canonical check (re-encoding must give back the same bytes), so one value has
exactly one encoding and message IDs and signatures are well defined. Anything wrong
raises :class:`WireError` naming the record and the field.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import types
import typing
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import msgpack

from .errors import WireError
from .hashing import ContentId, content_id, sha256

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_ITEMS",
    "DEFAULT_MAX_STR",
    "I64",
    "MAX_MESSAGE_SIZE",
    "U8",
    "U16",
    "U32",
    "U64",
    "Hash32",
    "Len",
    "MaxLen",
    "PublicKeyBytes",
    "Range",
    "Record",
    "SignatureBytes",
    "all_record_types",
    "decode",
    "encode",
    "record",
    "record_digest",
    "record_id",
]


@dataclasses.dataclass(frozen=True)
class Range:
    """Inclusive integer bounds."""

    lo: int
    hi: int


@dataclasses.dataclass(frozen=True)
class MaxLen:
    """At most ``n`` bytes (bytes), characters (str) or items (tuple)."""

    n: int


@dataclasses.dataclass(frozen=True)
class Len:
    """Exactly ``n`` bytes."""

    n: int


U8 = Annotated[int, Range(0, 2**8 - 1)]
U16 = Annotated[int, Range(0, 2**16 - 1)]
U32 = Annotated[int, Range(0, 2**32 - 1)]
U64 = Annotated[int, Range(0, 2**64 - 1)]
I64 = Annotated[int, Range(-(2**63), 2**63 - 1)]
Hash32 = Annotated[bytes, Len(32)]
PublicKeyBytes = Annotated[bytes, Len(32)]
SignatureBytes = Annotated[bytes, Len(64)]

# Limits used when a field does not name its own.
DEFAULT_MAX_STR = 1024
DEFAULT_MAX_BYTES = 1 << 20
DEFAULT_MAX_ITEMS = 4096
# No single message is larger than this, whatever its type says.
MAX_MESSAGE_SIZE = 32 << 20
# Default per-type limit on the encoded size; large types (blob chunks, blocks) raise it.
DEFAULT_RECORD_MAX_SIZE = 1 << 20

_REGISTRY: dict[int, type] = {}
_NAMES: dict[str, type] = {}


class _Bad(Exception):
    """A field check failed; the record wraps it into a WireError naming the field."""


Check = Callable[[Any], None]
ToWire = Callable[[Any], Any]
FromWire = Callable[[Any], Any]


@dataclasses.dataclass(frozen=True)
class _FieldCodec:
    name: str
    annotation: Any
    check: Check
    to_wire: ToWire | None  # None: the value is its own wire form
    from_wire: FromWire | None


def _type_name(t: Any) -> str:
    return getattr(t, "__name__", str(t))


def _compile(annotation: Any) -> tuple[Check, ToWire | None, FromWire | None, str]:
    """Build (check, to_wire, from_wire, description) for one field type."""
    base, meta = annotation, ()
    if typing.get_origin(annotation) is Annotated:
        base, *meta = typing.get_args(annotation)
    rng = next((m for m in meta if isinstance(m, Range)), None)
    max_len = next((m.n for m in meta if isinstance(m, MaxLen)), None)
    exact = next((m.n for m in meta if isinstance(m, Len)), None)

    origin = typing.get_origin(base)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(base) if a is not type(None)]
        if len(args) != 1 or len(typing.get_args(base)) != 2:
            raise TypeError(f"only `T | None` unions are wire types, not {base}")
        inner_check, inner_to, inner_from, desc = _compile(args[0])

        def check_opt(v: Any) -> None:
            if v is not None:
                inner_check(v)

        to_opt = (lambda v: None if v is None else inner_to(v)) if inner_to else None
        from_opt = (lambda v: None if v is None else inner_from(v)) if inner_from else None
        return check_opt, to_opt, from_opt, f"{desc} or nil"

    if origin is tuple:
        args = typing.get_args(base)
        if len(args) != 2 or args[1] is not Ellipsis:
            raise TypeError(f"only homogeneous tuple[T, ...] is a wire type, not {base}")
        item_check, item_to, item_from, desc = _compile(args[0])
        limit = DEFAULT_MAX_ITEMS if max_len is None else max_len

        def check_tuple(v: Any) -> None:
            if type(v) is not tuple:
                raise _Bad(f"expected a list of {desc}, got {type(v).__name__}")
            if len(v) > limit:
                raise _Bad(f"at most {limit} items, got {len(v)}")
            for i, item in enumerate(v):
                try:
                    item_check(item)
                except _Bad as e:
                    raise _Bad(f"item {i}: {e}") from None
                except WireError as e:
                    raise _Bad(f"item {i}: {e}") from None

        def from_tuple(v: Any) -> Any:
            if type(v) is not list:
                raise _Bad(f"expected a list of {desc}, got {type(v).__name__}")
            if len(v) > limit:
                raise _Bad(f"at most {limit} items, got {len(v)}")
            return tuple(map(item_from, v)) if item_from else tuple(v)

        to_tuple = (lambda v: [item_to(x) for x in v]) if item_to else None
        return check_tuple, to_tuple, from_tuple, f"list of {desc}"

    if base is bool:

        def check_bool(v: Any) -> None:
            if type(v) is not bool:
                raise _Bad(f"expected bool, got {type(v).__name__}")

        return check_bool, None, None, "bool"

    if base is int:
        lo, hi = (rng.lo, rng.hi) if rng else (0, 2**64 - 1)

        def check_int(v: Any) -> None:
            if type(v) is not int:
                raise _Bad(f"expected int, got {type(v).__name__}")
            if not lo <= v <= hi:
                raise _Bad(f"{v} is out of range [{lo}, {hi}]")

        return check_int, None, None, "int"

    if base is bytes:
        if exact is not None:

            def check_exact(v: Any) -> None:
                if type(v) is not bytes:
                    raise _Bad(f"expected bytes, got {type(v).__name__}")
                if len(v) != exact:
                    raise _Bad(f"expected {exact} bytes, got {len(v)}")

            return check_exact, None, None, f"{exact} bytes"
        blimit = DEFAULT_MAX_BYTES if max_len is None else max_len

        def check_bytes(v: Any) -> None:
            if type(v) is not bytes:
                raise _Bad(f"expected bytes, got {type(v).__name__}")
            if len(v) > blimit:
                raise _Bad(f"at most {blimit} bytes, got {len(v)}")

        return check_bytes, None, None, "bytes"

    if base is str:
        slimit = DEFAULT_MAX_STR if max_len is None else max_len

        def check_str(v: Any) -> None:
            if type(v) is not str:
                raise _Bad(f"expected str, got {type(v).__name__}")
            if len(v) > slimit:
                raise _Bad(f"at most {slimit} characters, got {len(v)}")

        return check_str, None, None, "str"

    if isinstance(base, type) and hasattr(base, "__wire_tag__"):
        rec_type = base

        def check_record(v: Any) -> None:
            if type(v) is not rec_type:
                raise _Bad(f"expected {rec_type.__name__}, got {type(v).__name__}")

        def from_record(v: Any) -> Any:
            return rec_type._from_wire(v)

        return check_record, _to_wire, from_record, rec_type.__name__

    raise TypeError(f"{_type_name(base)} is not a wire type")


def _to_wire(rec: Any) -> list[Any]:
    """The msgpack array of ``rec``, built once per record: records are immutable, and
    the same record is encoded again and again (the canonical check after decoding,
    then signing bytes and ids of every signed part). Callers must not mutate it."""
    try:
        return rec._wire_cache
    except AttributeError:
        pass
    cls = type(rec)
    out = [cls.__wire_tag__, cls.__wire_version__]
    for fc in cls.__wire_fields__:
        v = getattr(rec, fc.name)
        out.append(fc.to_wire(v) if fc.to_wire is not None else v)
    object.__setattr__(rec, "_wire_cache", out)
    return out


class Record:
    """Base of every wire record (for isinstance checks and typing).

    Class attributes set by :func:`record`: ``__wire_tag__``, ``__wire_name__``,
    ``__wire_version__``, ``__wire_fields__``, ``__wire_max_size__``.
    """

    # Not a field: the record's wire form, filled on first use (see _to_wire).
    __slots__ = ("_wire_cache",)
    __wire_tag__: typing.ClassVar[int]
    __wire_name__: typing.ClassVar[str]
    __wire_version__: typing.ClassVar[int]
    __wire_fields__: typing.ClassVar[tuple[_FieldCodec, ...]]
    __wire_max_size__: typing.ClassVar[int]

    def encode(self) -> bytes:
        return encode(self)

    def replace(self: R, **changes: Any) -> R:
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]

    @classmethod
    def decode(cls: type[R], data: bytes) -> R:
        return decode(data, cls)

    @classmethod
    def _from_wire(cls: type[R], value: Any) -> R:
        name = cls.__name__
        if type(value) is not list:
            raise WireError(f"expected an array, got {type(value).__name__}", record=name)
        fcs = cls.__wire_fields__
        if len(value) < 2:
            raise WireError("missing type tag or version", record=name)
        tag, version = value[0], value[1]
        if tag != cls.__wire_tag__ or type(tag) is not int:
            raise WireError(f"expected type tag {cls.__wire_tag__}, got {tag!r}", record=name)
        if version != cls.__wire_version__ or type(version) is not int:
            raise WireError(f"unsupported version {version!r}", record=name)
        if len(value) != len(fcs) + 2:
            have = len(value) - 2
            want = len(fcs)
            field = fcs[have].name if have < want else None
            what = f"missing field (have {have} of {want})" if have < want else "extra fields"
            raise WireError(f"{what}", record=name, field=field)
        args = value[2:]
        for i, fc in enumerate(fcs):
            if fc.from_wire is not None:
                try:
                    args[i] = fc.from_wire(args[i])
                except _Bad as e:
                    raise WireError(str(e), record=name, field=fc.name) from None
                except WireError as e:
                    raise WireError(str(e), record=name, field=fc.name) from None
        return cls(*args)


R = TypeVar("R", bound=Record)


def _validate(self: Any) -> None:
    cls = type(self)
    for fc in cls.__wire_fields__:
        try:
            fc.check(getattr(self, fc.name))
        except _Bad as e:
            raise WireError(str(e), record=cls.__name__, field=fc.name) from None


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def record(*, tag: int, name: str | None = None, version: int = 1, max_size: int | None = None):
    """Class decorator: make ``cls`` (a subclass of Record) a frozen, validated,
    registered wire record::

        @record(tag=301)
        class Receipt(Record):
            job_id: Hash32
            tokens: Annotated[tuple[U32, ...], MaxLen(8192)]

    ``tag`` is unique across the whole protocol; ranges by package: wire 1-99,
    gossip 100-199, models 200-299, pouw 300-399, stake 400-499, node 500-599.
    ``name`` (default: the class name in snake_case) is used in signature domain
    tags, so it must never change once deployed; bump ``version`` instead.
    ``max_size`` caps the encoded size accepted by :func:`decode`.
    """

    def wrap(cls: type) -> type:
        if tag in _REGISTRY:
            raise TypeError(
                f"wire tag {tag} is used by both {_REGISTRY[tag].__name__} and {cls.__name__}"
            )
        rec_name = name or _snake(cls.__name__)
        if rec_name in _NAMES:
            raise TypeError(f"wire record name {rec_name!r} is used twice")
        hints = typing.get_type_hints(cls, include_extras=True)
        own = [
            n
            for n in inspect.get_annotations(cls)
            if typing.get_origin(hints[n]) is not typing.ClassVar
        ]
        clashes = [n for n in own if hasattr(Record, n)]
        if clashes:
            raise TypeError(f"{cls.__name__}: field name(s) {clashes} clash with Record methods")
        codecs = []
        for fname in own:
            check, to_wire, from_wire, _ = _compile(hints[fname])
            codecs.append(_FieldCodec(fname, hints[fname], check, to_wire, from_wire))
        if not issubclass(cls, Record):
            raise TypeError(f"{cls.__name__} must subclass aipg.wire.Record")
        cls.__post_init__ = _validate
        dc = dataclasses.dataclass(frozen=True, slots=True)(cls)
        dc.__wire_tag__ = tag
        dc.__wire_name__ = rec_name
        dc.__wire_version__ = version
        dc.__wire_fields__ = tuple(codecs)
        dc.__wire_max_size__ = max_size or DEFAULT_RECORD_MAX_SIZE
        _REGISTRY[tag] = dc
        _NAMES[rec_name] = dc
        return dc

    return wrap


def all_record_types() -> list[type]:
    """Every registered record type (of the packages imported so far), by tag."""
    return [_REGISTRY[t] for t in sorted(_REGISTRY)]


def record_type(tag: int) -> type | None:
    return _REGISTRY.get(tag)


def encode(rec: Record) -> bytes:
    """The canonical bytes of ``rec``."""
    if not hasattr(type(rec), "__wire_tag__"):
        raise TypeError(f"{type(rec).__name__} is not a wire record")
    return msgpack.packb(_to_wire(rec), use_bin_type=True)


def _unpack(data: bytes, limit: int) -> Any:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise WireError(f"expected bytes, got {type(data).__name__}")
    if len(data) > limit:
        raise WireError(f"message of {len(data)} bytes is over the {limit}-byte limit")
    try:
        return msgpack.unpackb(
            data,
            raw=False,
            use_list=True,
            strict_map_key=True,
            max_bin_len=limit,
            max_str_len=limit,
            max_array_len=min(limit, 1 << 20),
            max_map_len=0,  # maps are not a wire type
            max_ext_len=0,  # nor are extension types (timestamps included)
        )
    except msgpack.ExtraData:
        raise WireError("trailing bytes after the message") from None
    except (ValueError, TypeError, msgpack.UnpackException) as e:
        raise WireError(f"malformed msgpack: {e}") from None


def decode(data: bytes, cls: type[R] | tuple[type, ...] | None = None) -> R:
    """Decode and validate one record from ``data``.

    ``cls`` is the expected type, a tuple of accepted types, or None for any
    registered type. Raises :class:`WireError` for anything but one valid record of
    an accepted type in its canonical encoding.
    """
    if isinstance(cls, type):
        limit = cls.__wire_max_size__
    elif cls:
        limit = max(c.__wire_max_size__ for c in cls)
    else:
        limit = MAX_MESSAGE_SIZE
    value = _unpack(data, limit)
    if type(value) is not list or not value:
        raise WireError("a message is an array starting with a type tag")
    tag = value[0]
    actual = _REGISTRY.get(tag) if type(tag) is int else None
    if actual is None:
        raise WireError(f"unknown type tag {tag!r}")
    if cls is not None and not (actual is cls if isinstance(cls, type) else actual in cls):
        want = cls.__name__ if isinstance(cls, type) else " or ".join(c.__name__ for c in cls)
        raise WireError(f"expected {want}, got {actual.__name__}")
    if len(data) > actual.__wire_max_size__:
        raise WireError(f"over the {actual.__wire_max_size__}-byte limit", record=actual.__name__)
    try:
        rec = actual._from_wire(value)
    except WireError:
        raise
    except TypeError as e:  # wrong arity reaching the dataclass constructor
        raise WireError(f"bad fields: {e}", record=actual.__name__) from None
    if msgpack.packb(_to_wire(rec), use_bin_type=True) != bytes(data):
        raise WireError("non-canonical encoding", record=actual.__name__)
    return rec


def record_digest(rec: Record) -> bytes:
    return sha256(encode(rec))


def record_id(rec: Record) -> ContentId:
    return content_id(encode(rec))
