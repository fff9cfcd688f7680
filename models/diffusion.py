"""The diffusion runner: Stable Diffusion ONNX layout, DDIM (eta 0), classifier-free guidance.

A model has ``text_encoder`` (``input_ids`` -> ``last_hidden_state``), ``unet`` (``sample``,
``timestep``, ``encoder_hidden_states`` -> ``out_sample``, predicting noise) and
``vae_decoder`` (``latent_sample`` -> ``sample`` in [-1, 1]), as the diffusers/optimum ONNX
exports have them. Everything after the seed is deterministic: the initial latent is a
counter-based Gaussian of (seed, position), DDIM with eta 0 adds no noise, and each step
is ``x_prev = c1 * x + c2 * eps`` with float32 coefficients computed once in float64.

:meth:`DiffusionRunner.step` recomputes one step from a stored latent with exactly the code
:meth:`DiffusionRunner.generate` runs, so a validator can re-check any step.
"""

from __future__ import annotations

import hashlib
import io
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

from .errors import ModelError
from .manifest import DIFFUSION, DiffusionInterface, DiffusionParams, ModelDir, load_model_dir
from .session import ExecutionProfile, SessionFactory, run_session
from .tokenizer import Tokenizer

__all__ = [
    "Conditioning",
    "DdimSchedule",
    "DiffusionResult",
    "DiffusionRunner",
    "DiffusionTimings",
    "StepEvent",
    "seeded_gaussian",
]

_NOISE_DOMAIN = b"aipg/latent-noise/1\0"
_ORT_INT = {"tensor(int64)": np.int64, "tensor(int32)": np.int32}
_ORT_FLOAT = {"tensor(float)": np.float32, "tensor(float16)": np.float16}
_ORT_NUM = {**_ORT_INT, **_ORT_FLOAT}


@dataclass(frozen=True)
class StepEvent:
    """The latent after step ``index`` (0-based), run at scheduler ``timestep``."""

    index: int
    timestep: int
    latent: np.ndarray


@dataclass(frozen=True)
class DiffusionTimings:
    """Wall-clock nanoseconds (informational only)."""

    encode_ns: int
    denoise_ns: int
    decode_ns: int
    total_ns: int
    steps: int

    @property
    def steps_per_s(self) -> float:
        return self.steps / (self.denoise_ns / 1e9) if self.denoise_ns else 0.0


@dataclass(frozen=True)
class DiffusionResult:
    """A finished image: PNG bytes, the initial and final latents, timings."""

    png: bytes
    latents_initial: np.ndarray
    latents_final: np.ndarray
    timings: DiffusionTimings


@dataclass(frozen=True)
class Conditioning:
    """Text embeddings for the unet: (unconditional, conditional) stacked when guidance is on,
    else the conditional ones alone; ``guidance`` is the float32 scale."""

    embeddings: np.ndarray
    guidance: np.float32

    @property
    def guided(self) -> bool:
        return self.embeddings.shape[0] == 2


class DdimSchedule:
    """DDIM timesteps and step coefficients for a number of inference steps.

    Betas are SD's ``scaled_linear`` schedule; ``set_alpha_to_one`` is False and
    ``steps_offset`` is 1, as in Stable Diffusion's scheduler config.
    """

    def __init__(self, interface: DiffusionInterface, steps: int) -> None:
        train = interface.train_timesteps
        if not 1 <= steps <= train:
            raise ModelError(f"steps must be from 1 to {train}, got {steps}")
        start, end = interface.beta_start_nano / 1e9, interface.beta_end_nano / 1e9
        betas = np.linspace(start**0.5, end**0.5, train, dtype=np.float64) ** 2
        alphas = np.cumprod(1.0 - betas)
        ratio = train // steps
        self.timesteps = [int(t) for t in (np.arange(steps) * ratio)[::-1] + 1]
        self._coefficients = []
        for t in self.timesteps:
            a_t = alphas[t]
            a_prev = alphas[t - ratio] if t - ratio >= 0 else alphas[0]
            c1 = np.sqrt(a_prev) / np.sqrt(a_t)
            c2 = np.sqrt(1.0 - a_prev) - np.sqrt(a_prev) * np.sqrt(1.0 - a_t) / np.sqrt(a_t)
            self._coefficients.append((np.float32(c1), np.float32(c2)))

    def step(self, index: int, latent: np.ndarray, noise: np.ndarray) -> np.ndarray:
        """The latent after step ``index`` from ``latent`` and the predicted ``noise``."""
        c1, c2 = self._coefficients[index]
        return c1 * latent + c2 * noise


