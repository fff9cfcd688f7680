"""Model manifests: what a workload is, file by file, and its ``model_id``.

A model directory is what a developer publishes: ``manifest.json`` plus the files it
lists, each by role (``decoder``, ``tokenizer``; or ``text_encoder``, ``unet``,
``vae_decoder``, ``tokenizer``) with its sha256 and size. The manifest is a wire record;
``manifest.json`` is its human-readable form (bytes as hex) and ``model_id`` is the sha256
of its canonical encoding, so the same model built twice has the same id and the encoded
manifest is itself a content-addressed blob.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, NewType

from aipg.wire import (
    NO_SIGNATURE,
    NO_SIGNER,
    U8,
    U16,
    U32,
    U64,
    Hash32,
    MaxLen,
    PublicKeyBytes,
    Range,
    Record,
    SignatureBytes,
    WireError,
    content_id_from_digest,
    encode,
    record,
    sha256,
)

from .errors import ModelError
from .sampling import SamplingParams
from .schedulers import LEGACY_DDIM, SchedulerInfo, check_scheduler_info

__all__ = [
    "DIFFUSION",
    "LLM",
    "MANIFEST_FILE",
    "SENTENCEPIECE",
    "TOKENIZERS",
    "DiffusionInterface",
    "DiffusionParams",
    "LlmInterface",
    "Manifest",
    "ModelAnnouncement",
    "ModelDir",
    "ModelFile",
    "ModelId",
    "SecondTextEncoder",
    "TokenizerInfo",
    "check_manifest",
    "file_entry",
    "load_model_dir",
    "manifest_from_json",
    "manifest_to_json",
    "model_id",
    "model_id_text",
    "write_manifest",
]

ModelId = NewType("ModelId", bytes)  # sha256 of the canonical manifest encoding

LLM = "llm"
DIFFUSION = "diffusion"
MANIFEST_FILE = "manifest.json"
REQUIRED_ROLES = {
    LLM: ("decoder", "tokenizer"),
    DIFFUSION: ("text_encoder", "unet", "vae_decoder", "tokenizer"),
}
MAX_FILES = 64
MAX_FILE_SIZE = 1 << 40  # 1 TiB: no model file is larger; bigger claims are lies
MAX_MANIFEST_SIZE = 64 << 10
MAX_DIFFUSION_STEPS = 500
MAX_GUIDANCE_MILLI = 100_000
MAX_EOS_IDS = 16
MAX_TOKEN_TEXT = 64
# Chat templates of real models are 1-8 KB; the cap keeps a manifest under its 64 KiB.
MAX_CHAT_TEMPLATE = 32 << 10
SENTENCEPIECE = "sentencepiece"
TOKENIZERS = "tokenizers"
TOKENIZER_KINDS = (SENTENCEPIECE, TOKENIZERS)

Name = Annotated[str, MaxLen(128)]


@record(tag=202)
class ModelFile(Record):
    """One file of a model: its role, its path in the model directory, hash and size."""

    role: Annotated[str, MaxLen(64)]
    path: Annotated[str, MaxLen(256)]
    sha256: Hash32
    size: U64


@record(tag=203)
class TokenizerInfo(Record):
    """The tokenizer: its kind, the role of its file, special ids and how text is encoded.

    ``kind`` is ``sentencepiece`` (``tokenizer.model``) or ``tokenizers`` (Hugging Face's
    ``tokenizer.json``). ``bos_id`` and ``pad_id`` may be absent (None). ``extra_eos_ids``
    are the ids besides ``eos_id`` that end a generation (generation configs list several).
    A prompt is encoded as transformers' ``tokenizer(text)`` does: BOS first when
    ``add_bos``, EOS last when ``add_eos``, and, when ``special_text``, special tokens
    written in the text become their ids. ``bos_token`` / ``eos_token`` are their texts,
    as chat templates see them. The defaults are what the demo models always did.
    """

    kind: Annotated[str, MaxLen(32)]
    role: Annotated[str, MaxLen(64)]
    bos_id: U32 | None
    eos_id: U32
    pad_id: U32 | None
    extra_eos_ids: Annotated[tuple[U32, ...], MaxLen(MAX_EOS_IDS)] = ()
    add_bos: bool = True
    add_eos: bool = False
    special_text: bool = False
    bos_token: Annotated[str, MaxLen(MAX_TOKEN_TEXT)] = ""
    eos_token: Annotated[str, MaxLen(MAX_TOKEN_TEXT)] = ""


@record(tag=204)
class LlmInterface(Record):
    """The decoder's interface (optimum layout): layers, KV heads, head size, vocab, context.

    ``kv_cache`` says whether the graph takes ``past_key_values.N.key/value`` and returns
    ``present.N.key/value``; without it, every call reads the whole sequence.
    """

    num_layers: U16
    num_heads: U16
    head_dim: U16
    vocab_size: U32
    context_length: U32
    kv_cache: bool


@record(tag=216)
class SecondTextEncoder(Record):
    """SDXL's ``text_encoder_2``: its tokenizer, hidden size, pooled (``text_embeds``) size
    and the names of the two outputs the UNet is fed from."""

    tokenizer: TokenizerInfo
    text_dim: U32
    pooled_dim: U32
    output: Annotated[str, MaxLen(64)]
    pooled_output: Annotated[str, MaxLen(64)]


@record(tag=205)
class DiffusionInterface(Record):
    """The Stable Diffusion layout's numbers: latent shape, text conditioning, noise schedule.

    Fixed-point: ``latent_scale_micro=182150`` is SD's 0.18215; betas are in billionths
    (``scheduler.beta_schedule`` from ``beta_start`` to ``beta_end`` over ``train_timesteps``).
    Image sides are multiples of ``vae_scale_factor`` (and of ``size_step`` when it is
    set) from ``min_size`` to ``max_size``. ``text_output`` names the text encoder's output
    the UNet gets. With ``text_encoder_2`` (SDXL) the UNet gets both encoders' outputs
    concatenated (``text_dim`` is their sum), ``text_embeds`` and ``time_ids``; with
    ``force_zeros_for_empty_prompt`` an empty negative prompt is zeros, not encoded text.
    """

    latent_channels: U8
    vae_scale_factor: U8
    text_length: U16
    text_dim: U32
    latent_scale_micro: U32
    train_timesteps: U16
    beta_start_nano: U32
    beta_end_nano: U32
    min_size: U16
    max_size: U16
    scheduler: SchedulerInfo = LEGACY_DDIM
    text_output: Annotated[str, MaxLen(64)] = "last_hidden_state"
    text_encoder_2: SecondTextEncoder | None = None
    force_zeros_for_empty_prompt: bool = False
    size_step: U16 = 0


@record(tag=206)
class DiffusionParams(Record):
    """How a diffusion job runs. ``guidance_milli=7500`` is a guidance scale of 7.5; a scale
    of at most 1.0 turns classifier-free guidance off."""

    steps: Annotated[int, Range(1, MAX_DIFFUSION_STEPS)] = 20
    guidance_milli: Annotated[int, Range(0, MAX_GUIDANCE_MILLI)] = 7500
    width: U16 = 64
    height: U16 = 64
    negative_prompt: Annotated[str, MaxLen(1024)] = ""


@record(tag=207, max_size=MAX_MANIFEST_SIZE)
class Manifest(Record):
    """A workload: ``kind`` is ``llm`` (with ``llm`` and ``default_sampling``) or
    ``diffusion`` (with ``diffusion`` and ``default_diffusion``)."""

    name: Name
    version: Annotated[str, MaxLen(32)]
    kind: Annotated[str, MaxLen(16)]
    files: Annotated[tuple[ModelFile, ...], MaxLen(MAX_FILES)]
    tokenizer: TokenizerInfo
    llm: LlmInterface | None
    diffusion: DiffusionInterface | None
    default_sampling: SamplingParams | None
    default_diffusion: DiffusionParams | None
    license: Annotated[str, MaxLen(128)]
    # The export's Jinja chat template (transformers' apply_chat_template); "" for none:
    # chat then renders with aipg.models.chat.PLAIN_TEMPLATE.
    chat_template: Annotated[str, MaxLen(MAX_CHAT_TEMPLATE)] = ""


@record(tag=208, max_size=MAX_MANIFEST_SIZE + 1024)
class ModelAnnouncement(Record):
    """A publisher's signed announcement of a manifest on ``/aipg/1/models``."""

    manifest: Manifest
    timestamp_ms: U64
    signer: PublicKeyBytes = NO_SIGNER
    signature: SignatureBytes = NO_SIGNATURE


