"""The session factory and its execution profile."""

import onnxruntime as ort
import pytest

from aipg.models import ExecutionProfile, ModelError, SessionFactory, cuda_is_usable
from aipg.wire import decode, encode


def test_profile_records_the_settings_and_round_trips(llm_runner):
    profile = llm_runner.profile
    assert profile.ort_version == ort.__version__
    assert profile.provider == "CPUExecutionProvider"
    assert profile.graph_optimization_level == 1 and profile.threads == 1
    assert profile.deterministic_compute
    assert profile.model_id == llm_runner.model.model_id
    assert decode(encode(profile), ExecutionProfile) == profile


def test_session_options_are_the_deterministic_ones():
    opts = SessionFactory(threads=2).options()
    assert opts.intra_op_num_threads == 2 and opts.inter_op_num_threads == 1
    assert opts.get_session_config_entry("session.use_deterministic_compute") == "1"
    assert opts.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL


def test_bad_settings_are_refused():
    with pytest.raises(ModelError, match="threads"):
        SessionFactory(threads=0)
    with pytest.raises(ModelError, match="optimization"):
        SessionFactory(optimization_level=3)
    with pytest.raises(ModelError, match="provider"):
        SessionFactory(provider="tpu")


def test_cuda_is_only_used_when_it_really_runs():
    if cuda_is_usable():
        assert SessionFactory().provider == "CUDAExecutionProvider"
    else:
        assert SessionFactory().provider == "CPUExecutionProvider"
        with pytest.raises(ModelError, match="CUDA"):
            SessionFactory(provider="cuda")


def test_garbage_model_bytes_are_a_model_error():
    with pytest.raises(ModelError, match="cannot load"):
        SessionFactory().create(b"not an onnx model")
