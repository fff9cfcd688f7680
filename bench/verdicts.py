"""What each committee strategy earns from the verdict pool, on the real ledger.

    python bench/verdicts.py [--jobs 60] [--fraud-every 10] [--forced-bps 1000] [--seed 7]

Seven validators of equal stake, commit-then-reveal on (``verdict_commit_blocks`` 2).
Each validator plays one strategy on every committee it is drawn for:

- ``honest``: checks, commits, reveals the right vote (valid, or invalid on a fraud);
- ``lazy``: commits and reveals "valid" without checking;
- ``copier``: does not check or commit; reveals a copy of an honest member's vote;
- ``abstainer``: always says UNAVAILABLE (no commitment needed, no vote).

Every job's votes go through pouw's :class:`VoteCollector` with the chain's commitment
lookup, exactly as a node counts them; a certificate, or fraud evidence and then its
upheld review, goes into a block applied by ``apply_block``. One job in
``--fraud-every`` has a wrong receipt. Prints one JSON object as its last line: for each
strategy, its share of all verdict-pool payouts divided by its share of the committee
seats drawn for it (``*_pay_per_seat``, 1.0 = paid as much as its seats; honest members
get more because the others' shares go to them), and the honest figure's ratio to the
lazy one.

Forced errors (D75) at ``--forced-bps`` (the chain's ``forced_error_bps``; 0 turns them
off): each worker's real VRF decides which of its jobs are forced; a forced receipt
carries the prescribed change, the honest members vote invalid, and once the commit
phase closes the worker puts its ``ForcedError`` in a block; the lazy member's valid
vote goes to a forced review that slashes it ``lazy_slash_bps``. ``*_stake_lost`` is
the bond each strategy lost (AIPG), ``*_net_per_seat`` its verdict pay less that loss,
per seat drawn, in AIPG.
"""

from __future__ import annotations

import argparse
import json
import random
import time

from aipg.pouw import (
    COMMITTEE_DELAY,
    Certificate,
    FraudEvidence,
    VerdictReason,
    VoteCollector,
    committee_for,
    job_id,
    make_commit,
    make_verdict,
)
from aipg.pouw.forced import ForcedError, forced_output, forced_proof, is_forced
from aipg.pouw.records import output_hash_tokens
from aipg.stake.reveal import commitments
from aipg.testing.chainkit import (
    AIPG,
    TEST_PARAMS,
    TestChain,
    ident,
    make_review,
    make_work,
    work_on,
)
from aipg.testing.world import OUTPUT_IDS
from aipg.wire import Address

PARAMS = TEST_PARAMS.replace(
    verdict_commit_blocks=2, escrow_period=8, committee_size=5, lazy_slash_bps=500
)
VOCAB = 1000
STRATEGIES = ("honest", "lazy", "copier", "abstainer", "honest", "honest", "honest")


