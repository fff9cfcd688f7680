"""aipg.pouw: Proof of Useful Work.

Jobs, claims and assignments (scheduling), receipts with execution commitments,
committee sampling, verdicts, certificates and fraud evidence, and the verifiers that
re-check a worker's numbers. A pure state machine plus verifiers: no networking here;
the node wires it to gossip. Imports wire and models only.

Entry points:

- records: :class:`Job`, :class:`Claim`, :class:`Assignment`, :class:`Receipt`,
  :class:`Result`, :class:`Verdict`, :class:`Certificate`, :class:`FraudEvidence`;
- :func:`validate_certificate` / :func:`validate_fraud_evidence`: the cheap checks a
  block runs (signatures, bindings, committee membership, quorum; no model run);
- :func:`committee_for` (:class:`Committee`, :func:`draw_committee`): who verifies a job,
  without its worker, gateway or client; abstentions seat reserves;
- :func:`work_units`: what a job's work is worth;
- :class:`Scheduler`: the gateway's claims / assignment / reassignment state machine;
- :func:`run_llm_job` / :func:`run_diffusion_job` (worker) and :func:`verify_llm` /
  :func:`verify_diffusion` (validator): execution with commitments, and re-checking.
"""

from .committee import (
    COMMITTEE_DELAY,
    COMMITTEE_LOOKAHEAD,
    COMMITTEE_SIZE,
    Committee,
    CommitteeRules,
    Tally,
    committee_seed,
    draw_committee,
    reserves,
    sample_committee,
    tally,
    tally_seated,
)
from .errors import PouwError
from .execute import LatentStore, run_diffusion_job, run_llm_job
from .records import (
    Assignment,
    Certificate,
    Claim,
    ConflictingVerdicts,
    EquivocationEvidence,
    FraudEvidence,
    FraudReview,
    Job,
    JobKind,
    LatentReply,
    LatentRequest,
    Receipt,
    Result,
    Tier,
    Verdict,
    VerdictCommit,
    VerdictReason,
    assignment_id,
    job_id,
    params_hash,
    receipt_id,
)
from .reveal import (
    CommitLookup,
    check_reveal,
    make_commit,
    needs_commitment,
    validate_commit,
    verdict_commitment,
    verdict_salt,
)
from .schedule import JobState, Reputation, ReputationConfig, Scheduler, SchedulerConfig
from .streams import StreamEvidence, TokenChunk, validate_stream_evidence
from .types import Height, JobId, Millis, ModelId, NodeKey, ReceiptId, Stake, WorkUnits
from .validate import (
    FinalizedHash,
    abstains,
    check_hash,
    committee_for,
    computes_differently,
    interested,
    make_challenge,
    review_committee,
    review_seed,
    validate_appeal,
    validate_assignment,
    validate_certificate,
    validate_conflicting_verdicts,
    validate_equivocation,
    validate_fraud_evidence,
    validate_job,
    validate_receipt,
    validate_review,
    validate_verdict,
    votes_differ,
)
from .verify import Check, verdict_for, verify_diffusion, verify_llm
from .votes import VoteCollector, make_verdict
from .work import diffusion_work_units, llm_work_units, work_units

__all__ = [
    "COMMITTEE_DELAY",
    "COMMITTEE_LOOKAHEAD",
    "COMMITTEE_SIZE",
    "Assignment",
    "Certificate",
    "Check",
    "Claim",
    "CommitLookup",
    "Committee",
    "CommitteeRules",
    "ConflictingVerdicts",
    "EquivocationEvidence",
    "FinalizedHash",
    "FraudEvidence",
    "FraudReview",
    "Height",
    "Job",
    "JobId",
    "JobKind",
    "JobState",
    "LatentReply",
    "LatentRequest",
    "LatentStore",
    "Millis",
    "ModelId",
    "NodeKey",
    "PouwError",
    "Receipt",
    "ReceiptId",
    "Reputation",
    "ReputationConfig",
    "Result",
    "Scheduler",
    "SchedulerConfig",
    "Stake",
    "StreamEvidence",
    "Tally",
    "Tier",
    "TokenChunk",
    "Verdict",
    "VerdictCommit",
    "VerdictReason",
    "VoteCollector",
    "WorkUnits",
    "abstains",
    "assignment_id",
    "check_hash",
    "check_reveal",
    "committee_for",
    "committee_seed",
    "computes_differently",
    "diffusion_work_units",
    "draw_committee",
    "interested",
    "job_id",
    "llm_work_units",
    "make_challenge",
    "make_commit",
    "make_verdict",
    "needs_commitment",
    "params_hash",
    "receipt_id",
    "reserves",
    "review_committee",
    "review_seed",
    "run_diffusion_job",
    "run_llm_job",
    "sample_committee",
    "tally",
    "tally_seated",
    "validate_appeal",
    "validate_assignment",
    "validate_certificate",
    "validate_commit",
    "validate_conflicting_verdicts",
    "validate_equivocation",
    "validate_fraud_evidence",
    "validate_job",
    "validate_receipt",
    "validate_review",
    "validate_stream_evidence",
    "validate_verdict",
    "verdict_commitment",
    "verdict_for",
    "verdict_salt",
    "verify_diffusion",
    "verify_llm",
    "votes_differ",
    "work_units",
]
