"""aipg.models: workloads. Imports only aipg.wire.

- :mod:`.manifest`   -- ``Manifest`` (files by role with sha256 and size, tokenizer, interface,
  defaults, license); ``model_id`` = sha256 of its canonical encoding; ``manifest.json`` on
  disk; ``ModelDir`` (a manifest and where its files are; reads are hash-checked);
  ``ModelAnnouncement`` (signed, for ``/aipg/1/models``).
- :mod:`.store`      -- ``BlobStore`` (``blobs/sha256/<hex>``, atomic writes, verify) and
  ``ModelStore`` (hosted models on top of it).
- :mod:`.blob`       -- the ``blob`` request/response protocol: ``BlobServer.handle`` and the resumable
  ``BlobFetcher`` over an injected ``request`` function; ``fetch_manifest``, ``fetch_model``.
- :mod:`.session`    -- ``SessionFactory``, the one place that builds onnxruntime sessions,
  and the ``ExecutionProfile`` record receipts carry.
- :mod:`.sampling`   -- ``SamplingParams`` and ``choose_token``, the one sampling rule.
- :mod:`.llm`        -- ``LlmRunner``: optimum-layout decoders, KV cache, ``generate`` and
  ``prefill``.
- :mod:`.diffusion`  -- ``DiffusionRunner``: SD / SDXL layout, the model's scheduler, CFG,
  ``generate`` (from the seed or given latents), ``step`` and ``decode``.
- :mod:`.schedulers` -- ``SchedulerInfo`` from diffusers' scheduler_config.json; DDIM (eta 0)
  and Euler discrete as per-step linear coefficients (``build_schedule``).
- :mod:`.tokenizer_clip` -- ``ClipTokenizer``: CLIP BPE (vocab.json + merges.txt) through
  Hugging Face's ``tokenizers``.
- :mod:`.hf_diffusers` -- ``import_diffusers``: a diffusers ONNX export -> a model directory;
  ``check_runnable``: load and run a tiny job (what ``models add`` requires).
- :mod:`.tokenizer`  -- ``Tokenizer``: sentencepiece or Hugging Face ``tokenizers``, BOS/EOS
  and special tokens as the manifest says, several eos ids.
- :mod:`.chat`       -- chat templates (Jinja, sandboxed, as transformers renders them);
  ``chat_prompt`` is a chat's job prompt; ``PLAIN_TEMPLATE`` for models without one.
- :mod:`.hf_import`  -- ``import_export``: an optimum / diffusers ONNX export -> a model
  directory (configs read by :mod:`.hf_config`).
- :mod:`.demo`       -- ``build_demo_llm`` / ``build_demo_diffusion``: tiny models from seeded
  weights, byte-identical every build, with knobs for look-alike variants.

Errors: ``ModelError`` for anything wrong with a model, its files or a job's parameters;
``aipg.wire.WireError`` for bad records (parameters out of range included).
"""

from .blob import (
    BLOB_PROTOCOL,
    BlobFetcher,
    BlobRequest,
    BlobResponse,
    BlobServer,
    BlobStatus,
    check_announcement,
    fetch_manifest,
    fetch_model,
    sign_announcement,
)
from .chat import PLAIN_TEMPLATE, chat_prompt, render_chat_template
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
from .hf_diffusers import check_runnable, import_diffusers
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
    SecondTextEncoder,
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
from .schedulers import LEGACY_DDIM, Schedule, SchedulerInfo, build_schedule
from .session import ExecutionProfile, SessionFactory, cuda_is_usable
from .store import BlobStore, ModelStore
from .tokenizer import Tokenizer
from .tokenizer_clip import ClipTokenizer

__all__ = [
    "BLOB_PROTOCOL",
    "DIFFUSION",
    "LEGACY_DDIM",
    "LLM",
    "MAX_TOKENS",
    "PLAIN_TEMPLATE",
    "BlobFetcher",
    "BlobRequest",
    "BlobResponse",
    "BlobServer",
    "BlobStatus",
    "BlobStore",
    "ClipTokenizer",
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
    "ModelStore",
    "SamplingParams",
    "Schedule",
    "SchedulerInfo",
    "SecondTextEncoder",
    "SessionFactory",
    "StepEvent",
    "Timings",
    "TokenEvent",
    "Tokenizer",
    "TokenizerInfo",
    "build_demo",
    "build_demo_diffusion",
    "build_demo_llm",
    "build_schedule",
    "chat_prompt",
    "check_announcement",
    "check_manifest",
    "check_runnable",
    "choose_token",
    "cuda_is_usable",
    "fetch_manifest",
    "fetch_model",
    "import_diffusers",
    "load_model_dir",
    "manifest_from_json",
    "manifest_to_json",
    "model_id",
    "model_id_text",
    "render_chat_template",
    "sampling_uniform",
    "seeded_gaussian",
    "sign_announcement",
    "train_demo_tokenizer",
    "write_manifest",
]