def run(jobs: int, fraud_every: int, seed: int, forced_bps: int = 1000) -> dict:
    rng = random.Random(seed)
    params = PARAMS.replace(forced_error_bps=forced_bps)
    # twice the minimum stake: a slashed member stays a validator (and keeps being drawn)
    stakes = [2 * params.min_validator_stake] * len(STRATEGIES)
    c = TestChain(n_validators=len(STRATEGIES), params=params, stakes=stakes)
    for _ in range(3):
        c.next()
    strategy = {v.public_bytes: s for v, s in zip(c.validators, STRATEGIES, strict=True)}
    earned = dict.fromkeys(set(STRATEGIES), 0)
    seats = dict.fromkeys(set(STRATEGIES), 0)
    workers = [ident(300 + i) for i in range(5)]
    bonds0 = {k: c.state.bond(k).stake for k in strategy}
    forced_jobs = 0

    def apply(**body) -> None:
        before = {k: c.state.balance(Address.from_public_key(k).raw) for k in strategy}
        block = c.build(**body)
        c.commit(block)
        pool_part = c.state.emission.block_reward(c.state.height)
        ops = pool_part * PARAMS.operations_share_bps // 10_000
        validators_part = (pool_part - ops) - (pool_part - ops) * PARAMS.work_share_bps // 10_000
        bonus = validators_part * PARAMS.proposer_bonus_bps // 10_000
        for k in strategy:
            gained = c.state.balance(Address.from_public_key(k).raw) - before[k]
            gained -= bonus if k == block.header.proposer else 0
            earned[strategy[k]] += gained

    def review_of(review) -> None:  # reviewers commit, then reveal (D76)
        commits = [make_commit(c.keys[v.signer], v, review=True) for v in review.verdicts]
        apply(verdict_commits=commits)
        for _ in range(params.verdict_commit_blocks):
            apply()
        apply(reviews=[review])

    for i in range(jobs):
        worker = workers[rng.randrange(len(workers))]
        job, a, r, _ = make_work(c, worker, nonce=i)
        seed = c.state.commitments[job_id(job)] + COMMITTEE_DELAY  # D56
        proof = forced_proof(worker.seed, c.state.beacon_at(seed), a)
        forced = forced_bps > 0 and is_forced(
            worker.public_bytes, proof, c.state.beacon_at(seed), a, forced_bps
        )
        fraud = i % fraud_every == 0 and not forced
        if forced:  # the receipt carries the prescribed change of the true tokens
            wrong = output_hash_tokens(forced_output(OUTPUT_IDS, VOCAB))
            job, a, r, _ = work_on(
                c.state, c.keys, job, worker, receipt_over={"output_hash": wrong}
            )
            forced_jobs += 1
        snapshot = c.state.validator_snapshot_at(seed)
        committee = committee_for(
            job, a, snapshot, c.state.beacon_at(seed), rules=c.state.params.committee_rules()
        )
        votes, commits = {}, []
        right = VerdictReason.TOKEN_MISMATCH if fraud or forced else VerdictReason.OK
        for k in committee.candidates:
            s = strategy[k]
            if s == "copier":
                continue
            reason = {"honest": right, "lazy": VerdictReason.OK}.get(s, VerdictReason.UNAVAILABLE)
            votes[k] = make_verdict(c.keys[k], r, reason, recomputed=b"check")
            if reason != VerdictReason.UNAVAILABLE:
                commits.append(make_commit(c.keys[k], votes[k]))
        for k in committee.candidates:  # the copier copies an honest vote, uncommitted
            if strategy[k] == "copier":
                votes[k] = make_verdict(c.keys[k], r, right, recomputed=b"copied")
        apply(verdict_commits=commits)
        collector = VoteCollector(job, a, r, committee, snapshot, commitments(c.state))
        for k in committee.candidates:
            collector.add(votes[k])
        for k in committee.members:  # the seats drawn (an abstainer gives its own up)
            seats[strategy[k]] += 1
        outcome = collector.outcome
        if forced:  # the worker springs the trap once the commit phase has closed
            for _ in range(params.verdict_commit_blocks):
                apply()
            gone = {k for k, v in votes.items() if v.reason == VerdictReason.UNAVAILABLE}
            seated = set(committee.seated(gone))
            revealed = tuple(
                v
                for k, v in sorted(votes.items())
                if strategy[k] != "copier" and (k in seated or k in gone)
            )
            fe = ForcedError(job, a, r, proof, OUTPUT_IDS, VOCAB, revealed)
            apply(forced_errors=[fe])
            lazy = tuple(v for v in revealed if v.valid)
            if lazy:
                review_of(make_review(c, FraudEvidence(job, a, r, lazy), upheld=True))
        elif isinstance(outcome, Certificate):
            apply(certificates=[outcome])
        elif isinstance(outcome, FraudEvidence):
            apply(frauds=[outcome])
            review_of(make_review(c, outcome, upheld=True))
    total_earned = sum(earned.values()) or 1
    total_seats = sum(seats.values()) or 1
    out = {
        f"{s}_pay_per_seat": round((earned[s] / total_earned) / (seats[s] / total_seats), 3)
        if seats[s]
        else None
        for s in sorted(set(STRATEGIES))
    }
    lost = dict.fromkeys(set(STRATEGIES), 0)
    for k, s in strategy.items():
        lost[s] += bonds0[k] - c.state.bond(k).stake
    for s in sorted(set(STRATEGIES)):
        out[f"{s}_stake_lost"] = round(lost[s] / AIPG, 3)
        out[f"{s}_net_per_seat"] = (
            round((earned[s] - lost[s]) / seats[s] / AIPG, 3) if seats[s] else None
        )
    out["forced_jobs"] = forced_jobs
    out["forced_bps"] = forced_bps
    out["honest_over_lazy"] = (
        round(out["honest_pay_per_seat"] / out["lazy_pay_per_seat"], 3)
        if out["lazy_pay_per_seat"]
        else None
    )
    out["jobs"] = jobs
    out["fraud_every"] = fraud_every
    out["verdict_payouts_aipg"] = round(total_earned / AIPG, 3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=60)
    ap.add_argument("--fraud-every", type=int, default=10)
    ap.add_argument("--forced-bps", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    t0 = time.perf_counter()
    out = run(args.jobs, args.fraud_every, args.seed, args.forced_bps)
    out["seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
