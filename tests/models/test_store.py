"""The blob store and model store: atomic, content-addressed, corruption detected."""

import hashlib
import os

import pytest

from aipg.models import LlmRunner, ModelError, SamplingParams, load_model_dir
from aipg.models.store import BlobStore, ModelStore


def test_put_and_read_blobs(tmp_path):
    store = BlobStore(tmp_path)
    digest = store.put_bytes(b"hello blobs")
    assert digest == hashlib.sha256(b"hello blobs").digest()
    assert store.path(digest) == tmp_path / "sha256" / digest.hex()
    assert store.read(digest, 6, 3) == b"blo"
    assert store.size(digest) == 11
    assert os.listdir(tmp_path / "tmp") == []
    with pytest.raises(ModelError, match="does not match"):
        store.put_bytes(b"other", expected=digest)
    assert not store.has(hashlib.sha256(b"other").digest())


def test_put_file_refuses_a_file_with_the_wrong_hash(tmp_path):
    store = BlobStore(tmp_path / "blobs")
    source = tmp_path / "f"
    source.write_bytes(b"x" * 3_000_000)
    with pytest.raises(ModelError, match="does not match"):
        store.put_file(source, expected=bytes(32))
    assert os.listdir(tmp_path / "blobs" / "sha256") == []
    assert os.listdir(tmp_path / "blobs" / "tmp") == []
    assert store.put_file(source) == hashlib.sha256(source.read_bytes()).digest()


def test_model_round_trips_through_the_store(tmp_path, llm_dir, llm_runner):
    store = ModelStore(tmp_path)
    mid = store.add_model_dir(llm_dir)
    assert mid == load_model_dir(llm_dir).model_id
    assert store.model_ids() == [mid]
    assert store.missing_files(mid) == []
    runner = LlmRunner(store.open_model(mid))
    ids = runner.tokenizer.encode("blob store")
    params = SamplingParams(max_tokens=8)
    assert (
        runner.generate(ids, params, 1).token_ids == llm_runner.generate(ids, params, 1).token_ids
    )


def test_corruption_is_detected_on_load_and_on_verify(tmp_path, llm_dir):
    store = ModelStore(tmp_path)
    mid = store.add_model_dir(llm_dir)
    decoder = store.manifest(mid).files[0]
    path = store.blobs.path(decoder.sha256)
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="sha256 does not match"):
        LlmRunner(store.open_model(mid))
    assert store.verify_model(mid) == [decoder]
    assert store.missing_files(mid) == [decoder]  # removed, to be fetched again
    with pytest.raises(ModelError, match="missing"):
        store.open_model(mid)


def test_corrupt_manifest_blob_is_reported(tmp_path, llm_dir):
    store = ModelStore(tmp_path)
    mid = store.add_model_dir(llm_dir)
    store.blobs.path(mid).write_bytes(b"garbage")
    with pytest.raises(ModelError, match="corrupt"):
        store.manifest(mid)
    with pytest.raises(ModelError, match="not in the store"):
        store.manifest(mid)


def test_add_model_dir_refuses_a_lying_manifest(tmp_path, llm_dir):
    import shutil

    copy = tmp_path / "m"
    shutil.copytree(llm_dir, copy)
    (copy / "tokenizer.model").write_bytes(b"not the tokenizer")
    store = ModelStore(tmp_path / "blobs")
    with pytest.raises(ModelError, match=r"tokenizer\.model"):
        store.add_model_dir(copy)
    assert store.model_ids() == []


def test_models_with_external_data_load_from_the_store(tmp_path, llm_runner):
    from aipg.models import build_demo_llm

    source = build_demo_llm(tmp_path / "ext", external_data=True)
    store = ModelStore(tmp_path / "blobs")
    mid = store.add_model_dir(source)
    model = store.open_model(mid)
    assert model.paths["decoder.data"].parent == model.paths["decoder"].parent
    runner = LlmRunner(model)
    ids = runner.tokenizer.encode("external data")
    params = SamplingParams(max_tokens=8)
    assert (
        runner.generate(ids, params, 2).token_ids == llm_runner.generate(ids, params, 2).token_ids
    )
    # A corrupt data blob is caught on load, removed by verify, and the view renewed after.
    data = store.manifest(mid).files[-1]
    blob = store.blobs.path(data.sha256)
    blob.write_bytes(b"\0" * data.size)
    with pytest.raises(ModelError, match=r"model\.onnx_data"):
        LlmRunner(store.open_model(mid))
    assert store.verify_model(mid) == [data]
    store.blobs.put_file(source / "model.onnx_data", data.sha256)
    LlmRunner(store.open_model(mid))
