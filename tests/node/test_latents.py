"""The worker's latent store on disk: it survives a restart, serves what committees ask,
and lets go once a block makes the receipt final or it can no longer be certified."""

from __future__ import annotations

import numpy as np
import pytest

from aipg.node.services.latents import DiskLatentStore
from aipg.pouw import LatentRequest, PouwError, Result, receipt_id
from aipg.testing.world import World

W = World()


def _result(seed: int) -> Result:
    job = W.diffusion_job(seed=seed)
    receipt = W.receipt(job, W.assignment(job))
    return Result(receipt, (), (), "", b"", b"", ())


def _latents(seed: int, steps: int = 4) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((1, 4, 8, 8)).astype(np.float32) for _ in range(steps + 1)]


def test_latents_survive_a_restart_and_are_served_bit_for_bit(tmp_path):
    store = DiskLatentStore(tmp_path)
    result, latents = _result(1), _latents(1)
    store.put_result(result, latents, height=5)
    rid = receipt_id(result.receipt)
    reopened = DiskLatentStore(tmp_path)  # the worker restarted
    assert len(reopened) == 1
    reply = reopened.serve(LatentRequest(receipt_id=rid, steps=(0, 3)))
    assert reply.latents == (latents[0].tobytes(), latents[3].tobytes())
    with pytest.raises(PouwError, match="out of range"):
        reopened.serve(LatentRequest(receipt_id=rid, steps=(9,)))
    with pytest.raises(PouwError, match="no latents"):
        reopened.serve(LatentRequest(receipt_id=bytes(32), steps=(0,)))


def test_a_half_written_file_from_a_crash_is_dropped(tmp_path):
    (tmp_path / ("ab" * 32 + ".3.tmp")).write_bytes(b"partial")
    (tmp_path / "notes.npy").write_bytes(b"not ours")
    store = DiskLatentStore(tmp_path)
    assert len(store) == 0 and not list(tmp_path.glob("*.tmp"))


def test_latents_go_when_a_block_makes_the_receipt_final_or_it_is_too_old(tmp_path):
    store = DiskLatentStore(tmp_path)
    final, young, old = _result(2), _result(3), _result(4)
    store.put_result(final, _latents(2), height=10)
    store.put_result(young, _latents(3), height=10)
    store.put_result(old, _latents(4), height=2)
    store.settle([receipt_id(final.receipt)], height=12, too_old=5)
    assert store.receipt_ids() == [receipt_id(young.receipt)]
    assert len(list(tmp_path.glob("*.npy"))) == 1


def test_the_store_is_bounded_by_count_and_bytes_oldest_first(tmp_path):
    one = DiskLatentStore(tmp_path / "a")
    one.put_result(_result(5), _latents(5), height=1)
    size = one.bytes
    store = DiskLatentStore(tmp_path / "b", max_receipts=3, max_bytes=10 * size)
    results = [_result(10 + i) for i in range(6)]
    for i, r in enumerate(results):
        store.put_result(r, _latents(10 + i), height=i)
    assert store.receipt_ids() == [receipt_id(r.receipt) for r in results[-3:]]
    small = DiskLatentStore(tmp_path / "c", max_bytes=2 * size)
    for i, r in enumerate(results):
        small.put_result(r, _latents(10 + i), height=i)
    assert small.bytes <= 2 * size and len(small) == 2


def test_a_challenge_answer_carries_every_digest_and_the_asked_latents(tmp_path):
    """What a withholding challenge's answer is built from: the digests chain to the
    receipt's commitment, and each asked latent hashes to its digest (as the ledger
    checks)."""
    from aipg.pouw.commitment import chain_head, latent_digest
    from aipg.stake.challenge import raw_latent_digest

    store = DiskLatentStore(tmp_path)
    result, latents = _result(5), _latents(5)
    store.put_result(result, latents, height=5)
    shape, digests, asked = store.answer_data(receipt_id(result.receipt), (1, 4))
    assert shape == (1, 4, 8, 8)
    assert digests == tuple(latent_digest(x) for x in latents)
    assert chain_head(digests) == chain_head([latent_digest(x) for x in latents])
    assert [raw_latent_digest(shape, raw) for raw in asked] == [digests[1], digests[4]]
    with pytest.raises(PouwError, match="out of range"):
        store.answer_data(receipt_id(result.receipt), (9,))
