"""Wire codec throughput, and what validation costs next to the signature it guards.

    python bench/wire.py [--rounds 7] [--n 3000]

Prints one JSON object as its last line. ``verify_ratio`` is (decode + validate + verify
of a signed record per second) / (raw ``cryptography`` Ed25519 verifies per second of the
same signed bytes), measured in interleaved rounds in one process; medians of the rounds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Annotated

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from aipg.wire import (
    NO_SIGNATURE,
    NO_SIGNER,
    U32,
    U64,
    Hash32,
    Identity,
    MaxLen,
    PublicKeyBytes,
    Record,
    SignatureBytes,
    decode,
    encode,
    record,
    require_signature,
    sign,
    signing_bytes,
)
from aipg.wire.keys import forget_verified


@record(tag=99, name="bench_receipt")
class BenchReceipt(Record):
    """Shaped like a work receipt: hashes, counters, a short token list, a model name."""

    job_id: Hash32
    model_id: Hash32
    input_hash: Hash32
    output_hash: Hash32
    commitment: Hash32
    work_units: U64
    started_ms: U64
    finished_ms: U64
    tokens: Annotated[tuple[U32, ...], MaxLen(4096)]
    model_name: Annotated[str, MaxLen(64)]
    signer: PublicKeyBytes = NO_SIGNER
    signature: SignatureBytes = NO_SIGNATURE


def rate(fn, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return n / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--n", type=int, default=3000, help="operations per measurement")
    args = ap.parse_args()

    ident = Identity.from_seed(bytes(range(32)))
    rec = BenchReceipt(
        bytes([1]) * 32,
        bytes([2]) * 32,
        bytes([3]) * 32,
        bytes([4]) * 32,
        bytes([5]) * 32,
        1234,
        1_700_000_000_000,
        1_700_000_001_000,
        tuple(range(100, 132)),
        "aipg-demo-llm",
    )
    signed = sign(rec, ident)
    blob = encode(signed)
    payload = signing_bytes(signed)
    raw_key = Ed25519PublicKey.from_public_bytes(ident.public_bytes)

    def encode_fresh() -> None:
        # Records cache their wire form; measure encoding one that was not encoded yet.
        object.__delattr__(signed, "_wire_cache")
        encode(signed)

    def full_check() -> None:
        forget_verified()  # measure cold checks: a new message's signature is not cached
        require_signature(decode(blob, BenchReceipt))

    def verify() -> None:
        forget_verified()
        require_signature(signed)

    results: dict[str, list[float]] = {
        k: [] for k in ("encode", "decode", "sign", "verify", "full", "raw")
    }
    for _ in range(args.rounds):
        encode(signed)
        results["encode"].append(rate(encode_fresh, args.n))
        results["decode"].append(rate(lambda: decode(blob, BenchReceipt), args.n))
        results["sign"].append(rate(lambda: sign(rec, ident), args.n // 3))
        results["verify"].append(rate(verify, args.n // 3))
        results["full"].append(rate(full_check, args.n // 3))
        results["raw"].append(rate(lambda: raw_key.verify(signed.signature, payload), args.n // 3))
    med = {k: statistics.median(v) for k, v in results.items()}
    ratios = [f / r for f, r in zip(results["full"], results["raw"], strict=True)]
    print(
        json.dumps(
            {
                "bench": "wire",
                "record_bytes": len(blob),
                "encoded_per_s": round(med["encode"]),
                "decoded_validated_per_s": round(med["decode"]),
                "signed_per_s": round(med["sign"]),
                "verified_per_s": round(med["verify"]),
                "decode_validate_verify_per_s": round(med["full"]),
                "raw_ed25519_verify_per_s": round(med["raw"]),
                "verify_ratio": round(statistics.median(ratios), 3),
                "rounds": args.rounds,
            }
        )
    )


if __name__ == "__main__":
    main()
