"""The deterministic session factory: the one place that builds onnxruntime sessions.

Every ONNX session of the node comes from :class:`SessionFactory`, so the settings that
decide whether two runs give the same bits are set once:

- execution provider: CUDA only when a session really runs on it (``get_available_providers()``
  lists CUDA on machines where the CUDA libraries are missing; onnxruntime then silently
  falls back to CPU), else CPU;
- ``session.use_deterministic_compute`` (deterministic kernels where the provider has a choice);
- a fixed graph optimization level (fusions change the order of floating point operations,
  so the level is part of the result);
- sequential execution with one inter-op thread and a fixed intra-op thread count.

What we found on CPU (onnxruntime 1.32, MLAS, x86-64): the demo models give bitwise-equal
outputs with 1, 2 and 4 intra-op threads, at optimization level 1 and at 99 (a 384-token
prefill; 256x256 diffusion); GEMM splits work by output tiles, so each output element is
reduced in the same order whatever the thread count. What does change the bits is the
optimization level (level 1 vs 99 differ by ~3e-6 in the logits: fusions reorder the
arithmetic) and the shape of the computation (KV-cache decoding vs a one-pass prefill of
the same tokens differ by ~2e-6), so the level is fixed and recorded, and verification
compares logits within a tolerance. ``tests/models/test_llm.py`` and ``test_diffusion.py``
check thread-count equality on every run.

The settings are recorded as an :class:`ExecutionProfile` that receipts carry.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated

import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as _ort_state

from aipg.wire import U8, U16, Hash32, MaxLen, Record, record

from .errors import ModelError
from .manifest import ModelDir

__all__ = [
    "CPU",
    "CUDA",
    "DEFAULT_OPTIMIZATION_LEVEL",
    "ORT_ERRORS",
    "ExecutionProfile",
    "SessionFactory",
    "cuda_is_usable",
    "external_locations",
    "run_session",
]

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"

# Basic = constant folding and redundant-node elimination: no kernel fusions, whose
# availability (and rounding) differs between providers and runtime versions.
DEFAULT_OPTIMIZATION_LEVEL = 1
_LEVELS = {
    0: ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    1: ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    2: ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    99: ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
MAX_THREADS = 256
# onnxruntime's own exception types (Fail, InvalidArgument, ...), which share no base class
# but Exception; with RuntimeError/ValueError that its Python layer raises for bad feeds.
ORT_ERRORS: tuple[type[Exception], ...] = (
    *(v for v in vars(_ort_state).values() if isinstance(v, type) and issubclass(v, Exception)),
    RuntimeError,
    ValueError,
)


@record(tag=200)
class ExecutionProfile(Record):
    """How a result was computed: enough for a validator to judge bit differences.

    ``graph_optimization_level`` uses onnxruntime's numbering (0 none, 1 basic, 2 extended,
    99 all); ``threads`` is the intra-op thread count; ``model_id`` is the manifest hash.
    """

    ort_version: Annotated[str, MaxLen(32)]
    provider: Annotated[str, MaxLen(64)]
    graph_optimization_level: U8
    threads: U16
    deterministic_compute: bool
    model_id: Hash32


@functools.cache
def cuda_is_usable() -> bool:
    """True when a session created for CUDA really runs on CUDA (checked once, by trying)."""
    if CUDA not in ort.get_available_providers():
        return False
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    try:
        session = ort.InferenceSession(model.SerializeToString(), providers=[CUDA, CPU])
    except Exception:  # a broken CUDA install raises anything; it only means "not usable"
        return False
    return session.get_providers()[0] == CUDA


class SessionFactory:
    """Builds onnxruntime sessions with fixed, recorded settings.

    ``threads`` is the intra-op thread count (1 to 256); ``provider`` is ``"cpu"``,
    ``"cuda"`` or None for CUDA when usable, else CPU; ``optimization_level`` is one of
    0, 1, 2, 99 (onnxruntime's numbering). Raises ModelError for anything else.
    """

    def __init__(
        self,
        *,
        threads: int = 1,
        provider: str | None = None,
        optimization_level: int = DEFAULT_OPTIMIZATION_LEVEL,
    ) -> None:
        if type(threads) is not int or not 1 <= threads <= MAX_THREADS:
            raise ModelError(f"threads must be an integer from 1 to {MAX_THREADS}, got {threads!r}")
        if optimization_level not in _LEVELS:
            raise ModelError(
                f"optimization level must be one of {sorted(_LEVELS)}, got {optimization_level!r}"
            )
        self.threads = threads
        self.optimization_level = optimization_level
        self.provider = _resolve_provider(provider)

    def options(self) -> ort.SessionOptions:
        """Fresh session options with this factory's settings."""
        opts = ort.SessionOptions()
        opts.graph_optimization_level = _LEVELS[self.optimization_level]
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        opts.add_session_config_entry("session.use_deterministic_compute", "1")
        # Spinning threads burn the CPU between decode steps of other jobs; results do
        # not depend on it.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return opts

    def create(self, model: Path | bytes) -> ort.InferenceSession:
        """A session for ``model`` (a path or serialized ONNX bytes). Raises ModelError."""
        source = str(model) if isinstance(model, Path) else model
        providers = [CUDA, CPU] if self.provider == CUDA else [CPU]
        try:
            return ort.InferenceSession(source, sess_options=self.options(), providers=providers)
        except ORT_ERRORS as e:
            what = model if isinstance(model, Path) else "model bytes"
            raise ModelError(f"cannot load ONNX model {what}: {_first_line(e)}") from None

    def create_for(self, model: ModelDir, role: str) -> ort.InferenceSession:
        """A session for the ONNX file of ``role``, every byte of it hash-checked first.

        A self-contained file is read once, checked, and the same bytes are loaded. A file
        whose weights live in external data must have them listed as ``<role>.data`` roles
        in the manifest, next to it as the graph names them; they are checked and the model
        is loaded from its path. External data the manifest does not list is refused: from
        bytes, onnxruntime would look for it relative to the working directory.
        """
        data_roles = model.data_roles(role)
        if not data_roles:
            data = model.read_verified(role)
            if locations := external_locations(data):
                raise ModelError(
                    f"{model.entry(role).path} ({role}) keeps weights in external data "
                    f"({sorted(locations)[0]!r}) that the manifest does not list as {role}.data"
                )
            return self.create(data)
        path = model.verify_file(role)
        listed = {model.paths[r].resolve() for r in data_roles}
        for r in data_roles:
            model.verify_file(r)
        with path.open("rb") as f:
            wanted = {(path.parent / loc).resolve() for loc in external_locations(f.read())}
        if not wanted <= listed:
            raise ModelError(
                f"{model.entry(role).path} ({role}) names external data files "
                f"the manifest does not list as {role}.data"
            )
        return self.create(path)

    def profile(self, model_id: bytes) -> ExecutionProfile:
        """The execution profile of sessions from this factory running ``model_id``."""
        return ExecutionProfile(
            ort_version=ort.__version__,
            provider=self.provider,
            graph_optimization_level=self.optimization_level,
            threads=self.threads,
            deterministic_compute=True,
            model_id=model_id,
        )


def external_locations(model_bytes: bytes) -> set[str]:
    """The external-data file names an ONNX model refers to (empty when self-contained).
    Raises ModelError when the bytes are not an ONNX model."""
    import onnx
    from google.protobuf.message import DecodeError

    try:
        model = onnx.ModelProto.FromString(model_bytes)
    except DecodeError:
        raise ModelError("not an ONNX model (protobuf does not parse)") from None
    return {
        entry.value
        for tensor in _all_tensors(model.graph)
        if tensor.data_location == onnx.TensorProto.EXTERNAL
        for entry in tensor.external_data
        if entry.key == "location"
    }


def _all_tensors(graph):
    """Every tensor of a graph: initializers and attribute tensors, subgraphs included."""
    yield from graph.initializer
    yield from (sparse.values for sparse in graph.sparse_initializer)
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _all_tensors(attr.g)
            for sub in attr.graphs:
                yield from _all_tensors(sub)


def run_session(
    session: ort.InferenceSession, outputs: list[str] | None, feeds: dict, what: str
) -> list:
    """``session.run`` with onnxruntime's failures (a graph that does not accept what its
    manifest promised) turned into ModelError naming ``what``."""
    try:
        return session.run(outputs, feeds)
    except ORT_ERRORS as e:
        raise ModelError(f"{what} failed to run: {_first_line(e)}") from None


def _resolve_provider(provider: str | None) -> str:
    if provider is None:
        return CUDA if cuda_is_usable() else CPU
    if provider == "cpu":
        return CPU
    if provider == "cuda":
        if not cuda_is_usable():
            raise ModelError("CUDA was asked for but cannot run a session on this machine")
        return CUDA
    raise ModelError(f"provider must be 'cpu' or 'cuda', got {provider!r}")


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:300] if text else type(e).__name__
