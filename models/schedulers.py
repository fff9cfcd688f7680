"""Noise schedulers from a diffusers ``scheduler_config.json``: DDIM and Euler discrete.

A scheduler's settings are a :class:`SchedulerInfo` wire record (in the manifest, so they
are part of the model id). :func:`scheduler_info_from_config` reads a diffusers config and
REFUSES any scheduler or setting this module does not implement exactly (a wrong schedule
would load and silently give wrong images). :func:`build_schedule` turns the settings and a
step count into a :class:`Schedule`: the timesteps the UNet sees and, per step, three
float32 coefficients so that, with ``m`` the UNet's (guided) output for ``c_in * x``,

    x_next = c_x * x + c_m * m

which is exactly what diffusers' ``DDIMScheduler.step`` (eta 0, no clipping or
thresholding) and ``EulerDiscreteScheduler.scale_model_input`` + ``step`` (``s_churn`` 0, so
no noise) compute, for the ``epsilon``, ``v_prediction`` and ``sample`` parameterizations,
rearranged: each of them is linear in ``x`` and ``m``. The coefficients are computed once
in float64 from the config and cast to float32; diffusers builds its tables in float32, so
the two agree to float32 rounding (about 1e-7 relative), not bit for bit. Every step is a
function of its input latent alone, which is what lets a validator re-run any one step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np

from aipg.wire import U16, MaxLen, Record, record

from .errors import ModelError

__all__ = [
    "DDIM",
    "EULER",
    "LEGACY_DDIM",
    "SCHEDULER_CLASSES",
    "Schedule",
    "SchedulerInfo",
    "betas",
    "build_schedule",
    "check_scheduler_info",
    "scheduler_info_from_config",
]

DDIM = "ddim"
EULER = "euler"
SCHEDULER_CLASSES = {"DDIMScheduler": DDIM, "EulerDiscreteScheduler": EULER}
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")


@record(tag=215)
class SchedulerInfo(Record):
    """A scheduler's settings, as diffusers' config names them (``kind`` is ``ddim`` or
    ``euler``). The betas' range and count are the DiffusionInterface's ``beta_start_nano``,
    ``beta_end_nano`` and ``train_timesteps``. ``set_alpha_to_one`` is DDIM's only."""

    kind: Annotated[str, MaxLen(16)]
    beta_schedule: Annotated[str, MaxLen(32)]
    prediction_type: Annotated[str, MaxLen(16)]
    timestep_spacing: Annotated[str, MaxLen(16)]
    steps_offset: U16
    set_alpha_to_one: bool


# What the runner hard-coded before schedulers came from the config, and what a manifest
# without a scheduler means: Stable Diffusion 1.x's DDIM settings.
LEGACY_DDIM = SchedulerInfo(
    kind=DDIM,
    beta_schedule="scaled_linear",
    prediction_type="epsilon",
    timestep_spacing="leading",
    steps_offset=1,
    set_alpha_to_one=False,
)


def check_scheduler_info(info: SchedulerInfo) -> None:
    """Raise ModelError unless every setting is one this module implements."""
    for what, value, allowed in (
        ("kind", info.kind, (DDIM, EULER)),
        ("beta_schedule", info.beta_schedule, BETA_SCHEDULES),
        ("prediction_type", info.prediction_type, PREDICTION_TYPES),
        ("timestep_spacing", info.timestep_spacing, TIMESTEP_SPACINGS),
    ):
        if value not in allowed:
            raise ModelError(f"scheduler {what} {value!r} is not supported (one of {allowed})")
    if info.kind == EULER and info.set_alpha_to_one:
        raise ModelError("scheduler: set_alpha_to_one is a DDIM setting, not Euler's")


# -- reading diffusers' scheduler_config.json --------------------------------------------

