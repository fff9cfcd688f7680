"""Ledger, sync and consensus throughput.

    python bench/chain.py [--certs 1000] [--sync-blocks 500] [--heights 5] [--rounds 3]

Prints one JSON object as its last line:

- ``block_1000_certs_s``: decode, validate and apply one block carrying 1,000 PoUW
  certificates of 7 verdicts each (the 7 validators: mainnet's 68 seats take them all;
  target <= 1.0 s), its jobs committed two blocks before (D56), its signatures checked up front by
  a process per core (``verify_processes``); ``block_1000_certs_serial_s`` is the same in
  one process. Both cold (the verified-signature cache emptied); ``block_1000_certs_warm_s``
  is a node that already checked the verdicts when they were gossiped (all the rest of
  the work: decoding, bindings, committees, quorum, payments). ``ed25519_verify_us`` (raw
  ``cryptography`` verifies on this machine, same run) and ``certs_block_verifies`` (the
  signatures such a block holds) give the reference: ``signature_share`` is the part of
  the block time that is bare signature checking.
- ``sync_blocks_per_s``: a fresh store syncing empty blocks with commit certificates of
  7 validators from a peer's store through the sync protocol (target >= 500), in one
  process; ``sync_blocks_per_s_parallel_verify`` checks each batch's signatures on a
  process per core first.
- ``consensus_heights_per_s``: the Tendermint state machines of 100 validators in the
  in-process simulation, no network delay.
- ``vrf_verify_us`` / ``vrf_prove_us``: the block beacon's ECVRF (D55) on libsodium, per
  header; ``vrf_verify_per_ed25519`` is its verify over a bare Ed25519 verify measured
  in the same run (each header costs one).

Medians over ``--rounds``.
"""

from __future__ import annotations

import argparse
import functools
import json
import multiprocessing
import os
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from aipg.pouw import Certificate
from aipg.stake.block import Block
from aipg.stake.chain import Chain
from aipg.stake.genesis import MAINNET_PARAMS
from aipg.stake.ledger import apply_block
from aipg.stake.sigbatch import preverify_block
from aipg.stake.simulation import Behaviour, Scenario, Simulation
from aipg.stake.sync import SyncServer, sync_from
from aipg.testing.chainkit import TestChain, commit_jobs, ident, make_job, work_on
from aipg.wire import decode, encode
from aipg.wire.keys import forget_verified

# Mainnet's epochs and periods (no validator-set change while measuring), 1 s blocks.
BENCH_PARAMS = MAINNET_PARAMS.replace(target_block_time_ms=1_000)


def bench_chain(n_blocks: int) -> TestChain:
    """7 validators and one user (the client of the certificates' jobs), then ``n_blocks``
    empty blocks, each committed by every validator."""
    chain = TestChain(n_validators=7, n_users=1, params=BENCH_PARAMS)
    for _ in range(n_blocks):
        chain.next()
    return chain


# --- block with 1,000 certificates -----------------------------------------------------


def bench_certificates(n_certs: int, rounds: int) -> dict:
    chain = bench_chain(3)
    workers = [ident(1000 + i) for i in range(50)]
    jobs = [make_job(chain, nonce=i) for i in range(n_certs)]
    commit_jobs(chain, jobs)  # one block commits them all; the work is drawn 2 later (D56)
    certs = [
        Certificate(*work_on(chain.state, chain.keys, job, workers[i % len(workers)]))
        for i, job in enumerate(jobs)
    ]
    state, commits = chain.state, chain.commits
    data = encode(chain.build(certificates=certs))
    serial, parallel = [], []
    workers = os.cpu_count() or 1
    ctx = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
        pool_map = functools.partial(pool.map, chunksize=256)
        list(pool_map(abs, range(workers)))  # start the workers before timing
        for _ in range(rounds):
            for times, map_ in ((serial, None), (parallel, pool_map)):
                forget_verified()  # cold: nothing verified before
                t0 = time.perf_counter()
                received = decode(data, Block)
                if map_ is not None:
                    preverify_block(received, map_)
                after = apply_block(state, received)
                times.append(time.perf_counter() - t0)
    assert len(after.certified) == n_certs
    warm = []  # signatures already verified (a node that saw the verdicts on gossip)
    for _ in range(rounds):
        t0 = time.perf_counter()
        apply_block(state, decode(data, Block))
        warm.append(time.perf_counter() - t0)
    # Reference in the same run: bare Ed25519 verifies of the block's signatures.
    v = certs[0].verdicts[0]
    from aipg.wire import signing_bytes

    msg = signing_bytes(v)
    key = Ed25519PublicKey.from_public_bytes(v.signer)
    t0 = time.perf_counter()
    for _ in range(2_000):
        key.verify(v.signature, msg)
    verify_us = (time.perf_counter() - t0) / 2_000 * 1e6
    # Per certificate: job, assignment, receipt, and each verdict's signature (a block
    # does not re-check verdict challenges: they were checked when collected).
    verifies = n_certs * (3 + len(certs[0].verdicts)) + len(commits[-1].precommits)
    block_s = statistics.median(serial)
    return {
        "block_1000_certs_s": round(statistics.median(parallel) * 1000 / n_certs, 4),
        "block_1000_certs_serial_s": round(block_s * 1000 / n_certs, 4),
        "block_1000_certs_warm_s": round(statistics.median(warm) * 1000 / n_certs, 4),
        "verify_processes": workers,
        "block_certs": n_certs,
        "block_bytes": len(data),
        "ed25519_verify_us": round(verify_us, 1),
        "certs_block_verifies": verifies,
        "signature_share": round(verifies * verify_us / 1e6 / block_s, 3),
    }


