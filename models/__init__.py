"""aipg.models: model manifests, the blob store, deterministic ONNX sessions, the LLM and
diffusion runners, the tokenizer and the demo-model builders. Imports only aipg.wire."""

from .demo import build_demo, build_demo_diffusion, build_demo_llm, train_demo_tokenizer
from .diffusion import (
    Conditioning,
    DdimSchedule,
    DiffusionResult,
    DiffusionRunner,
    DiffusionTimings,
    StepEvent,
    seeded_gaussian,
)
from .errors import ModelError
from .llm import Generation, LlmRunner, Timings, TokenEvent
from .manifest import (
    DIFFUSION,
    LLM,
    DiffusionInterface,
    DiffusionParams,
    LlmInterface,
    Manifest,
    ModelAnnouncement,
    ModelDir,
    ModelFile,
    ModelId,
    TokenizerInfo,
    check_manifest,
    load_model_dir,
    manifest_from_json,
    manifest_to_json,
    model_id,
    model_id_text,
    write_manifest,
)
from .sampling import MAX_TOKENS, SamplingParams, choose_token, sampling_uniform
from .session import ExecutionProfile, SessionFactory, cuda_is_usable
from .tokenizer import Tokenizer

__all__ = [
    "DIFFUSION",
    "LLM",
    "MAX_TOKENS",
    "Conditioning",
    "DdimSchedule",
    "DiffusionInterface",
    "DiffusionParams",
    "DiffusionResult",
    "DiffusionRunner",
    "DiffusionTimings",
    "ExecutionProfile",
    "Generation",
    "LlmInterface",
    "LlmRunner",
    "Manifest",
    "ModelAnnouncement",
    "ModelDir",
    "ModelError",
    "ModelFile",
    "ModelId",
    "SamplingParams",
    "SessionFactory",
    "StepEvent",
    "Timings",
    "TokenEvent",
    "Tokenizer",
    "TokenizerInfo",
    "build_demo",
    "build_demo_diffusion",
    "build_demo_llm",
    "check_manifest",
    "choose_token",
    "cuda_is_usable",
    "load_model_dir",
    "manifest_from_json",
    "manifest_to_json",
    "model_id",
    "model_id_text",
    "sampling_uniform",
    "seeded_gaussian",
    "train_demo_tokenizer",
    "write_manifest",
]