# diffusers' defaults for keys a config leaves out (each class's __init__ signature).
_DEFAULTS: dict[str, dict[str, Any]] = {
    DDIM: {
        "num_train_timesteps": 1000,
        "beta_start": 0.0001,
        "beta_end": 0.02,
        "beta_schedule": "linear",
        "trained_betas": None,
        "clip_sample": True,
        "set_alpha_to_one": True,
        "steps_offset": 0,
        "prediction_type": "epsilon",
        "thresholding": False,
        "timestep_spacing": "leading",
        "rescale_betas_zero_snr": False,
    },
    EULER: {
        "num_train_timesteps": 1000,
        "beta_start": 0.0001,
        "beta_end": 0.02,
        "beta_schedule": "linear",
        "trained_betas": None,
        "prediction_type": "epsilon",
        "interpolation_type": "linear",
        "use_karras_sigmas": False,
        "use_exponential_sigmas": False,
        "use_beta_sigmas": False,
        "timestep_spacing": "linspace",
        "timestep_type": "discrete",
        "steps_offset": 0,
        "rescale_betas_zero_snr": False,
        "final_sigmas_type": "zero",
    },
}
# Settings that must have exactly this value (anything else changes the math).
_REQUIRED: dict[str, dict[str, Any]] = {
    DDIM: {
        "trained_betas": None,
        "clip_sample": False,
        "thresholding": False,
        "rescale_betas_zero_snr": False,
    },
    EULER: {
        "trained_betas": None,
        "interpolation_type": "linear",
        "use_karras_sigmas": False,
        "use_exponential_sigmas": False,
        "use_beta_sigmas": False,
        "timestep_type": "discrete",
        "rescale_betas_zero_snr": False,
        "final_sigmas_type": "zero",
    },
}


@dataclass(frozen=True)
class ConfigSchedule:
    """What a scheduler_config.json says: the settings and the beta range (as in
    DiffusionInterface: betas in billionths)."""

    info: SchedulerInfo
    train_timesteps: int
    beta_start_nano: int
    beta_end_nano: int


def scheduler_info_from_config(config: Any) -> ConfigSchedule:
    """The settings of a diffusers ``scheduler_config.json`` (parsed JSON). Raises
    ModelError for a scheduler class or setting that is not implemented exactly."""
    if not isinstance(config, dict):
        raise ModelError("scheduler_config.json must be a JSON object")
    cls = config.get("_class_name")
    if cls not in SCHEDULER_CLASSES:
        raise ModelError(
            f"scheduler {cls!r} is not supported; supported: {', '.join(SCHEDULER_CLASSES)}. "
            "Its steps would not be what the model expects; set scheduler_config.json's "
            '"_class_name" to one of these (diffusers swaps schedulers the same way) to '
            "run the model with it"
        )
    kind = SCHEDULER_CLASSES[cls]
    c = {**_DEFAULTS[kind], **config}
    for key, want in _REQUIRED[kind].items():
        if c[key] != want:
            raise ModelError(f"{cls}: {key}={c[key]!r} is not supported (only {want!r})")
    train = c["num_train_timesteps"]
    if type(train) is not int or not 2 <= train <= 0xFFFF:
        raise ModelError(f"{cls}: num_train_timesteps must be an integer from 2 to 65535")
    offset = c["steps_offset"]
    if type(offset) is not int or not 0 <= offset < train:
        raise ModelError(f"{cls}: steps_offset must be an integer from 0 to {train - 1}")
    if not isinstance(c["set_alpha_to_one"] if kind == DDIM else False, bool):
        raise ModelError(f"{cls}: set_alpha_to_one must be true or false")
    start, end = (_nano(c[k], f"{cls}: {k}") for k in ("beta_start", "beta_end"))
    if not 0 < start < end < 1_000_000_000:
        raise ModelError(f"{cls}: need 0 < beta_start < beta_end < 1")
    info = SchedulerInfo(
        kind=kind,
        beta_schedule=_text(c["beta_schedule"], f"{cls}: beta_schedule"),
        prediction_type=_text(c["prediction_type"], f"{cls}: prediction_type"),
        timestep_spacing=_text(c["timestep_spacing"], f"{cls}: timestep_spacing"),
        steps_offset=offset,
        set_alpha_to_one=bool(c["set_alpha_to_one"]) if kind == DDIM else False,
    )
    check_scheduler_info(info)
    return ConfigSchedule(info, train, start, end)


