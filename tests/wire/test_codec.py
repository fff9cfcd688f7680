import contextlib
import importlib
import pkgutil

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aipg.testing.strategies import records
from aipg.wire import WireError, all_record_types, decode, encode
from aipg.wire.codec import MAX_MESSAGE_SIZE

from .records_for_tests import Inner, Outer, Small, VoteA

PACKAGES = ("wire", "gossip", "models", "pouw", "stake", "node", "cli")


def _import_every_module() -> None:
    """Import every aipg module so that every record type is registered."""
    for package in PACKAGES:
        pkg = importlib.import_module(f"aipg.{package}")
        for info in pkgutil.walk_packages(pkg.__path__, f"aipg.{package}."):
            if not info.name.endswith("__main__"):
                importlib.import_module(info.name)


_import_every_module()
ALL_TYPES = all_record_types()


def outer(**changes):
    base = Outer(
        digest=bytes(32),
        amount=7,
        delta=-3,
        flag=True,
        blob=b"\x00\xff",
        items=(1, 2, 3),
        inner=Inner(1, "a"),
        maybe=None,
        inners=(Inner(2, "b"),),
    )
    return base.replace(**changes)


def raw(rec) -> list:
    return msgpack.unpackb(encode(rec), raw=False)


def test_every_package_registers_its_records():
    assert {Inner, Outer, VoteA} <= set(ALL_TYPES)
    assert len({t.__wire_tag__ for t in ALL_TYPES}) == len(ALL_TYPES)


@pytest.mark.parametrize("cls", ALL_TYPES, ids=lambda c: c.__name__)
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data())
def test_round_trip_of_every_record_type(cls, data):
    rec = data.draw(records(cls))
    blob = encode(rec)
    back = decode(blob, cls)
    assert back == rec
    assert encode(back) == blob
    assert decode(blob) == rec  # dispatch by tag


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_wire_error(blob):
    with contextlib.suppress(WireError):
        decode(blob)


msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=8)
    | st.binary(max_size=8),
    lambda children: (
        st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=3), children, max_size=3)
    ),
    max_leaves=20,
)


@settings(max_examples=500, deadline=None)
@given(
    tag=st.sampled_from([t.__wire_tag__ for t in ALL_TYPES]),
    version=st.integers(0, 3),
    fields=st.lists(msgpack_values, max_size=12),
)
def test_structured_garbage_with_real_tags_raises_only_wire_error(tag, version, fields):
    blob = msgpack.packb([tag, version, *fields], use_bin_type=True)
    with contextlib.suppress(WireError):
        decode(blob)


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_mutated_encodings_raise_only_wire_error(data):
    blob = bytearray(encode(data.draw(records(Outer))))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(blob) - 1))
        blob[i] = data.draw(st.integers(0, 255))
    with contextlib.suppress(WireError):
        decode(bytes(blob))


def _wire_error(blob, cls=None) -> WireError:
    with pytest.raises(WireError) as info:
        decode(blob, cls)
    return info.value


def test_errors_name_the_record_and_field():
    r = raw(outer())
    r[3] = -1  # amount
    e = _wire_error(msgpack.packb(r))
    assert (e.record, e.field) == ("Outer", "amount") and "out of range" in str(e)

    r = raw(outer())
    r[2] = b"\x00" * 31  # digest
    e = _wire_error(msgpack.packb(r))
    assert e.field == "digest" and "32 bytes" in str(e)

    r = raw(outer())
    r[8][3] = "x" * 17  # inner.label over its 16-character limit
    e = _wire_error(msgpack.packb(r))
    assert e.field == "inner" and "label" in str(e) and "16" in str(e)

    r = raw(outer())
    r[5] = 1  # flag must be a bool, not an int
    assert _wire_error(msgpack.packb(r)).field == "flag"

    r = raw(outer())
    r[7] = list(range(9))  # items: at most 8
    assert "at most 8" in str(_wire_error(msgpack.packb(r)))


def test_missing_and_extra_fields_and_unknown_tags():
    r = raw(outer())
    e = _wire_error(msgpack.packb(r[:-1]))
    assert e.field == "inners" and "missing" in str(e)
    assert "extra" in str(_wire_error(msgpack.packb([*r, 1])))
    assert "unknown type tag" in str(_wire_error(msgpack.packb([9999, 1])))
    assert "version" in str(_wire_error(msgpack.packb([r[0], 7, *r[2:]])))
    assert "expected Inner" in str(_wire_error(encode(outer()), Inner))


def test_floats_maps_ext_and_non_canonical_forms_are_rejected():
    r = raw(outer())
    r[3] = 7.0
    assert _wire_error(msgpack.packb(r)).field == "amount"
    r = raw(outer())
    r[6] = {"a": 1}
    _wire_error(msgpack.packb(r))
    r = raw(outer())
    r[6] = msgpack.ExtType(1, b"x")
    _wire_error(msgpack.packb(r))
    # amount 7 as a uint32 instead of a positive fixint: same value, another encoding
    blob = encode(outer())
    wide = blob.replace(b"\x07\xfd", b"\xce\x00\x00\x00\x07\xfd", 1)
    assert wide != blob
    assert "non-canonical" in str(_wire_error(wide))
    # bytes sent as a str
    r = raw(outer())
    r[6] = "text"
    assert _wire_error(msgpack.packb(r, use_bin_type=True)).field == "blob"


def test_size_limits_hold_before_parsing():
    assert "limit" in str(_wire_error(b"\x00" * 65, Small))
    big = Small(b"y" * 100)
    assert "limit" in str(_wire_error(encode(big)))
    assert "limit" in str(_wire_error(b"\x90" * (MAX_MESSAGE_SIZE + 1)))


def test_records_validate_on_construction():
    with pytest.raises(WireError, match=r"Outer\.items"):
        outer(items=[1, 2])  # a list is not a tuple: records are immutable all the way down
    with pytest.raises(WireError, match=r"Inner\.count"):
        Inner(True, "x")
    with pytest.raises(WireError, match=r"Inner\.label"):
        Inner(1, b"x")
