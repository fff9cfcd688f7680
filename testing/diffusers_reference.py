"""diffusers' scheduler and pipeline math, written out independently of aipg.models (numpy,
float64 tables, diffusers' own order of operations), to test the runner against."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnxruntime as ort

from aipg.testing.diffusers_exports import reference_clip_row

T = 1000


def ref_alphas_cumprod(beta: str, start=0.00085, end=0.012, n=T) -> np.ndarray:
    if beta == "linear":
        b = np.array([start + (end - start) * i / (n - 1) for i in range(n)])
    elif beta == "scaled_linear":
        b = np.array(
            [
                (math.sqrt(start) + (math.sqrt(end) - math.sqrt(start)) * i / (n - 1)) ** 2
                for i in range(n)
            ]
        )
    else:  # squaredcos_cap_v2: betas_for_alpha_bar with the cosine transform
        f = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
        b = np.array([min(1 - f((i + 1) / n) / f(i / n), 0.999) for i in range(n)])
    return np.cumprod(1 - b)


def ref_ddim_step(ac, final, t, ratio, x, m, prediction):
    """DDIMScheduler.step with eta 0, clip_sample and thresholding off."""
    a_t = ac[t]
    a_p = ac[t - ratio] if t - ratio >= 0 else final
    if prediction == "epsilon":
        x0 = (x - (1 - a_t) ** 0.5 * m) / a_t**0.5
        eps = m
    elif prediction == "sample":
        x0 = m
        eps = (x - a_t**0.5 * x0) / (1 - a_t) ** 0.5
    else:
        x0 = a_t**0.5 * x - (1 - a_t) ** 0.5 * m
        eps = a_t**0.5 * m + (1 - a_t) ** 0.5 * x
    return a_p**0.5 * x0 + (1 - a_p) ** 0.5 * eps


def ref_euler(ac, timesteps):
    sig = ((1 - ac) / ac) ** 0.5
    return np.concatenate([np.interp(timesteps, np.arange(len(sig)), sig), [0.0]])


def ref_euler_step(sigmas, i, x, m, prediction):
    """EulerDiscreteScheduler.step with s_churn 0 (gamma 0: sigma_hat = sigma, no noise)."""
    s = sigmas[i]
    if prediction == "epsilon":
        x0 = x - s * m
    elif prediction == "v_prediction":
        x0 = m * (-s / (s**2 + 1) ** 0.5) + x / (s**2 + 1)
    else:
        x0 = m
    derivative = (x - x0) / s
    return x + derivative * (sigmas[i + 1] - s)


def ref_timesteps(kind: str, spacing: str, offset: int, steps: int, train: int = T) -> np.ndarray:
    """DDIMScheduler / EulerDiscreteScheduler.set_timesteps."""
    if spacing == "linspace":
        t = np.linspace(0, train - 1, steps)[::-1].copy()
        return t.round() if kind == "ddim" else t
    if spacing == "leading":
        r = train // steps
        return (np.arange(0, steps) * r).round()[::-1].astype(np.float64) + offset
    return np.round(np.arange(train, 0, -train / steps)).astype(np.float64) - 1


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _rows(folder: Path, texts: list[str]) -> np.ndarray:
    vocab = json.loads((folder / "vocab.json").read_text("utf-8"))
    lines = (folder / "merges.txt").read_text("utf-8").strip().split("\n")[1:]
    merges = [tuple(line.split()) for line in lines]
    pad = json.loads((folder / "special_tokens_map.json").read_text("utf-8"))["pad_token"]
    return np.array([reference_clip_row(t, vocab, merges, pad) for t in texts], np.int32)


def reference_pipeline(
    src: Path,
    prompt: str,
    negative: str | None,
    steps: int,
    guidance: float,
    latents: np.ndarray,
    *,
    force_zeros: bool = False,
) -> np.ndarray:
    """The final latent of diffusers' (ORT)StableDiffusion[XL]Pipeline on the export in
    ``src``: encode (penultimate hidden states and pooled text_embeds for SDXL), scale the
    given latents by init_noise_sigma, then per step scale_model_input, unet, guidance,
    scheduler step. ``negative=None`` is diffusers' "no negative prompt"."""
    cfg = json.loads((src / "scheduler/scheduler_config.json").read_text())
    kind = "ddim" if cfg["_class_name"] == "DDIMScheduler" else "euler"
    sdxl = (src / "text_encoder_2").is_dir()
    guided = guidance > 1
    zeros = guided and negative is None and force_zeros
    texts = [prompt] if not guided or zeros else [negative or "", prompt]
    te = _session(src / "text_encoder/model.onnx")
    ids = _rows(src / "tokenizer", texts)
    extra = {}
    if sdxl:
        names = [o.name for o in te.get_outputs() if o.name.startswith("hidden_states.")]
        (h1,) = te.run([f"hidden_states.{len(names) - 2}"], {"input_ids": ids})
        te2 = _session(src / "text_encoder_2/model.onnx")
        names2 = [o.name for o in te2.get_outputs() if o.name.startswith("hidden_states.")]
        h2, pooled = te2.run(
            [f"hidden_states.{len(names2) - 2}", "text_embeds"],
            {"input_ids": _rows(src / "tokenizer_2", texts)},
        )
        emb = np.concatenate([h1, h2], axis=-1)
        if zeros:
            emb = np.concatenate([np.zeros_like(emb), emb])
            pooled = np.concatenate([np.zeros_like(pooled), pooled])
        h, w = latents.shape[2] * 8, latents.shape[3] * 8
        extra = {
            "text_embeds": pooled,
            "time_ids": np.array([[h, w, 0, 0, h, w]] * emb.shape[0], np.float32),
        }
    else:
        (emb,) = te.run(["last_hidden_state"], {"input_ids": ids})
    unet = _session(src / "unet/model.onnx")
    t_in = next(i for i in unet.get_inputs() if i.name == "timestep")
    t_dtype = np.int64 if t_in.type == "tensor(int64)" else np.float32
    start, end = cfg["beta_start"], cfg["beta_end"]
    ac = ref_alphas_cumprod(cfg.get("beta_schedule", "linear"), start, end)
    spacing = cfg.get("timestep_spacing", "leading" if kind == "ddim" else "linspace")
    prediction = cfg.get("prediction_type", "epsilon")
    timesteps = ref_timesteps(kind, spacing, cfg.get("steps_offset", 0), steps)
    x = latents.astype(np.float64)
    if kind == "euler":
        sigmas = ref_euler(ac, timesteps)
        top = sigmas.max()
        x = x * (top if spacing in ("linspace", "trailing") else (top**2 + 1) ** 0.5)
    final = 1.0 if cfg.get("set_alpha_to_one", True) else ac[0]
    for i, t in enumerate(timesteps):
        model_in = x / (sigmas[i] ** 2 + 1) ** 0.5 if kind == "euler" else x
        batch = emb.shape[0]
        tt = np.array(t, t_dtype) if len(t_in.shape) == 0 else np.full((batch,), t, t_dtype)
        feeds = {
            "sample": np.concatenate([model_in] * batch).astype(np.float32),
            "timestep": tt,
            "encoder_hidden_states": emb,
            **extra,
        }
        (m,) = unet.run(["out_sample"], feeds)
        if batch == 2:
            m = m[0:1] + guidance * (m[1:2] - m[0:1])
        m = m.astype(np.float64)
        if kind == "euler":
            x = ref_euler_step(sigmas, i, x, m, prediction)
        else:
            x = ref_ddim_step(ac, final, int(t), T // steps, x, m, prediction)
    return x
