"""Noise XX against the published test vectors, and libp2p's identity payload."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from aipg.gossip.errors import DecryptError, HandshakeError
from aipg.gossip.noise import (
    CipherState,
    XXHandshake,
    make_identity_payload,
    verify_identity_payload,
)
from aipg.wire import Identity

# Every Noise_XX_25519_ChaChaPoly_SHA256 vector of the two public suites:
# cacophony: https://github.com/haskell-cryptography/cacophony/blob/master/vectors/cacophony.txt
# snow:      https://github.com/mcginty/snow/blob/main/tests/vectors/snow.txt
# Messages alternate initiator/responder from the first; the first three are the handshake,
# the rest are transport messages.
VECTORS = [
    {
        "source": "cacophony",
        "init_prologue": "4a6f686e2047616c74",
        "init_static": "e61ef9919cde45dd5f82166404bd08e38bceb5dfdfded0a34c8df7ed542214d1",
        "init_ephemeral": "893e28b9dc6ca8d611ab664754b8ceb7bac5117349a4439a6b0569da977c464a",
        "resp_prologue": "4a6f686e2047616c74",
        "resp_static": "4a3acbfdb163dec651dfa3194dece676d437029c62a408b4c5ea9114246e4893",
        "resp_ephemeral": "bbdb4cdbd309f1a1f2e1456967fe288cadd6f712d65dc7b7793d5e63da6b375b",
        "handshake_hash": "c8e5f64e846193be2a834104c2a009868d6c9f3bd3c186299888b488b2f1f58e",
        "messages": [
            (
                "4c756477696720766f6e204d69736573",
                "ca35def5ae56cec33dc2036731ab14896bc4c75dbb07a61f879f8e3afa4c79444c756477696720766f6e204d69736573",
            ),
            (
                "4d757272617920526f746862617264",
                "95ebc60d2b1fa672c1f46a8aa265ef51bfe38e7ccb39ec5be34069f14480884381cbad1f276e038c48378ffce2b65285e08d6b68aaa3629a5a8639392490e5b9bd5269c2f1e4f488ed8831161f19b7815528f8982ffe09be9b5c412f8a0db50f8814c7194e83f23dbd8d162c9326ad",
            ),
            (
                "462e20412e20486179656b",
                "c7195ffacac1307ff99046f219750fc47693e23c3cb08b89c2af808b444850a80ae475b9df0f169ae80a89be0865b57f58c9fea0d4ec82a286427402f113e4b6ae769a1d95941d49b25030",
            ),
            ("4361726c204d656e676572", "96763ed773f8e47bb3712f0e29b3060ffc956ffc146cee53d5e1df"),
            (
                "4a65616e2d426170746973746520536179",
                "3e40f15f6f3a46ae446b253bf8b1d9ffb6ed9b174d272328ff91a7e2e5c79c07f5",
            ),
            (
                "457567656e2042f6686d20766f6e2042617765726b",
                "eb3f3515110702e047a6c9da4478b6ead94873c11c0f2d710ddb3f09fce024b3a58502ae3f",
            ),
        ],
    },
    {
        "source": "snow",
        "init_prologue": "5468657265206973206e6f20726967687420616e642077726f6e672e2054686572652773206f6e6c792066756e20616e6420626f72696e672e",
        "init_static": "7dec208517a3b81a2861d7a71266d5d6dc944c5a8816634a86fe63198a0148ee",
        "init_ephemeral": "a32daf21e93c0131495ce1d903181fde81cc46937daaeb990bae7c992709421e",
        "resp_prologue": "5468657265206973206e6f20726967687420616e642077726f6e672e2054686572652773206f6e6c792066756e20616e6420626f72696e672e",
        "resp_static": "4d0aed5098e3b4ef20357e9f686ce66204c792b358da2e475017d6c485304881",
        "resp_ephemeral": "4eece0f195d026db035ff987597c429d3ad3bcc2944df37d649528951b2a27c5",
        "handshake_hash": None,
        "messages": [
            (
                "d03c489139e645d0711a3c9e810d776b46a84912463fafa87b884eebf242dc34",
                "f9fa868ba97ab8a2686deccfaad5a484ee10a5bb85e3d1dce015a84797f92818d03c489139e645d0711a3c9e810d776b46a84912463fafa87b884eebf242dc34",
            ),
            (
                "d8190a92f7dc0c93dbea9118ba8055751fb7c6590c416ffbd419964132b99a85",
                "8c4e6fdb7d09d501a86f7eca5c234522751706ed409182c05cdf5f827d4dae47b81c6c5f43b025692c24391eefee725c17d8cb0fbe3e4abb8aedf42c4fd2592d4ea48ac08989d6ae8b4adae08b2c34087c808c7aa55a63c02b0fab9e930612336bd43eaea04d3c670a0a146691aa9cc9d357872320dc735dbc48580cffb553db",
            ),
            (
                "77891b19dcb92ef7c055b672c4a5aa7fdf1c84146b8b303459022729473ce254",
                "933ca6b5ed60df3df66121f0ab49a09e49efa45c613a86a3cecbf4c535cef2f83f72b42837b18e3572f2fdc2b74c331e2368a545cef54bdca081678ab0e9dd5348122459e0c034c851984d88ce610963d43cde6cfe73a67fbd5a63e8bfca96d0",
            ),
            (
                "d7efdf988072881941db045a42882433817555128fbf5663e56081712ec7d212",
                "54ef0ff0629e1aaa7685a2806ab111cba76b52331f2642276736f415868eacb69ab2577f3bda0cbf72f879685f6ed25f",
            ),
            (
                "dd7bf01a588bafb52c6cfba952e5d8fe35cc2b3f92b4730ae2474615157345ce",
                "356be70f110306d5c699bb834bb9d58d909e325924dfbec972e406e6f294dc63e1daebefe8a62a334facc8048ab4ad66",
            ),
        ],
    },
]


def _key(hex_: str) -> X25519PrivateKey:
    return X25519PrivateKey.from_private_bytes(bytes.fromhex(hex_))


def _pair(v) -> tuple[XXHandshake, XXHandshake]:
    init = XXHandshake(
        True,
        _key(v["init_static"]),
        prologue=bytes.fromhex(v["init_prologue"]),
        ephemeral_key=_key(v["init_ephemeral"]),
    )
    resp = XXHandshake(
        False,
        _key(v["resp_static"]),
        prologue=bytes.fromhex(v["resp_prologue"]),
        ephemeral_key=_key(v["resp_ephemeral"]),
    )
    return init, resp


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: v["source"])
def test_published_vector_byte_for_byte(vector):
    init, resp = _pair(vector)
    msgs = vector["messages"]
    for i in range(3):
        payload, ciphertext = (bytes.fromhex(x) for x in msgs[i])
        sender, receiver = (init, resp) if i % 2 == 0 else (resp, init)
        written = sender.write_message(payload)
        assert written.hex() == ciphertext.hex(), f"handshake message {i}"
        assert receiver.read_message(written) == payload
    assert init.complete and resp.complete
    assert init.handshake_hash == resp.handshake_hash
    if vector["handshake_hash"]:
        assert init.handshake_hash.hex() == vector["handshake_hash"]
    assert init.remote_static == resp.static_public
    assert resp.remote_static == init.static_public
    i_send, i_recv = init.split()
    r_send, r_recv = resp.split()
    for i in range(3, len(msgs)):
        payload, ciphertext = (bytes.fromhex(x) for x in msgs[i])
        send, recv = (i_send, r_recv) if i % 2 == 0 else (r_send, i_recv)
        written = send.encrypt(payload)
        assert written == ciphertext, f"transport message {i}"
        assert recv.decrypt(written) == payload


def _random_handshake(prologue=b""):
    init = XXHandshake(True, X25519PrivateKey.generate(), prologue=prologue)
    resp = XXHandshake(False, X25519PrivateKey.generate(), prologue=prologue)
    return init, resp


def test_tampered_handshake_message_fails_and_poisons_the_state():
    init, resp = _random_handshake()
    resp.read_message(init.write_message())
    second = bytearray(resp.write_message(b"payload"))
    second[40] ^= 1  # inside the encrypted static key
    with pytest.raises(HandshakeError, match="authentication failed"):
        init.read_message(bytes(second))
    with pytest.raises(HandshakeError, match="has failed"):
        init.write_message()


def test_mismatched_prologue_fails():
    init = XXHandshake(True, X25519PrivateKey.generate(), prologue=b"a")
    resp = XXHandshake(False, X25519PrivateKey.generate(), prologue=b"b")
    resp.read_message(init.write_message())
    with pytest.raises(HandshakeError):
        init.read_message(resp.write_message())


def test_out_of_turn_and_truncated_messages():
    init, resp = _random_handshake()
    with pytest.raises(HandshakeError, match="out of turn"):
        resp.write_message()
    with pytest.raises(HandshakeError, match="truncated"):
        resp.read_message(b"\x00" * 31)
    with pytest.raises(HandshakeError, match="split before"):
        init.split()


def test_transport_rejects_tamper_replay_and_reorder_without_losing_sync():
    init, resp = _random_handshake()
    resp.read_message(init.write_message())
    init.read_message(resp.write_message())
    resp.read_message(init.write_message())
    a_send, _ = init.split()
    _, b_recv = resp.split()
    first, second = a_send.encrypt(b"first"), a_send.encrypt(b"second")
    with pytest.raises(DecryptError):
        b_recv.decrypt(second)  # out of order
    with pytest.raises(DecryptError):
        b_recv.decrypt(first[:-1] + bytes([first[-1] ^ 1]))
    with pytest.raises(DecryptError, match="shorter"):
        b_recv.decrypt(b"short")
    assert b_recv.decrypt(first) == b"first"
    assert b_recv.decrypt(second) == b"second"
    with pytest.raises(DecryptError):
        b_recv.decrypt(first)  # replay


def test_nonce_exhaustion_is_an_error():
    key = bytes(range(32))
    cs = CipherState(key, nonce=2**64 - 2)
    cs.encrypt(b"last one")
    with pytest.raises(DecryptError, match="exhausted"):
        cs.encrypt(b"one more")


def test_identity_payload_binds_peer_id_to_static_key():
    ident = Identity.from_seed(bytes([7]) * 32)
    static = X25519PrivateKey.generate().public_key().public_bytes_raw()
    payload = make_identity_payload(ident, static)
    assert verify_identity_payload(payload, static) == ident.peer_id
    other_static = X25519PrivateKey.generate().public_key().public_bytes_raw()
    with pytest.raises(HandshakeError, match="does not verify"):
        verify_identity_payload(payload, other_static)


@pytest.mark.parametrize(
    "payload",
    [b"", b"\x0a", b"\x0a\x05abc", b"\x0b", b"\x12\x00", b"\x0a\x00\x12\x00", b"\xff" * 12],
)
def test_malformed_identity_payloads_are_handshake_errors(payload):
    with pytest.raises(HandshakeError):
        verify_identity_payload(payload, bytes(32))