def model_id(manifest: Manifest) -> ModelId:
    """The id of ``manifest``: sha256 of its canonical encoding."""
    return ModelId(sha256(encode(manifest)))


def model_id_text(mid: bytes) -> str:
    """``sha256:<hex>``, how ids are shown to people."""
    return content_id_from_digest(mid)


def file_entry(root: Path, role: str, relpath: str) -> ModelFile:
    """The manifest entry of ``root/relpath`` (hashes the file)."""
    data = (root / relpath).read_bytes()
    return ModelFile(role=role, path=relpath, sha256=hashlib.sha256(data).digest(), size=len(data))


# -- checks ------------------------------------------------------------------------------


def check_manifest(manifest: Manifest) -> None:
    """Raise ModelError unless ``manifest`` is internally consistent.

    Checks the kind and its interface, that roles are unique and complete, that paths stay
    inside the model directory, and that the tokenizer names a file.
    """
    check_kind(manifest)
    check_files(manifest.files)
    check_roles(manifest)


def check_kind(manifest: Manifest) -> None:
    """Raise ModelError unless the kind is known and its interface present and sane."""
    if manifest.kind == LLM:
        if manifest.llm is None or manifest.diffusion is not None:
            raise ModelError("an llm manifest must have an llm interface and no diffusion one")
        llm = manifest.llm
        if min(llm.num_layers, llm.num_heads, llm.head_dim, llm.vocab_size) == 0:
            raise ModelError("llm interface: layers, heads, head_dim and vocab_size must be > 0")
        if llm.context_length < 2:
            raise ModelError("llm interface: context_length must be at least 2")
    elif manifest.kind == DIFFUSION:
        if manifest.diffusion is None or manifest.llm is not None:
            raise ModelError("a diffusion manifest must have a diffusion interface and no llm one")
        d = manifest.diffusion
        if min(d.latent_channels, d.vae_scale_factor, d.text_length, d.text_dim) == 0:
            raise ModelError("diffusion interface: channels, scale, text length/dim must be > 0")
        if not 0 < d.beta_start_nano < d.beta_end_nano < 1_000_000_000:
            raise ModelError("diffusion interface: need 0 < beta_start < beta_end < 1")
        if d.train_timesteps < 2 or d.latent_scale_micro == 0:
            raise ModelError("diffusion interface: train_timesteps >= 2 and a latent scale > 0")
        if not 0 < d.min_size <= d.max_size:
            raise ModelError("diffusion interface: need 0 < min_size <= max_size")
        check_scheduler_info(d.scheduler)
        e2 = d.text_encoder_2
        if e2 is not None and not 0 < e2.text_dim < d.text_dim:
            raise ModelError("diffusion interface: text_encoder_2's text_dim must be < text_dim")
        if e2 is not None and e2.pooled_dim == 0:
            raise ModelError("diffusion interface: text_encoder_2's pooled_dim must be > 0")
    else:
        raise ModelError(f"model kind must be {LLM!r} or {DIFFUSION!r}, got {manifest.kind!r}")


