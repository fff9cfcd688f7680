"""Streamed tokens the worker signs, and the evidence that a stream contradicts the
worker's own receipt (D85).

An LLM worker streams its tokens to the job's gateway while it generates (D50) as
:class:`TokenChunk` records, each signed by the worker: "tokens ``start`` .. ``start + n
- 1`` of assignment A are these". The receipt it signs at the end commits to all its
output tokens (``output_hash``). A chunk whose tokens are not the receipt's at those
positions (or positions the receipt does not have) is two signed statements about one
computation that cannot both be true: :class:`StreamEvidence` (the chunk, the receipt
and the output token ids that hash to the receipt's ``output_hash``) proves it with no
chain state but the worker's key, as equivocation evidence does (D36).
"""

from __future__ import annotations

from typing import Annotated

from aipg.wire import (
    NO_SIGNATURE,
    NO_SIGNER,
    U32,
    Hash32,
    MaxLen,
    PublicKeyBytes,
    Record,
    SignatureBytes,
    WireError,
    record,
    require_signature,
)

from .errors import PouwError
from .records import MAX_OUTPUT_TOKENS, Receipt, output_hash_tokens

__all__ = ["MAX_CHUNK_TOKENS", "StreamEvidence", "TokenChunk", "validate_stream_evidence"]

MAX_CHUNK_TOKENS = 256


@record(tag=503)
class TokenChunk(Record):
    """Tokens a worker generated for an assignment, sent to the job's gateway while it
    generates (D50): ``tokens`` are output tokens ``start`` .. ``start + len - 1``.

    Signed by the worker (D85): the gateway accepts chunks only from the assignee (the
    peer Noise authenticated, and its signature), and a chunk that contradicts the
    worker's receipt is evidence against it (:class:`StreamEvidence`).
    """

    job_id: Hash32
    assignment_id: Hash32
    start: U32
    tokens: Annotated[tuple[U32, ...], MaxLen(MAX_CHUNK_TOKENS)]
    signer: PublicKeyBytes = NO_SIGNER
    signature: SignatureBytes = NO_SIGNATURE


@record(tag=330, max_size=1 << 20)
class StreamEvidence(Record):
    """A signed chunk and a receipt of the same worker and assignment that disagree: the
    receipt's output tokens (``output_token_ids``, which hash to its ``output_hash``) are
    not the chunk's at the chunk's positions. Anyone holding both may submit it."""

    chunk: TokenChunk
    receipt: Receipt
    output_token_ids: Annotated[tuple[U32, ...], MaxLen(MAX_OUTPUT_TOKENS)]


def contradicts(chunk: TokenChunk, output_token_ids) -> bool:
    """Whether ``output_token_ids`` lack the chunk's tokens at the chunk's positions,
    the last output position aside: a forced error (D75) changes exactly that token in
    the receipt while the worker streams the true one, so a difference there alone is
    no evidence (a junk stream confined to it misleads a client by one token, which the
    gateway's own check of the result against the stream still catches)."""
    end = chunk.start + len(chunk.tokens)
    if end > len(output_token_ids):
        return True  # it streamed tokens the result does not have
    last = len(output_token_ids) - 1
    return any(
        output_token_ids[i] != t for i, t in enumerate(chunk.tokens, chunk.start) if i != last
    )


def validate_stream_evidence(evidence: StreamEvidence) -> None:
    """Check that one worker signed a chunk and a receipt for one assignment that
    disagree on its output tokens. Needs no chain state. Raises PouwError."""
    chunk, receipt = evidence.chunk, evidence.receipt
    for rec, what in ((chunk, "chunk.signature"), (receipt, "receipt.signature")):
        try:
            require_signature(rec)
        except WireError as e:
            raise PouwError(what, e.reason) from None
    if chunk.signer != receipt.signer:
        raise PouwError("chunk.signer", "the chunk and the receipt have different signers")
    if chunk.assignment_id != receipt.assignment_id or chunk.job_id != receipt.job_id:
        raise PouwError("chunk.assignment_id", "the chunk is of another assignment")
    if not chunk.tokens:
        raise PouwError("chunk.tokens", "an empty chunk states nothing")
    if output_hash_tokens(evidence.output_token_ids) != receipt.output_hash:
        raise PouwError("output_token_ids", "not the receipt's output tokens")
    if not contradicts(chunk, evidence.output_token_ids):
        raise PouwError("chunk.tokens", "the chunk agrees with the receipt")