def _nano(value: Any, what: str) -> int:
    """A beta as an exact integer of billionths (0.00085 -> 850000)."""
    if type(value) not in (int, float) or not math.isfinite(value):
        raise ModelError(f"{what} must be a number")
    nano = round(value * 1e9)
    if abs(nano / 1e9 - value) > 1e-15:
        raise ModelError(f"{what}={value!r} is not a whole number of billionths")
    return nano


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str) or len(value) > 16:
        raise ModelError(f"{what} must be a short string, got {value!r}")
    return value


# -- schedules ---------------------------------------------------------------------------


def betas(schedule: str, start: float, end: float, train: int) -> np.ndarray:
    """The float64 betas of a diffusers ``beta_schedule``."""
    if schedule == "linear":
        return np.linspace(start, end, train, dtype=np.float64)
    if schedule == "scaled_linear":
        return np.linspace(start**0.5, end**0.5, train, dtype=np.float64) ** 2
    if schedule == "squaredcos_cap_v2":

        def alpha_bar(t: float) -> float:
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

        return np.array(
            [
                min(1 - alpha_bar((i + 1) / train) / alpha_bar(i / train), 0.999)
                for i in range(train)
            ]
        )
    raise ModelError(f"beta_schedule {schedule!r} is not supported")


@dataclass(frozen=True)
class Schedule:
    """The steps of one scheduler for one step count (see the module docstring).

    ``timesteps`` are what the UNet is fed (float64; integral for DDIM and for Euler's
    leading and trailing spacings). ``init_noise_sigma`` multiplies a unit Gaussian to make
    the initial latent. ``c_in``, ``c_x``, ``c_m`` are float32, one per step.
    """

    kind: str
    timesteps: list[float]
    init_noise_sigma: np.float32
    c_in: tuple[np.float32, ...]
    c_x: tuple[np.float32, ...]
    c_m: tuple[np.float32, ...]

    def __len__(self) -> int:
        return len(self.timesteps)

    def model_input(self, index: int, latent: np.ndarray) -> np.ndarray:
        """The UNet's sample for step ``index`` (Euler's ``scale_model_input``)."""
        c = self.c_in[index]
        return latent if c == 1 else latent * c

    def step(self, index: int, latent: np.ndarray, output: np.ndarray) -> np.ndarray:
        """The latent after step ``index`` from ``latent`` and the UNet's ``output``."""
        return self.c_x[index] * latent + self.c_m[index] * output