def check_files(files: tuple[ModelFile, ...]) -> None:
    """Raise ModelError for repeated roles or paths, empty roles, absurd sizes, bad paths."""
    roles = [f.role for f in files]
    if len(set(roles)) != len(roles):
        raise ModelError(f"manifest lists a role twice: {sorted(roles)}")
    paths = [f.path for f in files]
    if len(set(paths)) != len(paths):
        raise ModelError("manifest lists a file path twice")
    for f in files:
        if not f.role:
            raise ModelError("manifest lists a file with an empty role")
        if f.size > MAX_FILE_SIZE:
            raise ModelError(f"file {f.path!r}: size {f.size} is over the 1 TiB limit")
        check_relative_path(f.path)


def check_relative_path(path: str) -> None:
    """Raise ModelError unless ``path`` is a plain relative POSIX path inside the directory."""
    pure = PurePosixPath(path)
    if (
        not path
        or "\\" in path
        or "\0" in path
        or pure.is_absolute()
        or any(part in ("", ".", "..") for part in path.split("/"))
        or pure.name == MANIFEST_FILE
    ):
        raise ModelError(f"file path {path!r} must be a plain relative path inside the model")


def check_roles(manifest: Manifest) -> None:
    """Raise ModelError unless the kind's required roles and the tokenizer's file exist."""
    have = {f.role for f in manifest.files}
    missing = [r for r in REQUIRED_ROLES[manifest.kind] if r not in have]
    if missing:
        raise ModelError(f"{manifest.kind} manifest has no file for role(s) {', '.join(missing)}")
    tokenizers = [manifest.tokenizer]
    e2 = manifest.diffusion.text_encoder_2 if manifest.diffusion else None
    if e2 is not None:
        if "text_encoder_2" not in have:
            raise ModelError("diffusion manifest with text_encoder_2 has no file for it")
        tokenizers.append(e2.tokenizer)
    for tok in tokenizers:
        if tok.role not in have:
            raise ModelError(f"tokenizer role {tok.role!r} names no file")
        if tok.kind == "clip" and manifest.kind == DIFFUSION:
            if tok.role + ".merges" not in have:
                raise ModelError(f"clip tokenizer {tok.role!r} has no {tok.role}.merges file")
        elif tok.kind not in TOKENIZER_KINDS:
            raise ModelError(f"tokenizer kind {tok.kind!r} is not supported")


