"""``import_diffusers``: a diffusers ONNX export (``optimum-cli export onnx``) -> a hostable
model directory with its manifest.

Every manifest field comes from the export's own files: ``model_index.json`` (SDXL or not,
``force_zeros_for_empty_prompt``), ``scheduler/scheduler_config.json`` (the scheduler and
its settings; one that :mod:`.schedulers` does not implement is refused), the components'
``config.json`` (hidden sizes, latent channels, ``scaling_factor``, sample size), the
tokenizer folders (CLIP ``vocab.json`` + ``merges.txt``, special tokens from
``tokenizer_config.json`` / ``special_tokens_map.json``). The graphs' input and output
names and shapes are checked against those configs, the files are copied (hard-linked where
the filesystem allows) with the external-data files the graphs name, and a short smoke run
(:func:`check_runnable`) must finish with finite numbers before the directory is returned.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ModelError
from .manifest import (
    DIFFUSION,
    MANIFEST_FILE,
    DiffusionInterface,
    DiffusionParams,
    Manifest,
    ModelDir,
    SecondTextEncoder,
    TokenizerInfo,
    file_entry,
    load_model_dir,
    write_manifest,
)
from .schedulers import scheduler_info_from_config
from .session import external_locations
from .tokenizer_clip import CLIP, clip_model_max_length, clip_special_tokens, parse_vocab

__all__ = ["MODEL_INDEX", "check_runnable", "import_diffusers"]

MODEL_INDEX = "model_index.json"
MAX_CONFIG_BYTES = 1 << 20
MAX_SIDE = 4096
# Committees fetch a worker's latents one per message: a square image's float32 latent must
# fit aipg.pouw's MAX_LATENT_BYTES (512 KiB; SDXL at 1024x1024 is 256 KiB).
MAX_VERIFIABLE_LATENT_BYTES = 512 << 10
_HIDDEN = re.compile(r"hidden_states\.(\d+)")


def import_diffusers(src: Path | str, out: Path | str, name: str | None = None) -> Path:
    """Read the diffusers ONNX export in ``src``, check it, write a model directory to
    ``out`` (which must not exist or be empty) and return ``out``. Raises ModelError naming
    what is missing, unsupported or inconsistent."""
    src, out = Path(src), Path(out)
    index = _read_json(src / MODEL_INDEX)
    if not isinstance(index, dict):
        raise ModelError(f"{MODEL_INDEX} must be a JSON object")
    if index.get("requires_aesthetics_score"):
        raise ModelError("SDXL refiner exports (requires_aesthetics_score) are not supported")
    sdxl = (src / "text_encoder_2").is_dir() or bool(index.get("text_encoder_2"))
    for component in ("unet", "vae_decoder", "text_encoder", "tokenizer", "scheduler"):
        if not (src / component).is_dir():
            raise ModelError(f"{src} has no {component}/ folder: not a diffusers ONNX export")
    sched = scheduler_info_from_config(_read_json(src / "scheduler/scheduler_config.json"))
    te = _read_json(src / "text_encoder/config.json")
    unet = _read_json(src / "unet/config.json")
    vae = _read_json(src / "vae_decoder/config.json")
    tok, length = _clip_tokenizer(src / "tokenizer", "tokenizer")
    dim1 = _int(te, "hidden_size", "text_encoder/config.json")
    channels = _int(unet, "in_channels", "unet/config.json")
    if _int(vae, "latent_channels", "vae_decoder/config.json") != channels:
        raise ModelError("vae_decoder latent_channels differs from unet in_channels")
    vae_scale = 2 ** (len(_list(vae, "block_out_channels", "vae_decoder/config.json")) - 1)
    down = 2 ** (len(_list(unet, "block_out_channels", "unet/config.json")) - 1)
    size = _int(unet, "sample_size", "unet/config.json") * vae_scale
    scale_micro = round(float(vae.get("scaling_factor", 0.18215)) * 1e6)
    if scale_micro <= 0:
        raise ModelError("vae_decoder scaling_factor must be > 0")
    files: list[tuple[str, str]] = [
        ("text_encoder", "text_encoder/model.onnx"),
        ("unet", "unet/model.onnx"),
        ("vae_decoder", "vae_decoder/model.onnx"),
        ("tokenizer", "tokenizer/vocab.json"),
        ("tokenizer.merges", "tokenizer/merges.txt"),
    ]
    text_output = "last_hidden_state"
    second = None
    if sdxl:
        te2 = _read_json(src / "text_encoder_2/config.json")
        tok2, length2 = _clip_tokenizer(src / "tokenizer_2", "tokenizer_2")
        if length2 != length:
            raise ModelError("tokenizer and tokenizer_2 have different model_max_length")
        text_output = _penultimate(src / "text_encoder/model.onnx", "text_encoder")
        second = SecondTextEncoder(
            tokenizer=tok2,
            text_dim=_int(te2, "hidden_size", "text_encoder_2/config.json"),
            pooled_dim=_int(te2, "projection_dim", "text_encoder_2/config.json"),
            output=_penultimate(src / "text_encoder_2/model.onnx", "text_encoder_2"),
            pooled_output="text_embeds",
        )
        files += [
            ("text_encoder_2", "text_encoder_2/model.onnx"),
            ("tokenizer_2", "tokenizer_2/vocab.json"),
            ("tokenizer_2.merges", "tokenizer_2/merges.txt"),
        ]
        if unet.get("addition_embed_type") != "text_time":
            raise ModelError("an SDXL unet must have addition_embed_type text_time")
        time_dim = _int(unet, "addition_time_embed_dim", "unet/config.json")
        want = _int(unet, "projection_class_embeddings_input_dim", "unet/config.json")
        if second.pooled_dim + 6 * time_dim != want:
            raise ModelError(
                f"unet expects {want} added-condition inputs; text_encoder_2's projection_dim "
                f"{second.pooled_dim} + 6 time ids x {time_dim} is {second.pooled_dim + 6 * time_dim}"
            )
    elif unet.get("addition_embed_type") is not None:
        raise ModelError(
            f"unet addition_embed_type {unet['addition_embed_type']!r} is not supported"
        )
    text_dim = dim1 + (second.text_dim if second else 0)
    cross = _int(unet, "cross_attention_dim", "unet/config.json")
    if cross != text_dim:
        raise ModelError(f"unet cross_attention_dim {cross} is not the text encoders' {text_dim}")
    step = vae_scale * down
    max_side = min(MAX_SIDE, 2 * size)
    while (
        max_side > step
        and channels * 4 * (max_side // vae_scale) ** 2 > MAX_VERIFIABLE_LATENT_BYTES
    ):
        max_side -= step
    max_side -= max_side % step
    if max_side < step or size > max_side:
        raise ModelError(f"the trained size {size} is too large to verify")
    interface = DiffusionInterface(
        latent_channels=channels,
        vae_scale_factor=vae_scale,
        text_length=length,
        text_dim=text_dim,
        latent_scale_micro=scale_micro,
        train_timesteps=sched.train_timesteps,
        beta_start_nano=sched.beta_start_nano,
        beta_end_nano=sched.beta_end_nano,
        min_size=step,
        max_size=max_side,
        scheduler=sched.info,
        text_output=text_output,
        text_encoder_2=second,
        force_zeros_for_empty_prompt=bool(index.get("force_zeros_for_empty_prompt", sdxl)),
        size_step=step,
    )
    _prepare_out(out)
    entries = []
    for role, rel in files:
        _copy(src / rel, out / rel)
        entries.append(file_entry(out, role, rel))
        if rel.endswith(".onnx"):
            for n, loc in enumerate(sorted(_external(src / rel, role))):
                data_rel = str(Path(rel).parent / loc)
                _copy(src / data_rel, out / data_rel)
                entries.append(file_entry(out, f"{role}.data" + (f".{n}" if n else ""), data_rel))
    manifest = Manifest(
        name=name or src.resolve().name,
        version=str(index.get("_diffusers_version", "1"))[:32],
        kind=DIFFUSION,
        files=tuple(entries),
        tokenizer=tok,
        llm=None,
        diffusion=interface,
        default_sampling=None,
        default_diffusion=DiffusionParams(
            steps=30, guidance_milli=5000 if sdxl else 7500, width=size, height=size
        ),
        license=str(index.get("license", ""))[:128],
    )
    write_manifest(out, manifest)
    check_runnable(load_model_dir(out))
    return out


def check_runnable(model: ModelDir, threads: int = 1) -> None:
    """Load the model's graphs against its manifest and run a tiny job (two steps at the
    smallest size, guided; one token for an LLM). Raises ModelError when it cannot run or
    gives non-finite numbers: what ``models add`` and ``models import`` refuse."""
    from .diffusion import DiffusionRunner
    from .llm import LlmRunner
    from .sampling import SamplingParams

    if model.manifest.kind == DIFFUSION:
        runner = DiffusionRunner(model, threads=threads)
        d = runner.interface
        side = d.min_size
        multiple = int(np.lcm(d.vae_scale_factor, d.size_step or 1))
        side += -side % multiple
        params = DiffusionParams(steps=2, guidance_milli=2000, width=side, height=side)
        try:
            out = runner.generate("a smoke test", params, seed=1)
        except ModelError as e:
            raise ModelError(f"smoke run failed: {e}") from None
        if not np.all(np.isfinite(out.latents_final)):
            raise ModelError("smoke run gave non-finite latents")
        return
    runner = LlmRunner(model, threads=threads)
    try:
        runner.generate(runner.tokenizer.encode("a smoke test"), SamplingParams(max_tokens=1), 1)
    except ModelError as e:
        raise ModelError(f"smoke run failed: {e}") from None


# -- pieces ------------------------------------------------------------------------------------


def _read_json(path: Path) -> Any:
    try:
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise ModelError(f"{path} is over {MAX_CONFIG_BYTES} bytes")
        return json.loads(path.read_bytes())
    except FileNotFoundError:
        raise ModelError(f"{path} is missing") from None
    except OSError as e:
        raise ModelError(f"cannot read {path}: {e.strerror}") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise ModelError(f"{path} is not valid JSON: {e}") from None


def _int(config: Any, key: str, where: str) -> int:
    value = config.get(key) if isinstance(config, dict) else None
    if type(value) is not int or not 0 < value < 1 << 31:
        raise ModelError(f"{where}: {key} must be a positive integer, got {value!r}")
    return value


def _list(config: Any, key: str, where: str) -> list:
    value = config.get(key) if isinstance(config, dict) else None
    if not isinstance(value, list) or not 1 <= len(value) <= 8:
        raise ModelError(f"{where}: {key} must be a list of 1 to 8 entries")
    return value


def _clip_tokenizer(folder: Path, role: str) -> tuple[TokenizerInfo, int]:
    """The TokenizerInfo of a CLIP tokenizer folder and its model_max_length."""
    if (folder / "tokenizer.json").is_file() and not (folder / "vocab.json").is_file():
        raise ModelError(f"{folder}: only CLIP vocab.json + merges.txt tokenizers are supported")
    if not (folder / "merges.txt").is_file():
        raise ModelError(f"{folder} has no merges.txt")
    configs = [
        _read_json(folder / f) if (folder / f).is_file() else {}
        for f in ("tokenizer_config.json", "special_tokens_map.json")
    ]
    try:
        vocab = parse_vocab((folder / "vocab.json").read_bytes())
    except OSError as e:
        raise ModelError(f"cannot read {folder / 'vocab.json'}: {e.strerror}") from None
    special = clip_special_tokens(*configs)
    ids = {}
    for what in ("bos", "eos", "pad"):
        if special[what] not in vocab:
            raise ModelError(f"{folder}: {what} token {special[what]!r} is not in vocab.json")
        ids[what] = vocab[special[what]]
    info = TokenizerInfo(
        kind=CLIP, role=role, bos_id=ids["bos"], eos_id=ids["eos"], pad_id=ids["pad"]
    )
    return info, clip_model_max_length(*configs)


def _outputs(path: Path) -> list[str]:
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # onnx raises DecodeError and others on a bad file
        raise ModelError(f"{path} is not an ONNX model: {e}") from None
    return [o.name for o in model.graph.output]


def _penultimate(path: Path, role: str) -> str:
    """SDXL conditions on the penultimate layer: ``hidden_states.{N-1}`` of N layers."""
    layers = [int(m.group(1)) for n in _outputs(path) if (m := _HIDDEN.fullmatch(n))]
    if len(layers) < 2:
        raise ModelError(
            f"{role} graph has no hidden_states.N outputs (SDXL needs the penultimate layer; "
            "export with optimum, which includes them)"
        )
    return f"hidden_states.{max(layers) - 1}"


def _external(path: Path, role: str) -> set[str]:
    """The external-data files ``path``'s graph names (relative to its folder)."""
    try:
        size = path.stat().st_size
    except OSError as e:
        raise ModelError(f"cannot read {path}: {e.strerror}") from None
    if size > 2**31:  # a graph with inline weights over 2 GB is not a valid ONNX file
        raise ModelError(f"{path} is over 2 GB with its weights inline")
    locations = external_locations(path.read_bytes())
    for loc in locations:
        if Path(loc).is_absolute() or ".." in Path(loc).parts:
            raise ModelError(f"{role} names external data outside its folder: {loc!r}")
    return locations


def _prepare_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ModelError(f"{out} exists and is not an empty directory")
    out.mkdir(parents=True, exist_ok=True)


def _copy(src: Path, dst: Path) -> None:
    if not src.is_file():
        raise ModelError(f"{src} is missing")
    dst.parent.mkdir(parents=True, exist_ok=True)
    if (dst.parent / MANIFEST_FILE) == dst:
        raise ModelError(f"{src.name} would overwrite the manifest")
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)
