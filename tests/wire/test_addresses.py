import pytest
from hypothesis import given
from hypothesis import strategies as st

from aipg.wire import (
    UNITS_PER_AIPG,
    Address,
    Identity,
    Multiaddr,
    WireError,
    format_amount,
    parse_amount,
)
from aipg.wire.account import bech32m_encode

PEER = str(Identity.from_seed(bytes(32)).peer_id)


@given(st.binary(min_size=32, max_size=32))
def test_address_round_trip_and_case_insensitive(pub):
    addr = Address.from_public_key(pub)
    text = str(addr)
    assert text.startswith("aipg1")
    assert Address.from_string(text) == addr
    assert Address.from_string(text.upper()) == addr


@given(st.binary(min_size=32, max_size=32), st.data())
def test_address_checksum_catches_a_typo(pub, data):
    text = str(Address.from_public_key(pub))
    i = data.draw(st.integers(5, len(text) - 1))
    c = data.draw(st.sampled_from([c for c in "qpzry9x8gf2tvdw0s3jn54khce6mua7l" if c != text[i]]))
    with pytest.raises(WireError):
        Address.from_string(text[:i] + c + text[i + 1 :])


def test_address_errors_say_what_is_wrong():
    with pytest.raises(WireError, match="start with aipg1"):
        Address.from_string(bech32m_encode("btc", bytes(20)))
    with pytest.raises(WireError, match="mixes"):
        Address.from_string("aipg1Qqqq")
    with pytest.raises(WireError, match="checksum"):
        Address.from_string("aipg1qqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqq")


@pytest.mark.parametrize(
    "text, units",
    [
        ("10000", 10_000 * UNITS_PER_AIPG),
        ("0.5", UNITS_PER_AIPG // 2),
        ("0.00000001", 1),
        ("1,250.75", 125_075_000_000),
        ("200000000", 200_000_000 * UNITS_PER_AIPG),
        (" 7 AIPG ", 7 * UNITS_PER_AIPG),
    ],
)
def test_parse_amount(text, units):
    assert parse_amount(text) == units


@pytest.mark.parametrize(
    "text, message",
    [
        ("-1", "negative"),
        ("0.000000001", "8 decimals"),
        ("abc", "not an amount"),
        ("1e5", "not an amount"),
        ("", "not an amount"),
        ("1.", "not an amount"),
        ("99999999999999999999", "not an amount"),
    ],
)
def test_parse_amount_rejects(text, message):
    with pytest.raises(WireError, match=message):
        parse_amount(text)


@given(st.integers(0, 2**62))
def test_format_parse_round_trip(units):
    assert parse_amount(format_amount(units)) == units


def test_format_amount():
    assert format_amount(10_000 * UNITS_PER_AIPG) == "10,000"
    assert format_amount(150_000_000) == "1.5"
    assert format_amount(-1) == "-0.00000001"


@pytest.mark.parametrize(
    "text, canonical",
    [
        (f"/ip4/127.0.0.1/tcp/4001/ws/p2p/{PEER}", f"/ip4/127.0.0.1/tcp/4001/ws/p2p/{PEER}"),
        ("/ip4/10.0.0.1/tcp/04001/wss", "/ip4/10.0.0.1/tcp/4001/wss"),
        ("/ip6/0:0:0:0:0:0:0:1/tcp/1/ws", "/ip6/::1/tcp/1/ws"),
        ("/dns4/Example.COM/tcp/443/wss/", "/dns4/example.com/tcp/443/wss"),
        ("/dns6/node.aipg.example/tcp/80/ws", "/dns6/node.aipg.example/tcp/80/ws"),
    ],
)
def test_multiaddr_round_trip(text, canonical):
    m = Multiaddr.parse(text)
    assert str(m) == canonical
    assert Multiaddr.parse(str(m)) == m


@pytest.mark.parametrize(
    "text, message",
    [
        ("ip4/1.2.3.4", "starts with '/'"),
        ("/ip4/1.2.3.400/tcp/1", "/ip4/1.2.3.400"),
        ("/ip4/1.2.3.4/tcp/70000", "/tcp/70000"),
        ("/ip4/1.2.3.4/udp/1", "unknown multiaddr protocol /udp"),
        ("/ip4/1.2.3.4/tcp", "/tcp needs a value"),
        ("/ip4/1.2.3.4/tcp/1/ws/p2p/nope", "/p2p/nope"),
        ("/dns4/-bad-/tcp/1", "/dns4/-bad-"),
    ],
)
def test_multiaddr_errors_name_the_component(text, message):
    with pytest.raises(WireError, match=message.replace("/", "/").replace("(", r"\(")):
        Multiaddr.parse(text)


def test_multiaddr_helpers():
    pid = Identity.from_seed(bytes(32)).peer_id
    m = Multiaddr.parse(f"/ip4/127.0.0.1/tcp/4001/ws/p2p/{pid}")
    assert m.peer_id == pid
    assert m.websocket_target() == ("127.0.0.1", 4001, False)
    assert m.without_peer_id().with_peer_id(pid) == m
    assert Multiaddr.websocket("127.0.0.1", 9, pid) == Multiaddr.parse(
        f"/ip4/127.0.0.1/tcp/9/ws/p2p/{pid}"
    )
    with pytest.raises(WireError, match="not a websocket address"):
        Multiaddr.parse("/ip4/1.2.3.4/tcp/1").websocket_target()
