"""The diffusion runner: Stable Diffusion / SDXL ONNX layout, the model's own scheduler
(DDIM with eta 0 or Euler discrete, :mod:`.schedulers`), classifier-free guidance.

A model has ``text_encoder`` (``input_ids`` -> ``last_hidden_state`` or the output the
manifest names), ``unet`` (``sample``, ``timestep``, ``encoder_hidden_states`` [, SDXL's
``text_embeds``, ``time_ids``] -> ``out_sample``) and ``vae_decoder`` (``latent_sample`` ->
``sample`` in [-1, 1]), as the diffusers/optimum ONNX exports have them; SDXL adds
``text_encoder_2`` (hidden states concatenated to the first encoder's, pooled
``text_embeds``). Inputs are mapped by name, ``timestep`` is fed with the rank and dtype
the graph declares. Everything after the seed is deterministic: the initial latent is a
counter-based Gaussian of (seed, position) times the scheduler's ``init_noise_sigma``, no
scheduler adds noise, and each step is ``x_next = c_x * x + c_m * unet(c_in * x)`` with
float32 coefficients computed once in float64.

:meth:`DiffusionRunner.step` recomputes one step from a stored latent with exactly the code
:meth:`DiffusionRunner.generate` runs, so a validator can re-check any step.
"""

from __future__ import annotations

import hashlib
import io
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