def seeded_gaussian(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    """float32 standard normals from SHAKE-256(seed): Box-Muller on 53-bit uniforms."""
    n = int(np.prod(shape))
    pairs = (n + 1) // 2
    stream = hashlib.shake_256(_NOISE_DOMAIN + seed.to_bytes(8, "big")).digest(16 * pairs)
    words = np.frombuffer(stream, dtype=">u8") >> np.uint64(11)
    uniform = (words.astype(np.float64) + 1.0) / float(1 << 53)  # (0, 1]: log is finite
    u1, u2 = uniform[0::2], uniform[1::2]
    radius = np.sqrt(-2.0 * np.log(u1))
    angle = 2 * np.pi * u2
    normals = np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=1).reshape(-1)
    return normals[:n].astype(np.float32).reshape(shape)


class DiffusionRunner:
    """Runs one diffusion model: tokenizer, three deterministic sessions, DDIM.

    ``model`` is a model directory path or a :class:`ModelDir`; files are hash-checked as
    they are read and the graphs are checked against the manifest. Raises ModelError.
    """

    def __init__(
        self,
        model: ModelDir | Path | str,
        session_factory: SessionFactory | None = None,
        *,
        threads: int | None = None,
    ) -> None:
        self.model = model if isinstance(model, ModelDir) else load_model_dir(model)
        manifest = self.model.manifest
        if manifest.kind != DIFFUSION or manifest.diffusion is None:
            raise ModelError(f"model {manifest.name!r} is a {manifest.kind} model, not diffusion")
        self.interface: DiffusionInterface = manifest.diffusion
        self.factory = session_factory or SessionFactory(threads=threads or 1)
        self.tokenizer = Tokenizer(
            self.model.read_verified(manifest.tokenizer.role), manifest.tokenizer
        )
        self.text_encoder = self._session("text_encoder", ["input_ids"], ["last_hidden_state"])
        self.unet = self._session(
            "unet", ["sample", "timestep", "encoder_hidden_states"], ["out_sample"]
        )
        self.vae_decoder = self._session("vae_decoder", ["latent_sample"], ["sample"])
        self._check_dims()
        self._ids_dtype = _input_dtype(self.text_encoder, "input_ids", _ORT_INT)
        self._timestep_dtype = _input_dtype(self.unet, "timestep", _ORT_NUM)
        # fp16 exports take and return float16 at the boundary; the trajectory stays float32.
        self._sample_dtype = _input_dtype(self.unet, "sample", _ORT_FLOAT)
        self._text_dtype = _input_dtype(self.unet, "encoder_hidden_states", _ORT_FLOAT)
        self._vae_dtype = _input_dtype(self.vae_decoder, "latent_sample", _ORT_FLOAT)
        self._latent_scale = np.float32(self.interface.latent_scale_micro / 1e6)
        self.profile: ExecutionProfile = self.factory.profile(self.model.model_id)
        self._schedules: dict[int, DdimSchedule] = {}

    def _session(self, role: str, inputs: list[str], outputs: list[str]) -> ort.InferenceSession:
        session = self.factory.create_for(self.model, role)
        have_in = [i.name for i in session.get_inputs()]
        have_out = [o.name for o in session.get_outputs()]
        if sorted(have_in) != sorted(inputs) or outputs[0] not in have_out:
            raise ModelError(
                f"{role} graph does not have the Stable Diffusion interface: inputs {have_in} "
                f"(want {inputs}), outputs {have_out} (want {outputs[0]})"
            )
        return session

    def _check_dims(self) -> None:
        """Raise ModelError where a graph's fixed dimensions contradict the manifest."""
        d = self.interface
        c, length, dim = d.latent_channels, d.text_length, d.text_dim
        _expect_dims(self.text_encoder, "text_encoder", "input_ids", {1: length})
        _expect_dims(self.text_encoder, "text_encoder", "last_hidden_state", {1: length, 2: dim})
        _expect_dims(self.unet, "unet", "sample", {1: c})
        _expect_dims(self.unet, "unet", "encoder_hidden_states", {1: length, 2: dim})
        _expect_dims(self.unet, "unet", "out_sample", {1: c})
        _expect_dims(self.vae_decoder, "vae_decoder", "latent_sample", {1: c})
        _expect_dims(self.vae_decoder, "vae_decoder", "sample", {1: 3})

    # -- checks ---------------------------------------------------------------------------

    def check_params(self, params: DiffusionParams) -> None:
        """Raise ModelError unless ``params`` fit this model (image size and steps)."""
        if not isinstance(params, DiffusionParams):
            raise ModelError("params must be DiffusionParams")
        d = self.interface
        for side, value in (("width", params.width), ("height", params.height)):
            if not d.min_size <= value <= d.max_size or value % d.vae_scale_factor:
                raise ModelError(
                    f"{side} must be a multiple of {d.vae_scale_factor} from {d.min_size} "
                    f"to {d.max_size}, got {value}"
                )
        if params.steps > d.train_timesteps:
            raise ModelError(f"steps must be at most {d.train_timesteps}, got {params.steps}")

    def schedule(self, params: DiffusionParams) -> DdimSchedule:
        """The DDIM schedule for ``params.steps`` (built once per step count)."""
        if params.steps not in self._schedules:
            self._schedules[params.steps] = DdimSchedule(self.interface, params.steps)
        return self._schedules[params.steps]

    # -- entry points ---------------------------------------------------------------------

    def generate(
        self,
        prompt: str,
        params: DiffusionParams,
        seed: int,
        on_step: Callable[[StepEvent], None] | None = None,
    ) -> DiffusionResult:
        """Run the job: encode the prompt, denoise ``params.steps`` DDIM steps from the
        seeded latent (calling ``on_step`` after each), decode to PNG. Raises ModelError
        before any work for bad parameters or seed."""
        self.check_params(params)
        _check_seed(seed)
        start = time.perf_counter_ns()
        conditioning = self.encode_prompt(prompt, params)
        encoded = time.perf_counter_ns()
        latent = initial = self.initial_latent(seed, params)
        schedule = self.schedule(params)
        for index, timestep in enumerate(schedule.timesteps):
            latent = self.step(latent, index, conditioning, params)
            if on_step is not None:
                on_step(StepEvent(index, timestep, latent))
        denoised = time.perf_counter_ns()
        png = self.decode(latent)
        end = time.perf_counter_ns()
        timings = DiffusionTimings(
            encoded - start, denoised - encoded, end - denoised, end - start, params.steps
        )
        return DiffusionResult(png, initial, latent, timings)

    def initial_latent(self, seed: int, params: DiffusionParams) -> np.ndarray:
        """The seeded starting latent, shape (1, channels, height/8, width/8)."""
        self.check_params(params)
        _check_seed(seed)
        return seeded_gaussian(seed, self.latent_shape(params))

    def latent_shape(self, params: DiffusionParams) -> tuple[int, int, int, int]:
        """(1, channels, height / scale, width / scale)."""
        f = self.interface.vae_scale_factor
        return (1, self.interface.latent_channels, params.height // f, params.width // f)

    def encode_prompt(self, prompt: str, params: DiffusionParams) -> Conditioning:
        """Text embeddings for ``prompt`` and, when guidance is on (scale > 1), for
        ``params.negative_prompt`` as the unconditional input."""
        guided = params.guidance_milli > 1000
        texts = [params.negative_prompt, prompt] if guided else [prompt]
        ids = np.stack([self._token_row(t) for t in texts])
        (embeddings,) = run_session(
            self.text_encoder, ["last_hidden_state"], {"input_ids": ids}, "text_encoder"
        )
        return Conditioning(embeddings.astype(np.float32), np.float32(params.guidance_milli / 1000))

    def step(
        self, latent: np.ndarray, index: int, conditioning: Conditioning, params: DiffusionParams
    ) -> np.ndarray:
        """The latent after step ``index`` (0-based) from the latent before it."""
        schedule = self.schedule(params)
        if not 0 <= index < len(schedule.timesteps):
            raise ModelError(f"step index must be in [0, {len(schedule.timesteps)}), got {index}")
        shape = self.latent_shape(params)
        if latent.shape != shape or latent.dtype != np.float32:
            raise ModelError(
                f"latent must be float32 of shape {shape}, got {latent.dtype} {latent.shape}"
            )
        batch = conditioning.embeddings.shape[0]
        sample = np.concatenate([latent] * batch) if batch > 1 else latent
        timestep = np.full((batch,), schedule.timesteps[index], dtype=self._timestep_dtype)
        feeds = {
            "sample": sample.astype(self._sample_dtype, copy=False),
            "timestep": timestep,
            "encoder_hidden_states": conditioning.embeddings.astype(self._text_dtype, copy=False),
        }
        (noise,) = run_session(self.unet, ["out_sample"], feeds, "unet")
        noise = noise.astype(np.float32, copy=False)
        if conditioning.guided:
            uncond, cond = noise[0:1], noise[1:2]
            noise = uncond + conditioning.guidance * (cond - uncond)
        return schedule.step(index, latent, noise)

    def decode(self, latent: np.ndarray) -> bytes:
        """PNG bytes of the image decoded from a final ``latent``."""
        out = io.BytesIO()
        Image.fromarray(self.decode_pixels(latent), "RGB").save(out, format="PNG", compress_level=6)
        return out.getvalue()

    def decode_pixels(self, latent: np.ndarray) -> np.ndarray:
        """The 8-bit RGB pixels (height, width, 3) decoded from a final ``latent``: what
        :meth:`decode` encodes, for a check that compares pixels without encoding a PNG."""
        scaled = (latent / self._latent_scale).astype(self._vae_dtype, copy=False)
        (image,) = run_session(
            self.vae_decoder, ["sample"], {"latent_sample": scaled}, "vae_decoder"
        )
        image = image.astype(np.float32, copy=False)
        pixels = np.clip(image[0] * np.float32(0.5) + np.float32(0.5), 0.0, 1.0)
        rgb = np.round(pixels * np.float32(255.0)).astype(np.uint8).transpose(1, 2, 0)
        return np.ascontiguousarray(rgb)

    def _token_row(self, text: str) -> np.ndarray:
        """[bos] + ids + [eos], cut to the text length and padded (as CLIP's tokenizer does)."""
        length = self.interface.text_length
        ids = self.tokenizer.encode(text, bos=False)[: max(length - 2, 0)]
        row = [self.tokenizer.bos_id, *ids, self.tokenizer.eos_id][:length]
        row += [self.tokenizer.pad_id] * (length - len(row))
        return np.asarray(row, dtype=self._ids_dtype)


def _expect_dims(session: ort.InferenceSession, role: str, name: str, dims: dict[int, int]) -> None:
    args = {a.name: a for a in (*session.get_inputs(), *session.get_outputs())}
    shape = args[name].shape
    for axis, want in dims.items():
        if axis >= len(shape):
            raise ModelError(f"{role} graph: {name} has rank {len(shape)}, expected > {axis}")
        if isinstance(shape[axis], int) and shape[axis] != want:
            raise ModelError(
                f"{role} graph: {name} dimension {axis} is {shape[axis]}, the manifest says {want}"
            )


def _input_dtype(session: ort.InferenceSession, name: str, allowed: dict) -> type:
    kind = next(i.type for i in session.get_inputs() if i.name == name)
    if kind not in allowed:
        raise ModelError(f"input {name!r} has type {kind}; expected one of {sorted(allowed)}")
    return allowed[kind]


def _check_seed(seed: int) -> None:
    if type(seed) is not int or not 0 <= seed < 2**64:
        raise ModelError(f"seed must be an integer in [0, 2**64), got {seed!r}")
