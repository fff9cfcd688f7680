"""Hostile input never gets past the checks as anything but a clear error."""

import json

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aipg.models import (
    LLM,
    LlmInterface,
    Manifest,
    ModelError,
    ModelFile,
    SamplingParams,
    TokenizerInfo,
    check_manifest,
    load_model_dir,
    manifest_from_json,
    manifest_to_json,
)
from aipg.models.blob import BlobResponse, BlobServer, BlobStatus, check_announcement
from aipg.models.store import BlobStore
from aipg.wire import WireError, decode, encode

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=6)
    ),
    max_leaves=20,
)


@settings(deadline=None)  # the machine is shared: wall time is noise
@given(json_values)
def test_arbitrary_json_is_a_model_error(value):
    with pytest.raises(ModelError):
        manifest_from_json(json.dumps(value))


def mutations(llm_manifest_json: dict):
    def mutate(path, value):
        data = json.loads(json.dumps(llm_manifest_json))
        target = data
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
        return data

    return mutate


@settings(
    suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=200, deadline=None
)
@given(
    path=st.sampled_from(
        [
            ("name",),
            ("kind",),
            ("files",),
            ("files", 0, "path"),
            ("files", 0, "sha256"),
            ("files", 0, "size"),
            ("files", 1, "role"),
            ("llm",),
            ("llm", "num_layers"),
            ("llm", "vocab_size"),
            ("tokenizer", "role"),
            ("tokenizer", "kind"),
            ("default_sampling", "max_tokens"),
            ("diffusion",),
        ]
    ),
    value=json_values,
)
def test_mutated_manifests_are_valid_or_a_model_error(llm_dir, path, value):
    original = json.loads((llm_dir / "manifest.json").read_text())
    try:
        manifest = manifest_from_json(json.dumps(mutations(original)(path, value)))
    except ModelError:
        return
    check_manifest(manifest)  # whatever got through is a consistent manifest
    assert decode(encode(manifest), Manifest) == manifest


@pytest.mark.parametrize(
    "path",
    ["../escape", "/abs/path", "a/../../b", "a\\b", "", "./x", "manifest.json", "a//b"],
)
def test_file_paths_cannot_leave_the_model_dir(llm_dir, path):
    manifest = load_model_dir(llm_dir).manifest
    files = (manifest.files[0].replace(path=path), *manifest.files[1:])
    with pytest.raises(ModelError, match="plain relative path"):
        check_manifest(manifest.replace(files=files))


def test_manifest_json_round_trips(llm_dir, diffusion_dir):
    for root in (llm_dir, diffusion_dir):
        manifest = load_model_dir(root).manifest
        assert manifest_from_json(manifest_to_json(manifest)) == manifest


def test_manifest_kind_and_interface_must_agree():
    base = Manifest(
        name="m",
        version="1",
        kind=LLM,
        files=(
            ModelFile(role="decoder", path="model.onnx", sha256=bytes(32), size=1),
            ModelFile(role="tokenizer", path="t.model", sha256=bytes(32), size=1),
        ),
        tokenizer=TokenizerInfo(
            kind="sentencepiece", role="tokenizer", bos_id=1, eos_id=2, pad_id=3
        ),
        llm=LlmInterface(
            num_layers=1, num_heads=1, head_dim=8, vocab_size=10, context_length=16, kv_cache=True
        ),
        diffusion=None,
        default_sampling=SamplingParams(),
        default_diffusion=None,
        license="MIT",
    )
    check_manifest(base)
    with pytest.raises(ModelError, match="kind"):
        check_manifest(base.replace(kind="video"))
    with pytest.raises(ModelError, match="llm interface"):
        check_manifest(base.replace(llm=None))
    with pytest.raises(ModelError, match="decoder"):
        check_manifest(base.replace(files=base.files[1:]))
    with pytest.raises(ModelError, match="twice"):
        check_manifest(base.replace(files=base.files + base.files[:1]))
    with pytest.raises(ModelError, match="tokenizer role"):
        check_manifest(base.replace(tokenizer=base.tokenizer.replace(role="vocab")))


@pytest.fixture(scope="module")
def empty_server(tmp_path_factory) -> BlobServer:
    return BlobServer(BlobStore(tmp_path_factory.mktemp("empty")))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_blob_server_answers_any_bytes_with_a_response(empty_server, data):
    server = empty_server
    resp = decode(trio.run(server.handle, "peer", data), BlobResponse)
    assert resp.status in (BlobStatus.BAD_REQUEST, BlobStatus.NOT_FOUND, BlobStatus.BAD_RANGE)


@settings(deadline=None)  # the machine is shared: wall time is noise
@given(st.binary(max_size=300))
def test_announcement_bytes_are_checked(data):
    with pytest.raises((WireError, ModelError)):
        check_announcement(data)
