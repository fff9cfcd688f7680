"""Node-level wire records (tags 500-599) and the names of topics and protocols.

The pouw records say what a job, receipt or verdict is; these say how the node moves
them: a worker announces its finished work as a :class:`WorkReport` (the job, the
assignment and the result with its receipt) so that every validator can check it
without asking anyone; the ``job`` protocol answers with a :class:`JobAck`.
"""

from __future__ import annotations

import enum
from typing import Annotated

from aipg.pouw import Assignment, Job, Result
from aipg.pouw.records import MAX_IMAGE_BYTES
from aipg.pouw.streams import MAX_CHUNK_TOKENS as MAX_CHUNK_TOKENS
from aipg.pouw.streams import TokenChunk as TokenChunk
from aipg.wire import (
    NO_SIGNATURE,
    NO_SIGNER,
    U8,
    U16,
    U32,
    U64,
    Hash32,
    MaxLen,
    PublicKeyBytes,
    Record,
    SignatureBytes,
    record,
)

TOPIC_PREFIX = "/aipg/1/"
# "blocks" carries each finalized block once (its proposer publishes it): a node that
# does not vote follows the chain there instead of hearing every vote (D102)
TOPICS = ("consensus", "txs", "jobs", "receipts", "verdicts", "models", "workers", "blocks")


def topic(name: str) -> str:
    assert name in TOPICS, name
    return TOPIC_PREFIX + name


# request/response protocols
PROTO_JOB = "job"
PROTO_SYNC = "sync"
PROTO_BLOB = "blob"


@record(tag=500, max_size=MAX_IMAGE_BYTES + (2 << 20))
class WorkReport(Record):
    """A worker's finished job, gossiped on ``receipts`` for the committee to verify."""

    job: Job
    assignment: Assignment
    result: Result


@record(tag=501)
class JobAck(Record):
    """The answer to a ``job`` protocol request that needs no other answer."""

    ok: bool
    reason: Annotated[str, MaxLen(200)] = ""


@record(tag=502)
class WorkerStatus(Record):
    """A worker's periodic, signed word on ``workers``: the models it runs jobs for and
    how busy it is. Gateways route only to models some live worker serves."""

    models: Annotated[tuple[Hash32, ...], MaxLen(64)]
    queue: U16
    timestamp_ms: U64
    signer: PublicKeyBytes = NO_SIGNER
    signature: SignatureBytes = NO_SIGNATURE


# How often a worker refreshes its status (D88): every 10 s, or less often in a large
# network, so that all the workers together send about STATUS_RATE_PER_S statuses a
# second whatever their number; gateways forget a worker after 3.5 of its intervals.
STATUS_INTERVAL_S = 10.0
STATUS_INTERVAL_MAX_S = 120.0  # however many (claimed) workers a gateway hears
STATUS_RATE_PER_S = 2.0  # D103 (10 in D88: most of 300 whole nodes' idle CPU in one process)


def status_interval_s(workers: int) -> float:
    """A worker's status refresh when ``workers`` workers are live (as its gateway hears)."""
    return min(STATUS_INTERVAL_MAX_S, max(STATUS_INTERVAL_S, workers / STATUS_RATE_PER_S))


def status_ttl_ms(workers: int) -> int:
    """How long a gateway that hears ``workers`` live workers counts one unheard of."""
    return int(3.5 * 1000 * status_interval_s(workers))


# TokenChunk (503) lives in pouw, signed: a chunk can be evidence on chain (D85). Tokens
# per chunk (MAX_CHUNK_TOKENS, 256): a worker batches what it generated while its last
# chunk was in flight, so a chunk is small unless the gateway is slow.


class RefusalCode(enum.IntEnum):
    """Why a worker refuses an assignment (D52)."""

    OVER_LIMITS = 1  # the job does not fit the model's limits (the gateway should have refused it)
    BUSY = 2  # the worker's queue is full
    NOT_FOR_US = 3  # unknown job, assigned to another worker, or signed by another gateway
    RUN_FAILED = 4  # the model failed before producing a result


@record(tag=504)
class JobRefusal(Record):
    """A worker cannot run an assignment (D52): the answer to the Assignment itself, or
    sent to the gateway on ``job`` when execution fails before any output. The gateway
    reassigns (or fails) the job at once; a refusal costs no reputation and earns nothing."""

    job_id: Hash32
    assignment_id: Hash32
    code: U8
    detail: Annotated[str, MaxLen(200)] = ""


@record(tag=505, max_size=MAX_IMAGE_BYTES + (2 << 20))
class ForcedResult(Record):
    """A worker's forced job (D75), to its gateway only (over ``job``, never gossiped):
    ``report`` is what the committee checks (its receipt carries the prescribed change),
    ``vrf_proof`` the worker's proof that the job was forced, and ``true_token_ids`` /
    ``true_text`` the real output the gateway delivers to its client. The gateway checks
    the proof and that the report's tokens are the prescribed change of the true ones
    (:func:`aipg.pouw.forced.check_forced_result`)."""

    report: WorkReport
    vrf_proof: Annotated[bytes, MaxLen(80)]
    true_token_ids: Annotated[tuple[U32, ...], MaxLen(1 << 16)]
    true_text: Annotated[str, MaxLen(1 << 20)]
    vocab_size: U32


@record(tag=506, max_size=2 << 20)
class EarlyResult(Record):
    """A worker's LLM output, to its gateway at once on a chain with forced errors (D94),
    before the receipt: the receipt waits for the job's seed beacon (about two blocks,
    D75), the client does not. ``output_token_ids`` / ``text`` are the true output,
    ``prompt_tokens`` the prompt's length in tokens. Signed by the worker: with its
    signed stream (D85) it is what the worker answers for until its receipt (a
    :class:`WorkReport` or :class:`ForcedResult`) follows, within
    ``RECEIPT_DUE_BLOCKS`` of the beacon (:mod:`aipg.node.services.forced`)."""

    job_id: Hash32
    assignment_id: Hash32
    prompt_tokens: U32
    output_token_ids: Annotated[tuple[U32, ...], MaxLen(1 << 16)]
    text: Annotated[str, MaxLen(1 << 20)]
    signer: PublicKeyBytes = NO_SIGNER
    signature: SignatureBytes = NO_SIGNATURE