# -- manifest.json -----------------------------------------------------------------------


def manifest_to_json(manifest: Manifest) -> str:
    """The ``manifest.json`` text of ``manifest`` (sorted keys, bytes as hex)."""
    return json.dumps(_to_json(manifest), indent=2, sort_keys=True) + "\n"


def manifest_from_json(text: str | bytes) -> Manifest:
    """Parse ``manifest.json``; raises ModelError naming the bad field."""
    if len(text) > 4 * MAX_MANIFEST_SIZE:
        raise ModelError(f"manifest.json is over {4 * MAX_MANIFEST_SIZE} bytes")
    try:
        data = json.loads(text)
    except (ValueError, UnicodeDecodeError) as e:
        raise ModelError(f"manifest.json is not valid JSON: {e}") from None
    manifest = _from_json(Manifest, data, "manifest")
    check_manifest(manifest)
    return manifest


def _to_json(value: Any) -> Any:
    if isinstance(value, Record):
        return {f.name: _to_json(getattr(value, f.name)) for f in type(value).__wire_fields__}
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, tuple):
        return [_to_json(v) for v in value]
    return value


def _from_json(annotation: Any, value: Any, where: str) -> Any:
    base = annotation
    if typing.get_origin(base) is Annotated:
        base = typing.get_args(base)[0]
    origin = typing.get_origin(base)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        inner = next(a for a in typing.get_args(base) if a is not type(None))
        return _from_json(inner, value, where)
    if origin is tuple:
        if not isinstance(value, list):
            raise ModelError(f"{where}: expected a list")
        item = typing.get_args(base)[0]
        return tuple(_from_json(item, v, f"{where}[{i}]") for i, v in enumerate(value))
    if isinstance(base, type) and issubclass(base, Record):
        return _record_from_json(base, value, where)
    if base is bytes:
        if not isinstance(value, str):
            raise ModelError(f"{where}: expected a hex string")
        try:
            return bytes.fromhex(value)
        except ValueError:
            raise ModelError(f"{where}: not a hex string") from None
    if type(value) is not base:
        raise ModelError(f"{where}: expected {base.__name__}, got {type(value).__name__}")
    return value


