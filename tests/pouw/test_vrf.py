"""ECVRF-EDWARDS25519-SHA512-TAI against RFC 9381's vectors, and what must not verify."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aipg.pouw.vrf import L, VrfError, proof_to_hash, prove, verify
from aipg.wire import Identity

# RFC 9381 Appendix B.3, Examples 16 and 17: (SK, PK, alpha, pi, beta).
VECTORS = [
    (
        "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
        "",
        "8657106690b5526245a92b003bb079ccd1a92130477671f6fc01ad16f26f723f"
        "26f8a57ccaed74ee1b190bed1f479d9727d2d0f9b005a6e456a35d4fb0daab12"
        "68a1b0db10836d9826a528ca76567805",
        "90cf1df3b703cce59e2a35b925d411164068269d7b2d29f3301c03dd757876ff"
        "66b71dda49d2de59d03450451af026798e8f81cd2e333de5cdf4f3e140fdd8ae",
    ),
    (
        "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
        "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
        "72",
        "f3141cd382dc42909d19ec5110469e4feae18300e94f304590abdced48aed593"
        "3bf0864a62558b3ed7f2fea45c92a465301b3bbf5e3e54ddf2d935be3b67926d"
        "a3ef39226bbc355bdc9850112c8f4b02",
        "eb4440665d3891d668e7e0fcaf587f1b4bd7fbfe99d0eb2211ccec90496310eb"
        "5e33821bc613efb94db5e5b54c70a848a0bef4553a41befc57663b56373a5031",
    ),
]
# Example 18: pi in full; beta's first bytes.
EX18 = (
    "c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
    "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
    "af82",
    "9bc0f79119cc5604bf02d23b4caede71393cedfbb191434dd016d30177ccbf80"
    "96bb474e53895c362d8628ee9f9ea3c0e52c7a5c691b6c18c9979866568add7a"
    "2d41b00b05081ed0f58ee5e31b3a970e",
    "645427e5d00c62a23fb703732fa5",
)


@pytest.mark.parametrize(("sk", "pk", "alpha", "pi", "beta"), VECTORS)
def test_rfc9381_vectors(sk, pk, alpha, pi, beta):
    sk, pk, alpha, pi, beta = map(bytes.fromhex, (sk, pk, alpha, pi, beta))
    assert Identity.from_seed(sk).public_bytes == pk  # VRF keys are Ed25519 keys
    assert prove(sk, alpha) == pi
    assert proof_to_hash(pi) == beta
    assert verify(pk, pi, alpha) == beta


def test_rfc9381_example_18():
    sk, pk, alpha, pi, beta = map(bytes.fromhex, EX18)
    assert prove(sk, alpha) == pi
    assert verify(pk, pi, alpha).startswith(beta)


def _flip(b: bytes, i: int) -> bytes:
    return b[:i] + bytes([b[i] ^ 1]) + b[i + 1 :]


@pytest.mark.parametrize("i", [0, 31, 32, 47, 48, 79])
def test_a_changed_proof_does_not_verify(i):
    _, pk, alpha, pi, _ = map(bytes.fromhex, VECTORS[1])
    with pytest.raises(VrfError):
        verify(pk, _flip(pi, i), alpha)


def test_wrong_key_wrong_input_and_malformed_proofs_are_refused():
    _, pk, alpha, pi, _ = map(bytes.fromhex, VECTORS[1])
    other = Identity.from_seed(bytes(32)).public_bytes
    for key, proof, msg in [
        (other, pi, alpha),  # another key
        (pk, pi, b"\x73"),  # another input
        (pk, pi[:79], alpha),  # short
        (pk, pi + b"\x00", alpha),  # long
        (bytes(32), pi, alpha),  # not a valid key
        (b"\x01" + bytes(31), pi, alpha),  # the identity: small order
    ]:
        with pytest.raises(VrfError):
            verify(key, proof, msg)
    # s not reduced mod L: s + L is the same scalar and must still be refused
    s = int.from_bytes(pi[48:], "little") + L
    with pytest.raises(VrfError, match="reduced"):
        verify(pk, pi[:48] + s.to_bytes(32, "little"), alpha)


@settings(max_examples=20, deadline=None)
@given(seed=st.binary(min_size=32, max_size=32), alpha=st.binary(max_size=64))
def test_prove_then_verify_round_trips(seed, alpha):
    pk = Identity.from_seed(seed).public_bytes
    pi = prove(seed, alpha)
    assert verify(pk, pi, alpha) == proof_to_hash(pi)
