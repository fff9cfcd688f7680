"""The demo models as the fraud matrix needs them: the real model under every honest
configuration, and the cheaper or different models a cheating worker would run.

The variants: other weights (same shape), fp16 weights, int8-quantized weights, and a
smaller draft model with the same vocabulary. Each builds from seeded weights in well
under a second; the pouw tests build them once per session, bench/verify.py once a run.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from aipg.models import (
    DiffusionRunner,
    LlmRunner,
    SessionFactory,
    build_demo_diffusion,
    build_demo_llm,
    load_model_dir,
    write_manifest,
)
from aipg.models.manifest import file_entry

# Honest workers run every combination of these.
THREADS = (1, 2)
OPT_LEVELS = (0, 99)


def quantize_int8(src: Path, out: Path) -> Path:
    """A copy of the LLM at ``src`` whose float weight matrices are int8-quantized
    (symmetric, per tensor) and stored dequantized, with a fresh manifest."""
    shutil.copytree(src, out)
    model = onnx.load(str(out / "model.onnx"))
    for init in model.graph.initializer:
        arr = numpy_helper.to_array(init)
        if arr.dtype == np.float32 and arr.ndim >= 2:
            scale = float(np.abs(arr).max()) / 127 or 1.0
            q = np.clip(np.round(arr / scale), -127, 127) * scale
            init.CopyFrom(numpy_helper.from_array(q.astype(np.float32), init.name))
    onnx.save(model, str(out / "model.onnx"))
    manifest = load_model_dir(src).manifest
    files = tuple(file_entry(out, f.role, f.path) for f in manifest.files)
    write_manifest(out, manifest.replace(files=files, name=manifest.name + "-int8"))
    return out


@dataclasses.dataclass
class LlmModels:
    real: LlmRunner  # the validator's runner (threads 1, default level)
    honest: list[LlmRunner]  # the real model under every honest configuration
    other: LlmRunner  # same shape, other weights
    fp16: LlmRunner
    int8: LlmRunner
    draft: LlmRunner  # smaller, same vocabulary


@dataclasses.dataclass
class DiffusionModels:
    real: DiffusionRunner
    honest: list[DiffusionRunner]
    fp16: DiffusionRunner
    other: DiffusionRunner


def build_llm_models(root: Path) -> LlmModels:
    real = build_demo_llm(root / "llm")
    honest = [
        LlmRunner(real, SessionFactory(threads=t, optimization_level=o), use_kv_cache=kv)
        for t in THREADS
        for o in OPT_LEVELS
        for kv in (True, False)
    ]
    return LlmModels(
        real=LlmRunner(real),
        honest=honest,
        other=LlmRunner(build_demo_llm(root / "llm-other", seed=4242)),
        fp16=LlmRunner(build_demo_llm(root / "llm-fp16", dtype="float16")),
        int8=LlmRunner(quantize_int8(real, root / "llm-int8")),
        draft=LlmRunner(build_demo_llm(root / "llm-draft", layers=1, d_model=32, d_ff=64)),
    )


def build_diffusion_models(root: Path) -> DiffusionModels:
    real = build_demo_diffusion(root / "diffusion")
    honest = [
        DiffusionRunner(real, SessionFactory(threads=t, optimization_level=o))
        for t in THREADS
        for o in OPT_LEVELS
    ]
    return DiffusionModels(
        real=DiffusionRunner(real),
        honest=honest,
        fp16=DiffusionRunner(build_demo_diffusion(root / "diffusion-fp16", dtype="float16")),
        other=DiffusionRunner(build_demo_diffusion(root / "diffusion-other", seed=4242)),
    )
