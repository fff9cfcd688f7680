import os
import stat

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aipg.wire import Identity, KeyFileError, PeerId, WireError, load_identity, save_identity
from aipg.wire.base58 import b58decode, b58encode
from aipg.wire.keyproto import public_key_from_protobuf

# Test vectors of the libp2p peer-id spec (peer-ids/peer-ids.md, "Test vectors").
SPEC_ED25519_PRIVATE = bytes.fromhex(
    "080112407e0830617c4a7de83925dfb2694556b12936c477a0e1feb2e148ec9da60fee7d"
    "1ed1e8fae2c4a144b8be8fd4b47bf3d3b34b871c3cacf6010f0e42d474fce27e"
)
SPEC_ED25519_PUBLIC = bytes.fromhex(
    "080112201ed1e8fae2c4a144b8be8fd4b47bf3d3b34b871c3cacf6010f0e42d474fce27e"
)
# The peer ID other libp2p implementations derive from that key.
SPEC_PEER_ID = "12D3KooWBtg3aaRMjxwedh83aGiUkwSxDwUZkzuJcfaqUmo7R3pq"


def test_libp2p_spec_vectors():
    ident = Identity.from_libp2p_protobuf(SPEC_ED25519_PRIVATE)
    assert public_key_from_protobuf(SPEC_ED25519_PUBLIC) == ident.public_bytes
    assert ident.to_libp2p_protobuf() == SPEC_ED25519_PRIVATE
    pid = ident.peer_id
    assert str(pid) == SPEC_PEER_ID
    assert pid.raw == b"\x00\x24" + SPEC_ED25519_PUBLIC
    assert PeerId.from_string(SPEC_PEER_ID) == pid
    assert PeerId.from_string(SPEC_PEER_ID).public_key == ident.public_bytes


@given(st.binary(min_size=32, max_size=32))
def test_every_peer_id_round_trips_and_looks_like_libp2p(seed):
    pid = Identity.from_seed(seed).peer_id
    text = str(pid)
    assert text.startswith("12D3KooW")
    assert PeerId.from_string(text) == pid


@given(st.binary(max_size=40))
def test_base58_round_trip(data):
    assert b58decode(b58encode(data)) == data


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "empty"),
        ("QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N", "not supported"),
        ("12D3KooW0000", "base58"),
        ("12D3KooWBtg3aaRMjxwedh83aGiUkwSxDwUZkzuJcfaqUmo7R3p", "Ed25519 peer ID"),
    ],
)
def test_bad_peer_ids(text, message):
    with pytest.raises(WireError, match=message):
        PeerId.from_string(text)


def test_libp2p_key_import_rejects_mismatched_and_foreign_keys():
    bad = bytearray(SPEC_ED25519_PRIVATE)
    bad[-1] ^= 1
    with pytest.raises(WireError, match="does not match"):
        Identity.from_libp2p_protobuf(bytes(bad))
    secp = bytes.fromhex("0802122053DADF1D5A164D6B4ACDB15E24AA4C5B1D3461BDBD42ABEDB0A4404D56CED8FB")
    with pytest.raises(WireError, match="only Ed25519"):
        Identity.from_libp2p_protobuf(secp)
    with pytest.raises(WireError):
        Identity.from_libp2p_protobuf(SPEC_ED25519_PRIVATE[:-5])


def test_key_file_is_private_and_others_readable_files_are_refused(tmp_path):
    ident = Identity.generate()
    path = tmp_path / "node.key"
    save_identity(ident, path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_identity(path).public_bytes == ident.public_bytes
    with pytest.raises(KeyFileError, match="refusing to overwrite"):
        save_identity(Identity.generate(), path)
    os.chmod(path, 0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        load_identity(path)
    os.chmod(path, 0o600)
    path.write_bytes(b"garbage")
    with pytest.raises(KeyFileError, match="not a libp2p"):
        load_identity(path)
    with pytest.raises(KeyFileError, match="aipg-node init"):
        load_identity(tmp_path / "missing.key")