def build_schedule(
    info: SchedulerInfo, steps: int, train: int, beta_start_nano: int, beta_end_nano: int
) -> Schedule:
    """The :class:`Schedule` of ``info`` for ``steps`` inference steps. Raises ModelError
    for a step count the spacing cannot make (a timestep outside the trained range)."""
    check_scheduler_info(info)
    if not 1 <= steps <= train:
        raise ModelError(f"steps must be from 1 to {train}, got {steps}")
    b = betas(info.beta_schedule, beta_start_nano / 1e9, beta_end_nano / 1e9, train)
    alphas = np.cumprod(1.0 - b)
    timesteps = _timesteps(info, steps, train)
    if timesteps.min() < 0 or timesteps.max() > train - 1:
        raise ModelError(
            f"{steps} steps with {info.timestep_spacing} spacing and steps_offset "
            f"{info.steps_offset} give timesteps outside 0..{train - 1}"
        )
    if info.kind == DDIM:
        return _ddim(info, timesteps.astype(np.int64), alphas, train // steps)
    return _euler(info, timesteps, alphas)


def _timesteps(info: SchedulerInfo, steps: int, train: int) -> np.ndarray:
    """float64 timesteps, as DDIMScheduler / EulerDiscreteScheduler.set_timesteps make them."""
    if info.timestep_spacing == "linspace":
        t = np.linspace(0, train - 1, steps, dtype=np.float64)[::-1]
        return t.round() if info.kind == DDIM else t
    if info.timestep_spacing == "leading":
        ratio = train // steps
        return (np.arange(0, steps) * ratio).round()[::-1].astype(np.float64) + info.steps_offset
    ratio = train / steps  # trailing
    return np.round(np.arange(train, 0, -ratio)).astype(np.float64) - 1


def _ddim(info: SchedulerInfo, timesteps: np.ndarray, alphas: np.ndarray, ratio: int) -> Schedule:
    final = 1.0 if info.set_alpha_to_one else alphas[0]
    c_x, c_m = [], []
    for t in timesteps:
        a_t = alphas[t]
        # diffusers steps back by train // steps whatever the spacing.
        a_p = alphas[t - ratio] if t - ratio >= 0 else final
        if info.prediction_type == "epsilon":  # x0 = (x - sqrt(1-a_t) e) / sqrt(a_t)
            cx = np.sqrt(a_p) / np.sqrt(a_t)
            cm = np.sqrt(1.0 - a_p) - np.sqrt(a_p) * np.sqrt(1.0 - a_t) / np.sqrt(a_t)
        elif info.prediction_type == "sample":  # e = (x - sqrt(a_t) x0) / sqrt(1-a_t)
            cx = np.sqrt(1.0 - a_p) / np.sqrt(1.0 - a_t)
            cm = np.sqrt(a_p) - np.sqrt(1.0 - a_p) * np.sqrt(a_t) / np.sqrt(1.0 - a_t)
        else:  # v: x0 = sqrt(a_t) x - sqrt(1-a_t) v, e = sqrt(a_t) v + sqrt(1-a_t) x
            cx = np.sqrt(a_p) * np.sqrt(a_t) + np.sqrt(1.0 - a_p) * np.sqrt(1.0 - a_t)
            cm = np.sqrt(1.0 - a_p) * np.sqrt(a_t) - np.sqrt(a_p) * np.sqrt(1.0 - a_t)
        c_x.append(np.float32(cx))
        c_m.append(np.float32(cm))
    one = np.float32(1.0)
    return Schedule(
        DDIM,
        [float(t) for t in timesteps],
        one,
        (one,) * len(timesteps),
        tuple(c_x),
        tuple(c_m),
    )


def _euler(info: SchedulerInfo, timesteps: np.ndarray, alphas: np.ndarray) -> Schedule:
    train_sigmas = np.sqrt((1.0 - alphas) / alphas)
    sigmas = np.interp(timesteps, np.arange(len(train_sigmas)), train_sigmas)
    sigmas = np.concatenate([sigmas, [0.0]])
    top = sigmas.max()
    init = top if info.timestep_spacing in ("linspace", "trailing") else np.sqrt(top**2 + 1.0)
    c_in, c_x, c_m = [], [], []
    for i in range(len(timesteps)):
        s, dt = sigmas[i], sigmas[i + 1] - sigmas[i]
        c_in.append(np.float32(1.0 / np.sqrt(s**2 + 1.0)))
        # x_next = x + dt * (x - x0) / s, with x0 from the model's output m:
        if info.prediction_type == "epsilon":  # x0 = x - s m
            cx, cm = 1.0, dt
        elif info.prediction_type == "sample":  # x0 = m
            cx, cm = 1.0 + dt / s, -dt / s
        else:  # v: x0 = -s / sqrt(s^2+1) m + x / (s^2+1)
            cx, cm = 1.0 + dt * s / (s**2 + 1.0), dt / np.sqrt(s**2 + 1.0)
        c_x.append(np.float32(cx))
        c_m.append(np.float32(cm))
    return Schedule(
        EULER,
        [float(t) for t in timesteps],
        np.float32(init),
        tuple(c_in),
        tuple(c_x),
        tuple(c_m),
    )
