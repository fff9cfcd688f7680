"""Test-only misbehaviour (``aipg-node join --fault-*``), so end-to-end tests can show
the network catching a cheating worker or a Byzantine validator. Nothing here runs
unless a fault flag was given; ``join --help`` lists them under "testing only".
"""

from __future__ import annotations

import logging
import random
import tempfile
from dataclasses import dataclass
from pathlib import Path

from aipg.models import LLM, ModelDir, build_demo_diffusion, build_demo_llm
from aipg.pouw import Receipt, Result, Verdict, VerdictReason, make_verdict
from aipg.pouw.records import output_hash_tokens
from aipg.pouw.verify import Check
from aipg.stake.block import Vote, VoteStep
from aipg.stake.builder import make_vote
from aipg.wire import Identity, sign

from .catalog import KnownModel

log = logging.getLogger("aipg.node.faults")


@dataclass(frozen=True)
class Faults:
    """Which test-only misbehaviour a node runs with (all off on a real node)."""

    cheat_tokens: bool = False  # worker: alter one output token after generating
    swap_weights: bool = False  # worker: run a model with other weights of the same shape
    random_votes: bool = False  # validator: vote valid/invalid at random without checking
    double_sign: bool = False  # validator: sign two conflicting prevotes at each height
    double_receipt: bool = False  # worker: also gossip a second, altered receipt per job
    flip_verdicts: bool = False  # validator: also gossip the opposite verdict
    accuse: bool = False  # validator: vote every receipt invalid without checking
    copy_verdicts: bool = False  # validator: reveal others' votes as its own, uncommitted
    withhold_latents: bool = False  # worker: serve nobody its latents (answers challenges)
    misstream: bool = False  # worker: stream its tokens, then report an altered last token
    refuse_jobs: bool = False  # worker: claim jobs, then refuse every assignment
    junk_stream: bool = False  # worker: stream other tokens, then sign the honest result
    lazy_votes: bool = False  # validator: vote every receipt valid without checking (D75)
    skip_forced: bool = False  # worker: never make a forced error's prescribed change
    never_sign: bool = False  # worker: deliver an output early (D94), never sign its receipt
    no_overlay: bool = False  # validator: keep no overlay links to its ring neighbours (D105)
    relay: str = ""  # relay: "drop" or "corrupt" the circuits it forwards (gossip relay_fault)

    def any(self) -> bool:
        return (
            self.cheat_tokens
            or self.swap_weights
            or self.random_votes
            or self.double_sign
            or self.double_receipt
            or self.flip_verdicts
            or self.accuse
            or self.copy_verdicts
            or self.withhold_latents
            or self.misstream
            or self.refuse_jobs
            or self.junk_stream
            or self.lazy_votes
            or self.skip_forced
            or self.never_sign
            or self.no_overlay
            or bool(self.relay)
        )


SWAPPED_SEED_OFFSET = 1  # "other weights of the same shape": the demo builder, another seed


class _UncheckedModelDir(ModelDir):
    """A model directory that skips the hash check: the cheat runs files its manifest
    does not describe while claiming the manifest's model id."""

    def read_verified(self, role: str) -> bytes:
        return self.paths[role].read_bytes()


def swapped_weights(model: KnownModel) -> ModelDir:
    """The demo model of ``model``'s kind built from another seed (same shapes, other
    weights), under ``model``'s manifest. Works for models built by the demo builders."""
    out = Path(tempfile.mkdtemp(prefix="aipg-swapped-"))
    if model.kind == LLM:
        built = build_demo_llm(out / "llm", seed=_demo_seed("DEMO_LLM_SEED") + SWAPPED_SEED_OFFSET)
    else:
        built = build_demo_diffusion(
            out / "diffusion", seed=_demo_seed("DEMO_DIFFUSION_SEED") + SWAPPED_SEED_OFFSET
        )
    from aipg.models import load_model_dir

    variant = load_model_dir(built)
    paths = {role: variant.paths[role] for role in variant.paths}
    log.warning("FAULT: running %s with swapped weights", model.manifest.name)
    return _UncheckedModelDir(model.manifest, paths)


def _demo_seed(name: str) -> int:
    from aipg.models import demo

    return getattr(demo, name)


def altered_last_token(result: Result, identity: Identity) -> Result:
    """The worker's result with its last output token changed and the receipt re-signed
    to match: a worker that returns other tokens than its model generated."""
    tokens = list(result.output_token_ids)
    tokens[-1] = (tokens[-1] + 1) % 256 + 3
    log.warning("FAULT: altering an output token of job %s", result.receipt.job_id.hex()[:12])
    receipt = sign(result.receipt.replace(output_hash=output_hash_tokens(tokens)), identity)
    return result.replace(receipt=receipt, output_token_ids=tuple(tokens))


def conflicting_prevote(identity: Identity, vote: Vote) -> Vote | None:
    """A second prevote of ours for the same height and round, for another block (nil
    when the first was for a block, and the reverse): a double sign. Signed without the
    sign-record, which would refuse it."""
    if vote.step != VoteStep.PREVOTE:
        return None
    other = bytes(32) if vote.block_hash != bytes(32) else b"\x01" * 32
    log.warning("FAULT: double-signing a prevote at height %d round %d", vote.height, vote.round)
    return make_vote(identity, vote.chain_id, vote.height, vote.round, VoteStep.PREVOTE, other)


def random_check() -> Check:
    """A check's outcome drawn at random, without checking: a validator voting blind."""
    ok = random.random() < 0.5
    return Check(
        VerdictReason.OK if ok else VerdictReason.TOKEN_MISMATCH,
        detail="random vote",
        recomputed=b"",
    )


def flipped_verdict(identity: Identity, receipt: Receipt, verdict: Verdict) -> Verdict:
    """The opposite of ``verdict`` on ``receipt``, signed again: a member voting both ways."""
    reason = VerdictReason.TOKEN_MISMATCH if verdict.valid else VerdictReason.OK
    log.warning("FAULT: voting both ways on receipt %s", verdict.receipt_id.hex()[:12])
    return make_verdict(identity, receipt, reason, recomputed=b"flipped")


def lazy_check() -> Check:
    """A valid vote without checking: the lazy validator a forced error catches (D75)."""
    log.warning("FAULT: voting valid without checking")
    return Check(VerdictReason.OK, detail="lazy vote", recomputed=b"")


def accusing_check() -> Check:
    """An invalid vote without checking: a validator accusing every worker."""
    log.warning("FAULT: accusing a worker without checking")
    return Check(VerdictReason.TOKEN_MISMATCH, detail="false accusation", recomputed=b"")
