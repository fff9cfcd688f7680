"""Node-level wire records (tags 500-599) and the names of topics and protocols.

The pouw records say what a job, receipt or verdict is; these say how the node moves
them: a worker announces its finished work as a :class:`WorkReport` (the job, the
assignment and the result with its receipt) so that every validator can check it
without asking anyone; the ``job`` protocol answers with a :class:`JobAck`.
"""

from __future__ import annotations

from typing import Annotated

from aipg.pouw import Assignment, Job, Result
from aipg.pouw.records import MAX_IMAGE_BYTES
from aipg.wire import (
    NO_SIGNATURE,
    NO_SIGNER,
    U16,
    U64,
    Hash32,
    MaxLen,
    PublicKeyBytes,
    Record,
    SignatureBytes,
    record,
)

TOPIC_PREFIX = "/aipg/1/"
TOPICS = ("consensus", "txs", "jobs", "receipts", "verdicts", "models", "workers")


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
