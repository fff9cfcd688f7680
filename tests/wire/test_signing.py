import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aipg.wire import (
    Identity,
    WireError,
    decode,
    encode,
    is_signed_by_signer,
    require_signature,
    sign,
    signing_bytes,
)

from .records_for_tests import Outer, VoteA, VoteA2, VoteB

ALICE = Identity.from_seed(bytes(range(32)))
BOB = Identity.from_seed(bytes(range(1, 33)))


@settings(max_examples=50, deadline=None)
@given(height=st.integers(0, 2**64 - 1), block=st.binary(min_size=32, max_size=32))
def test_signature_of_one_type_never_verifies_as_another(height, block):
    a = sign(VoteA(height, block), ALICE)
    assert is_signed_by_signer(a)
    same_fields_other_type = VoteB(height, block, a.signer, a.signature)
    assert not is_signed_by_signer(same_fields_other_type)
    other_version = VoteA2(height, block, a.signer, a.signature)
    assert not is_signed_by_signer(other_version)


def test_signed_record_survives_the_wire_and_tampering_is_caught():
    v = sign(VoteA(5, b"\x01" * 32), ALICE)
    back = decode(encode(v), VoteA)
    require_signature(back, ALICE.public_bytes)
    with pytest.raises(WireError, match="wrong key"):
        require_signature(back, BOB.public_bytes)
    with pytest.raises(WireError, match="bad signature"):
        require_signature(back.replace(height=6))
    with pytest.raises(WireError, match="bad signature"):
        require_signature(back.replace(signer=BOB.public_bytes))


def test_domain_tag_leads_the_signed_bytes():
    v = VoteA(1, bytes(32))
    assert signing_bytes(v).startswith(b"aipg/test_vote_a/1\0")
    assert signing_bytes(VoteA2(1, bytes(32))).startswith(b"aipg/test_vote_a_v2/2\0")


def test_unsigned_types_cannot_be_signed():
    with pytest.raises(TypeError):
        signing_bytes(Outer.__new__(Outer))