def _record_from_json(cls: type[Record], value: Any, where: str) -> Record:
    if not isinstance(value, dict):
        raise ModelError(f"{where}: expected an object")
    hints = typing.get_type_hints(cls, include_extras=True)
    names = [f.name for f in cls.__wire_fields__]
    unknown = sorted(set(value) - set(names))
    if unknown:
        raise ModelError(f"{where}: unknown field(s) {', '.join(unknown)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    args = {}
    for name in names:
        if name not in value:
            if fields[name].default is dataclasses.MISSING:
                raise ModelError(f"{where}: missing field {name}")
            continue
        args[name] = _from_json(hints[name], value[name], f"{where}.{name}")
    try:
        return cls(**args)
    except WireError as e:
        raise ModelError(f"{where}: {e}") from None


# -- model directories ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ModelDir:
    """A manifest and where each of its files is: a model directory, or the blob store.

    ``paths`` maps role to file path. Nothing is trusted until :meth:`read_verified`.
    """

    manifest: Manifest
    paths: Mapping[str, Path]

    @property
    def model_id(self) -> ModelId:
        """sha256 of the canonical manifest."""
        return model_id(self.manifest)

    def entry(self, role: str) -> ModelFile:
        """The manifest entry for ``role``; ModelError when there is none."""
        for f in self.manifest.files:
            if f.role == role:
                return f
        raise ModelError(f"model {self.manifest.name!r} has no file for role {role!r}")

    def read_verified(self, role: str) -> bytes:
        """The bytes of the file for ``role``, after checking size and sha256.

        Reading once and handing the same bytes to the runtime means what was checked is
        what runs. Raises ModelError naming the file when it is missing or corrupt.
        """
        entry = self.entry(role)
        path = self.paths[role]
        try:
            size = path.stat().st_size
            if size != entry.size:
                raise ModelError(
                    f"{entry.path} ({role}): size {size} does not match the manifest's {entry.size}"
                )
            data = path.read_bytes()
        except OSError as e:
            raise ModelError(f"{entry.path} ({role}): cannot read: {e.strerror}") from None
        if hashlib.sha256(data).digest() != entry.sha256:
            raise ModelError(f"{entry.path} ({role}): sha256 does not match the manifest")
        return data

    def verify_file(self, role: str) -> Path:
        """Check the file for ``role`` by streaming it through sha256 (for files too large to
        hold twice in memory); returns its path. Raises ModelError like read_verified."""
        entry = self.entry(role)
        path = self.paths[role]
        h = hashlib.sha256()
        try:
            with path.open("rb") as f:
                while chunk := f.read(1 << 20):
                    h.update(chunk)
                size = f.tell()
        except OSError as e:
            raise ModelError(f"{entry.path} ({role}): cannot read: {e.strerror}") from None
        if size != entry.size:
            raise ModelError(
                f"{entry.path} ({role}): size {size} does not match the manifest's {entry.size}"
            )
        if h.digest() != entry.sha256:
            raise ModelError(f"{entry.path} ({role}): sha256 does not match the manifest")
        return path

    def data_roles(self, role: str) -> list[str]:
        """The roles of ``role``'s ONNX external-data files (``<role>.data``, ``<role>.data.N``)."""
        prefix = role + ".data"
        return [
            f.role
            for f in self.manifest.files
            if f.role == prefix or f.role.startswith(prefix + ".")
        ]

    def verify_all(self) -> None:
        """Raise ModelError unless every file is present with the right size and hash."""
        for f in self.manifest.files:
            self.verify_file(f.role)


def load_model_dir(root: Path | str) -> ModelDir:
    """The model in directory ``root`` (reads and checks ``manifest.json``, not the files)."""
    root = Path(root)
    path = root / MANIFEST_FILE
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        raise ModelError(f"{root} is not a model directory: no {MANIFEST_FILE}") from None
    except OSError as e:
        raise ModelError(f"cannot read {path}: {e.strerror}") from None
    manifest = manifest_from_json(text)
    return ModelDir(manifest, {f.role: root / f.path for f in manifest.files})


def write_manifest(root: Path, manifest: Manifest) -> Path:
    """Write ``root/manifest.json`` after checking the manifest; returns its path."""
    check_manifest(manifest)
    path = root / MANIFEST_FILE
    path.write_text(manifest_to_json(manifest), encoding="utf-8")
    return path