from .errors import ModelError
from .manifest import DIFFUSION, DiffusionInterface, DiffusionParams, ModelDir, load_model_dir
from .schedulers import Schedule, build_schedule
from .session import ExecutionProfile, SessionFactory, run_session
from .tokenizer import Tokenizer
from .tokenizer_clip import CLIP, ClipTokenizer

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
    timestep: float
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
    else the conditional ones alone; ``guidance`` is the float32 scale; ``pooled`` is SDXL's
    ``text_embeds`` (stacked the same way), None for SD 1.x/2.x."""

    embeddings: np.ndarray
    guidance: np.float32
    pooled: np.ndarray | None = None

    @property
    def guided(self) -> bool:
        return self.embeddings.shape[0] == 2


# Before schedules came from the model's config this was the runner's only one.
DdimSchedule = Schedule


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
        d = self.interface
        self.tokenizer = self._tokenizer(manifest.tokenizer)
        self.text_encoder = self._session("text_encoder", ["input_ids"], [d.text_output])
        e2 = d.text_encoder_2
        self.tokenizer_2 = self._tokenizer(e2.tokenizer) if e2 else None
        self.text_encoder_2 = (
            self._session("text_encoder_2", ["input_ids"], [e2.output, e2.pooled_output])
            if e2
            else None
        )
        unet_inputs = ["sample", "timestep", "encoder_hidden_states"]
        unet_inputs += ["text_embeds", "time_ids"] if e2 else []
        self.unet = self._session("unet", unet_inputs, ["out_sample"])
        self.vae_decoder = self._session("vae_decoder", ["latent_sample"], ["sample"])
        self._check_dims()
        self._ids_dtype = _input_dtype(self.text_encoder, "input_ids", _ORT_INT)
        self._ids2_dtype = (
            _input_dtype(self.text_encoder_2, "input_ids", _ORT_INT)
            if self.text_encoder_2
            else None
        )
        self._timestep_dtype = _input_dtype(self.unet, "timestep", _ORT_NUM)
        self._timestep_shape = _timestep_shape(self.unet)
        self._cond_dtype = {
            n: _input_dtype(self.unet, n, _ORT_FLOAT) for n in ("text_embeds", "time_ids") if e2
        }
        # fp16 exports take and return float16 at the boundary; the trajectory stays float32.
        self._sample_dtype = _input_dtype(self.unet, "sample", _ORT_FLOAT)
        self._text_dtype = _input_dtype(self.unet, "encoder_hidden_states", _ORT_FLOAT)
        self._vae_dtype = _input_dtype(self.vae_decoder, "latent_sample", _ORT_FLOAT)
        self._latent_scale = np.float32(self.interface.latent_scale_micro / 1e6)
        self.profile: ExecutionProfile = self.factory.profile(self.model.model_id)
        self._schedules: dict[int, Schedule] = {}

    def _tokenizer(self, info) -> Tokenizer | ClipTokenizer:
        if info.kind == CLIP:
            vocab = self.model.read_verified(info.role)
            return ClipTokenizer(vocab, self.model.read_verified(info.role + ".merges"), info)
        return Tokenizer(self.model.read_verified(info.role), info)

    def _session(self, role: str, inputs: list[str], outputs: list[str]) -> ort.InferenceSession:
        session = self.factory.create_for(self.model, role)
        have_in = [i.name for i in session.get_inputs()]
        have_out = [o.name for o in session.get_outputs()]
        if sorted(have_in) != sorted(inputs) or not set(outputs) <= set(have_out):
            raise ModelError(
                f"{role} graph does not have the interface the manifest says: inputs {have_in} "
                f"(want {inputs}), outputs {have_out} (want {outputs})"
            )
        return session

    def _check_dims(self) -> None:
        """Raise ModelError where a graph's fixed dimensions contradict the manifest."""
        d = self.interface
        c, length, dim = d.latent_channels, d.text_length, d.text_dim
        e2 = d.text_encoder_2
        dim1 = dim - e2.text_dim if e2 else dim
        _expect_dims(self.text_encoder, "text_encoder", "input_ids", {1: length})
        _expect_dims(self.text_encoder, "text_encoder", d.text_output, {1: length, 2: dim1})
        if e2 is not None:
            te2 = self.text_encoder_2
            _expect_dims(te2, "text_encoder_2", "input_ids", {1: length})
            _expect_dims(te2, "text_encoder_2", e2.output, {1: length, 2: e2.text_dim})
            _expect_dims(te2, "text_encoder_2", e2.pooled_output, {1: e2.pooled_dim})
            _expect_dims(self.unet, "unet", "text_embeds", {1: e2.pooled_dim})
            _expect_dims(self.unet, "unet", "time_ids", {1: 6})
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
        multiple = math.lcm(d.vae_scale_factor, d.size_step or 1)
        for side, value in (("width", params.width), ("height", params.height)):
            if not d.min_size <= value <= d.max_size or value % multiple:
                raise ModelError(
                    f"{side} must be a multiple of {multiple} from {d.min_size} "
                    f"to {d.max_size}, got {value}"
                )
        if params.steps > d.train_timesteps:
            raise ModelError(f"steps must be at most {d.train_timesteps}, got {params.steps}")
        self.schedule(params)

    def schedule(self, params: DiffusionParams) -> Schedule:
        """The model's scheduler for ``params.steps`` (built once per step count). Raises
        ModelError for a step count the scheduler cannot make, or whose timesteps are
        fractional where the unet takes integers."""
        if params.steps not in self._schedules:
            d = self.interface
            schedule = build_schedule(
                d.scheduler, params.steps, d.train_timesteps, d.beta_start_nano, d.beta_end_nano
            )
            if self._timestep_dtype in _ORT_INT.values() and any(
                t != int(t) for t in schedule.timesteps
            ):
                raise ModelError(
                    f"{params.steps} steps give fractional timesteps, but the unet takes integers"
                )
            self._schedules[params.steps] = schedule
        return self._schedules[params.steps]

    # -- entry points ---------------------------------------------------------------------

    def generate(
        self,
        prompt: str,
        params: DiffusionParams,
        seed: int,
        on_step: Callable[[StepEvent], None] | None = None,
        *,
        latents: np.ndarray | None = None,
    ) -> DiffusionResult:
        """Run the job: encode the prompt, denoise ``params.steps`` steps from the seeded
        latent (calling ``on_step`` after each), decode to PNG. ``latents`` replaces the
        seeded noise (unscaled, as diffusers' ``latents=`` takes it; the scheduler's
        ``init_noise_sigma`` is applied). Raises ModelError before any work for bad
        parameters, seed or latents."""
        self.check_params(params)
        _check_seed(seed)
        if latents is not None:
            latents = self._check_latent(np.asarray(latents), params, "latents")
        start = time.perf_counter_ns()
        conditioning = self.encode_prompt(prompt, params)
        encoded = time.perf_counter_ns()
        if latents is None:
            latent = initial = self.initial_latent(seed, params)
        else:
            latent = initial = self._noise_scaled(latents, params)
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
        """The seeded starting latent, shape (1, channels, height/8, width/8): unit
        Gaussian noise times the scheduler's ``init_noise_sigma``."""
        self.check_params(params)
        _check_seed(seed)
        return self._noise_scaled(seeded_gaussian(seed, self.latent_shape(params)), params)

    def _noise_scaled(self, noise: np.ndarray, params: DiffusionParams) -> np.ndarray:
        sigma = self.schedule(params).init_noise_sigma
        return noise if sigma == 1 else noise * sigma

    def _check_latent(self, latent: np.ndarray, params: DiffusionParams, what: str) -> np.ndarray:
        shape = self.latent_shape(params)
        if latent.shape != shape or latent.dtype != np.float32:
            raise ModelError(
                f"{what} must be float32 of shape {shape}, got {latent.dtype} {latent.shape}"
            )
        if not np.all(np.isfinite(latent)):
            raise ModelError(f"{what} must be finite")
        return latent

    def latent_shape(self, params: DiffusionParams) -> tuple[int, int, int, int]:
        """(1, channels, height / scale, width / scale)."""
        f = self.interface.vae_scale_factor
        return (1, self.interface.latent_channels, params.height // f, params.width // f)

    def encode_prompt(self, prompt: str, params: DiffusionParams) -> Conditioning:
        """Text embeddings for ``prompt`` and, when guidance is on (scale > 1), for
        ``params.negative_prompt`` as the unconditional input."""
        guided = params.guidance_milli > 1000
        zeros = (
            guided and params.negative_prompt == "" and self.interface.force_zeros_for_empty_prompt
        )
        texts = [params.negative_prompt, prompt] if guided and not zeros else [prompt]
        ids = np.stack([self._token_row(self.tokenizer, t, self._ids_dtype) for t in texts])
        out = self.interface.text_output
        (embeddings,) = run_session(self.text_encoder, [out], {"input_ids": ids}, "text_encoder")
        embeddings = embeddings.astype(np.float32)
        pooled = None
        e2 = self.interface.text_encoder_2
        if e2 is not None:
            assert self.tokenizer_2 is not None and self.text_encoder_2 is not None
            ids2 = np.stack([self._token_row(self.tokenizer_2, t, self._ids2_dtype) for t in texts])
            hidden2, pooled = run_session(
                self.text_encoder_2,
                [e2.output, e2.pooled_output],
                {"input_ids": ids2},
                "text_encoder_2",
            )
            embeddings = np.concatenate([embeddings, hidden2.astype(np.float32)], axis=-1)
            pooled = pooled.astype(np.float32)
        if zeros:  # diffusers: negative_prompt_embeds = zeros_like(prompt_embeds)
            embeddings = np.concatenate([np.zeros_like(embeddings), embeddings])
            pooled = None if pooled is None else np.concatenate([np.zeros_like(pooled), pooled])
        return Conditioning(embeddings, np.float32(params.guidance_milli / 1000), pooled)

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
        scaled = schedule.model_input(index, latent)
        sample = np.concatenate([scaled] * batch) if batch > 1 else scaled
        rank_shape = () if self._timestep_shape is None else (self._timestep_shape or batch,)
        timestep = np.full(rank_shape, schedule.timesteps[index], dtype=self._timestep_dtype)
        feeds = {
            "sample": sample.astype(self._sample_dtype, copy=False),
            "timestep": timestep,
            "encoder_hidden_states": conditioning.embeddings.astype(self._text_dtype, copy=False),
        }
        if self.interface.text_encoder_2 is not None:
            if conditioning.pooled is None:
                raise ModelError("an SDXL step needs the pooled text embeddings")
            # diffusers' add_time_ids: original size, crop top-left, target size.
            h, w = params.height, params.width
            time_ids = np.array([[h, w, 0, 0, h, w]] * batch, dtype=np.float32)
            feeds["text_embeds"] = conditioning.pooled.astype(self._cond_dtype["text_embeds"])
            feeds["time_ids"] = time_ids.astype(self._cond_dtype["time_ids"])
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

    def _token_row(self, tokenizer, text: str, dtype) -> np.ndarray:
        """[bos] + ids + [eos], cut to the text length and padded (as CLIP's tokenizer does)."""
        length = self.interface.text_length
        ids = tokenizer.encode(text, bos=False)[: max(length - 2, 0)]
        row = [tokenizer.bos_id, *ids, tokenizer.eos_id][:length]
        row += [tokenizer.pad_id] * (length - len(row))
        return np.asarray(row, dtype=dtype)


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


def _timestep_shape(session: ort.InferenceSession) -> int | None:
    """How the unet takes ``timestep``: None for a 0-d scalar (current optimum exports), else
    the fixed batch size of a rank-1 input, 0 when it follows the batch."""
    shape = next(i.shape for i in session.get_inputs() if i.name == "timestep")
    if len(shape) == 0:
        return None
    if len(shape) != 1:
        raise ModelError(f"unet timestep has rank {len(shape)}; expected 0 or 1")
    return shape[0] if isinstance(shape[0], int) and shape[0] > 0 else 0


def _input_dtype(session: ort.InferenceSession, name: str, allowed: dict) -> type:
    kind = next(i.type for i in session.get_inputs() if i.name == name)
    if kind not in allowed:
        raise ModelError(f"input {name!r} has type {kind}; expected one of {sorted(allowed)}")
    return allowed[kind]


def _check_seed(seed: int) -> None:
    if type(seed) is not int or not 0 <= seed < 2**64:
        raise ModelError(f"seed must be an integer in [0, 2**64), got {seed!r}")
