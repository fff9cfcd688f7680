"""Record types used only by the wire tests (tags 90-99 are reserved for tests)."""

from __future__ import annotations

from typing import Annotated

from aipg.wire import (
    I64,
    NO_SIGNATURE,
    NO_SIGNER,
    U32,
    U64,
    Hash32,
    MaxLen,
    PublicKeyBytes,
    Record,
    SignatureBytes,
    record,
)


@record(tag=90, name="test_inner")
class Inner(Record):
    count: U32
    label: Annotated[str, MaxLen(16)]


@record(tag=91, name="test_outer")
class Outer(Record):
    digest: Hash32
    amount: U64
    delta: I64
    flag: bool
    blob: Annotated[bytes, MaxLen(64)]
    items: Annotated[tuple[U32, ...], MaxLen(8)]
    inner: Inner
    maybe: Inner | None
    inners: Annotated[tuple[Inner, ...], MaxLen(4)]


@record(tag=92, name="test_vote_a")
class VoteA(Record):
    height: U64
    block: Hash32
    signer: PublicKeyBytes = NO_SIGNER
    signature: SignatureBytes = NO_SIGNATURE


@record(tag=93, name="test_vote_b")
class VoteB(Record):
    """Same layout as VoteA: a signature of one must not verify as the other."""

    height: U64
    block: Hash32
    signer: PublicKeyBytes = NO_SIGNER
    signature: SignatureBytes = NO_SIGNATURE


@record(tag=94, name="test_vote_a_v2", version=2)
class VoteA2(Record):
    height: U64
    block: Hash32
    signer: PublicKeyBytes = NO_SIGNER
    signature: SignatureBytes = NO_SIGNATURE


@record(tag=95, name="test_small", max_size=64)
class Small(Record):
    payload: Annotated[bytes, MaxLen(1000)]
