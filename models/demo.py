"""Demo models built offline from seeded weights: a tiny LLM and a tiny diffusion model.

Both use the real interfaces (the decoder layout Hugging Face optimum exports, with or
without KV cache; the Stable Diffusion text_encoder / unet / vae_decoder layout), so the
runners that serve them serve real exports too. They know nothing; they exist so that
tests and devnets exercise the whole path in seconds with nothing downloaded.

Determinism: weights come from SHAKE-256 of (seed, tensor name) mapped to uniforms with
exact integer arithmetic (no RNG library whose stream could change between versions), the
sentencepiece model is trained single-threaded on ``data/corpus.txt`` without shuffling,
and ONNX files are written with fixed producer fields, so a build is byte-identical every
time and the model ids never change.

The builders take knobs so that tests can make look-alike models: another weight seed
(same shapes), float16 or int8 weights, a smaller "draft" model with the same vocabulary, or a
decoder without KV cache.

Here are the entry points; the builders live in :mod:`.demo_llm` and :mod:`.demo_diffusion`,
on the graph helper and seeded weights of :mod:`.demo_graph` and the tokenizer of
:mod:`.demo_tokenizer`.
"""

from __future__ import annotations

from pathlib import Path

from .demo_diffusion import DEMO_DIFFUSION_SEED, build_demo_diffusion
from .demo_llm import DEMO_LLM_SEED, build_demo_llm
from .demo_tokenizer import demo_corpus, train_demo_tokenizer

__all__ = [
    "DEMO_DIFFUSION_SEED",
    "DEMO_LLM_SEED",
    "build_demo",
    "build_demo_diffusion",
    "build_demo_llm",
    "demo_corpus",
    "train_demo_tokenizer",
]


def build_demo(out_dir: Path | str) -> tuple[Path, Path]:
    """Build both demo models into ``out_dir/llm`` and ``out_dir/diffusion``."""
    out = Path(out_dir)
    return build_demo_llm(out / "llm"), build_demo_diffusion(out / "diffusion")
