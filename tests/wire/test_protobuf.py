import pytest
from hypothesis import given
from hypothesis import strategies as st

from aipg.wire import WireError
from aipg.wire.protobuf import read_varint, write_varint


@given(st.integers(0, 2**63 - 1), st.binary(max_size=4))
def test_varint_round_trip(n, tail):
    data = write_varint(n) + tail
    assert read_varint(data, 0) == (n, len(data) - len(tail))


@given(st.binary(max_size=12))
def test_arbitrary_bytes_raise_only_wire_error(data):
    try:
        value, pos = read_varint(data, 0)
    except WireError:
        return
    assert 0 <= value < 2**63 and 0 < pos <= len(data)


def test_truncated_and_overlong_varints():
    with pytest.raises(WireError, match="truncated"):
        read_varint(b"\x80\x80", 0)
    with pytest.raises(WireError, match="63 bits"):
        read_varint(b"\xff" * 10 + b"\x01", 0)


def test_a_ten_byte_varint_past_63_bits_is_refused():
    # 2**63 as a varint: nine continuation bytes of zeros, then 0x01 (found by hypothesis)
    with pytest.raises(WireError, match="63 bits"):
        read_varint(b"\x80" * 9 + b"\x01", 0)
    assert read_varint(b"\xff" * 8 + b"\x7f", 0) == (2**63 - 1, 9)