# --- sync --------------------------------------------------------------------------------


def bench_sync(n_blocks: int, rounds: int) -> dict:
    chain = bench_chain(n_blocks)
    genesis, blocks, commits = chain.genesis, chain.blocks, chain.commits
    rates = []
    with tempfile.TemporaryDirectory() as tmp:
        peer = Chain.open(Path(tmp) / "peer.sqlite", genesis)
        for b, c in zip(blocks, commits, strict=True):
            peer.finalize(b, c)
        server = SyncServer(peer.store)

        async def request(peer_id, protocol, data, timeout):
            return server.handle(data)

        workers = os.cpu_count() or 1
        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"))
        pool_map = functools.partial(pool.map, chunksize=64)
        list(pool_map(abs, range(workers)))  # start the workers before timing
        rates_parallel = []
        for r in range(rounds):
            for out, map_ in ((rates, None), (rates_parallel, pool_map)):
                fresh = Chain.open(Path(tmp) / f"fresh{r}{map_ is None}.sqlite", genesis)

                async def run(fresh=fresh, map_=map_):
                    return await sync_from(fresh, request, "peer", batch=256, verify_map=map_)

                forget_verified()  # cold: building the chain verified these votes already
                t0 = time.perf_counter()
                applied = trio.run(run)
                out.append(applied / (time.perf_counter() - t0))
                assert fresh.height == n_blocks
                fresh.close()
        pool.shutdown()
        peer.close()
    return {
        "sync_blocks_per_s": round(statistics.median(rates), 1),
        "sync_blocks_per_s_parallel_verify": round(statistics.median(rates_parallel), 1),
        "sync_blocks": n_blocks,
    }


# --- consensus ---------------------------------------------------------------------------


def bench_consensus(n_validators: int, heights: int, rounds: int) -> dict:
    rates = []
    for r in range(rounds):
        sc = Scenario(
            seed=r,
            n=n_validators,
            stakes=[10_000] * n_validators,
            behaviours=[Behaviour.HONEST] * n_validators,
            gst_ms=0,
            drop_rate=0.0,
            max_delay_ms=0,
            pre_gst_delay_ms=0,
            partition=None,
            heights=heights,
        )
        sim = Simulation(sc, relay=False)  # no losses: nothing to relay
        t0 = time.perf_counter()
        assert sim.run()
        rates.append(heights / (time.perf_counter() - t0))
    return {
        "consensus_heights_per_s": round(statistics.median(rates), 2),
        "consensus_validators": n_validators,
    }


def bench_beacon(rounds: int) -> dict:
    from aipg.pouw.vrf import prove, verify

    me = ident(7)
    key = Ed25519PublicKey.from_public_bytes(me.public_bytes)
    sig = me.sign(b"x" * 32)
    proves, verifies, eds = [], [], []
    alpha = b"\x01" * 32
    pi = prove(me.seed, alpha)
    n = 200
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(n):
            prove(me.seed, alpha)
        proves.append((time.perf_counter() - t0) / n * 1e6)
        t0 = time.perf_counter()
        for _ in range(n):
            verify(me.public_bytes, pi, alpha)
        verifies.append((time.perf_counter() - t0) / n * 1e6)
        t0 = time.perf_counter()
        for _ in range(n):
            key.verify(sig, b"x" * 32)
        eds.append((time.perf_counter() - t0) / n * 1e6)
    verify_us = statistics.median(verifies)
    return {
        "vrf_prove_us": round(statistics.median(proves), 1),
        "vrf_verify_us": round(verify_us, 1),
        "vrf_verify_per_ed25519": round(verify_us / statistics.median(eds), 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--certs", type=int, default=1000)
    ap.add_argument("--sync-blocks", type=int, default=500)
    ap.add_argument("--validators", type=int, default=100)
    ap.add_argument("--heights", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    out = {}
    out.update(bench_certificates(args.certs, args.rounds))
    out.update(bench_sync(args.sync_blocks, args.rounds))
    out.update(bench_consensus(args.validators, args.heights, args.rounds))
    out.update(bench_beacon(args.rounds))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
