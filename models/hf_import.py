"""``models import``: turn a Hugging Face ONNX export into a hostable model directory.

:func:`import_export` dispatches: a diffusers export (``model_index.json``) goes to
``aipg.models.hf_diffusers.import_diffusers``; an optimum decoder export (``config.json``)
to :func:`import_llm`; an onnxruntime-genai model-builder export (``genai_config.json``,
read by :mod:`.genai_config`) to :func:`import_genai`. The LLM importer finds the layout
(current optimum's ``model.onnx``, the merged ``decoder_model_merged.onnx``, or split
``decoder_model.onnx`` + ``decoder_with_past_model.onnx``; at the export's top or in
``onnx/``), checks the graph's
inputs and outputs against config.json, reads the tokenizer (``tokenizer.json`` through
the ``tokenizers`` library, else sentencepiece's ``tokenizer.model``) and its configs,
hashes (and with ``out``, copies) every file, runs a short smoke test (greedy tokens with
and without the KV cache must agree), and only then writes ``manifest.json``. The user
types nothing but the path.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import onnx

from .errors import ModelError
from .genai_config import GENAI_CONFIG, read_genai_config
from .hf_config import HfConfig, TokenizerConfig, read_llm_config, read_tokenizer_config
from .hf_diffusers import import_diffusers
from .manifest import (
    LLM,
    MAX_MANIFEST_SIZE,
    SENTENCEPIECE,
    TOKENIZERS,
    LlmInterface,
    Manifest,
    ModelDir,
    ModelFile,
    TokenizerInfo,
    check_manifest,
    write_manifest,
)
from .session import external_locations
from .tokenizer import Tokenizer

__all__ = ["Progress", "find_layout", "import_export", "import_genai", "import_llm"]

# (label, bytes done, bytes total): called while files are hashed or copied.
Progress = Callable[[str, int, int], None]
CHUNK = 8 << 20
WITH_PAST = "decoder_with_past"
# layout name -> [(role, file name)], in the order they are looked for.
LAYOUTS = {
    "model": [("decoder", "model.onnx")],
    "merged": [("decoder", "decoder_model_merged.onnx")],
    "split": [("decoder", "decoder_model.onnx"), (WITH_PAST, "decoder_with_past_model.onnx")],
    "no-cache": [("decoder", "decoder_model.onnx")],
}
SMOKE_PROMPT = "Hello"
SMOKE_TOKENS = 4


def import_export(
    src: Path | str,
    out: Path | str | None = None,
    name: str | None = None,
    progress: Progress | None = None,
) -> Path:
    """Import the export in ``src``; returns the model directory (``out``, or ``src`` itself
    when ``out`` is None: then only ``manifest.json`` is written there)."""
    src = Path(src)
    if not src.is_dir():
        raise ModelError(f"{src} is not a directory")
    if (src / "model_index.json").is_file():
        # A diffusers export's components are renamed into one directory, so it is always
        # written to a new one: --out, else a sibling of the export (D43).
        target = Path(out) if out else src.with_name(src.name + "-aipg")
        return import_diffusers(src, target, name)
    if (src / GENAI_CONFIG).is_file():  # it describes the ONNX file; config.json may not
        return import_genai(src, out, name, progress)
    if (src / "config.json").is_file():
        return import_llm(src, out, name, progress)
    raise ModelError(
        f"{src} is not an optimum or diffusers export (nor an onnxruntime-genai one): "
        f"no config.json, model_index.json or {GENAI_CONFIG}"
    )


def find_layout(src: Path) -> tuple[str, list[tuple[str, str]]]:
    """The decoder layout of the export in ``src``: its name and [(role, relative path)].
    When an export has several (older optimum wrote split and merged files), one file wins:
    model.onnx, then the merged decoder, then the split pair."""
    for folder in ("", "onnx/"):
        for layout, files in LAYOUTS.items():
            if all((src / (folder + f)).is_file() for _, f in files):
                return layout, [(role, folder + f) for role, f in files]
    raise ModelError(
        f"{src}: no decoder found (model.onnx, decoder_model_merged.onnx, or decoder_model.onnx "
        "with decoder_with_past_model.onnx)"
    )


def import_llm(
    src: Path | str,
    out: Path | str | None = None,
    name: str | None = None,
    progress: Progress | None = None,
) -> Path:
    """Import an optimum decoder export (see the module doc); returns the model directory."""
    src = Path(src)
    cfg = read_llm_config(src)
    layout, graphs = find_layout(src)
    kv_cache = _check_graphs(src, graphs, cfg)
    if layout == "no-cache" and kv_cache:
        raise ModelError(
            "decoder_model.onnx returns present.* but decoder_with_past_model.onnx is missing"
        )
    return _write_llm_dir(src, out, name, cfg, graphs, kv_cache, progress)


def import_genai(
    src: Path | str,
    out: Path | str | None = None,
    name: str | None = None,
    progress: Progress | None = None,
) -> Path:
    """Import an onnxruntime-genai model-builder export (``genai_config.json``, D93: one
    GroupQueryAttention decoder with the builder's default I/O names, the tokenizer files
    beside it); returns the model directory (``out``, or ``src`` itself)."""
    src = Path(src)
    cfg, filename = read_genai_config(src)
    if not (src / filename).is_file():
        raise ModelError(f"{GENAI_CONFIG} names {filename}, which is not in {src}")
    graphs = [("decoder", filename)]
    if not _check_graphs(src, graphs, cfg):
        raise ModelError(f"{filename} returns no present.* (a genai decoder has a KV cache)")
    return _write_llm_dir(src, out, name or src.resolve().name, cfg, graphs, True, progress)


def _write_llm_dir(
    src: Path,
    out: Path | str | None,
    name: str | None,
    cfg: HfConfig,
    graphs: list[tuple[str, str]],
    kv_cache: bool,
    progress: Progress | None = None,
) -> Path:
    """The checked decoder ``graphs`` of the export in ``src``, its tokenizer (and its
    configs) and ``cfg``'s numbers made a model directory: files hashed (copied to
    ``out`` when given), the smoke test run, then ``manifest.json`` written. Shared by
    the optimum and the onnxruntime-genai importers."""
    tok_cfg = read_tokenizer_config(src)
    tok_role, tok_path, info = _tokenizer(src, cfg, tok_cfg)
    roles = [*graphs, (tok_role, tok_path)]
    for role, path in graphs:
        data = sorted(external_locations((src / path).read_bytes()))
        parent = path.rsplit("/", 1)[0] + "/" if "/" in path else ""
        for i, loc in enumerate(data):
            roles.append((f"{role}.data" + (f".{i}" if i else ""), parent + loc))
    root = Path(out) if out is not None else src
    files = [_place(src, root, role, path, progress) for role, path in roles]
    manifest = Manifest(
        name=_name(name, cfg, src),
        version="1",
        kind=LLM,
        files=tuple(files),
        tokenizer=info,
        llm=LlmInterface(
            num_layers=cfg.num_layers,
            num_heads=cfg.num_kv_heads,
            head_dim=cfg.head_dim,
            vocab_size=cfg.vocab_size,
            context_length=cfg.context_length,
            kv_cache=kv_cache,
        ),
        diffusion=None,
        default_sampling=cfg.sampling,
        default_diffusion=None,
        license=_license(src),
        chat_template=tok_cfg.chat_template,
    )
    check_manifest(manifest)
    size = len(manifest.encode())
    if size > MAX_MANIFEST_SIZE:
        raise ModelError(
            f"the manifest would be {size} bytes, over the {MAX_MANIFEST_SIZE}-byte limit"
        )
    _smoke(ModelDir(manifest, {f.role: root / f.path for f in files}))
    write_manifest(root, manifest)
    return root


def _check_graphs(src: Path, graphs: list[tuple[str, str]], cfg: HfConfig) -> bool:
    """Check every graph's inputs and outputs against config.json (without loading weights);
    returns whether the export has a KV cache."""
    kv_cache = False
    for role, path in graphs:
        try:
            model = onnx.load(str(src / path), load_external_data=False)
        except Exception as e:  # protobuf's DecodeError and friends
            raise ModelError(f"{path} is not an ONNX model: {e}") from None
        inputs = {i.name: _dims(i) for i in model.graph.input}
        outputs = {o.name: _dims(o) for o in model.graph.output}
        for needed in ("input_ids", "attention_mask"):
            if needed not in inputs:
                raise ModelError(f"{path} has no input {needed!r}: not an optimum decoder export")
        if "logits" not in outputs:
            raise ModelError(f"{path} has no output 'logits'")
        _want(outputs["logits"], -1, cfg.vocab_size, f"{path}: logits", "vocab_size")
        pasts = sorted(n for n in inputs if n.startswith("past_key_values."))
        presents = sorted(n for n in outputs if n.startswith("present."))
        if presents:
            kv_cache = True
            if len(presents) != 2 * cfg.num_layers:
                raise ModelError(
                    f"{path} returns {len(presents) // 2} layers of present.*; "
                    f"config.json says num_hidden_layers {cfg.num_layers}"
                )
        if pasts and len(pasts) != 2 * cfg.num_layers:
            raise ModelError(
                f"{path} takes {len(pasts) // 2} layers of past_key_values; "
                f"config.json says num_hidden_layers {cfg.num_layers}"
            )
        for n in pasts + presents:
            dims = inputs.get(n) or outputs[n]
            where = f"{path}: {n}"
            _want(dims, 1, cfg.num_kv_heads, where, "num_key_value_heads")
            _want(dims, 3, cfg.head_dim, where, "head_dim (hidden_size / num_attention_heads)")
        if role == WITH_PAST and not pasts:
            raise ModelError(f"{path} takes no past_key_values")
    return kv_cache


def _dims(value_info) -> list:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def _want(dims: list, axis: int, value: int, where: str, key: str) -> None:
    if len(dims) < (axis + 1 if axis >= 0 else -axis):
        raise ModelError(f"{where} has rank {len(dims)}")
    have = dims[axis]
    if isinstance(have, int) and have and have != value:
        raise ModelError(f"{where} has {have} on axis {axis}; config.json's {key} is {value}")


def _tokenizer(src: Path, cfg: HfConfig, tc: TokenizerConfig) -> tuple[str, str, TokenizerInfo]:
    """The tokenizer's role, path and manifest entry, with every id from the export's files."""
    if (src / "tokenizer.json").is_file():
        kind, path = TOKENIZERS, "tokenizer.json"
    elif (src / "tokenizer.model").is_file():
        kind, path = SENTENCEPIECE, "tokenizer.model"
    else:
        raise ModelError(f"{src} has no tokenizer.json or tokenizer.model")
    data = (src / path).read_bytes()
    probe_info = TokenizerInfo(
        kind=kind, role="tokenizer", bos_id=None, eos_id=0, pad_id=None, add_bos=False
    )
    tok = Tokenizer(data, probe_info)

    def id_of(text: str | None, what: str) -> int | None:
        if text is None:
            return None
        i = tok.token_to_id(text)
        if i is None:
            raise ModelError(f"tokenizer_config.json's {what} {text!r} is not a token of {path}")
        return i

    bos_id = id_of(tc.bos_token, "bos_token")
    if bos_id is None:
        bos_id = cfg.bos_id
    eos_ids = cfg.eos_ids or ([e] if (e := id_of(tc.eos_token, "eos_token")) is not None else [])
    if not eos_ids:
        raise ModelError(
            "the export names no eos token (generation_config.json, config.json, tokenizer_config.json)"
        )
    pad_id = cfg.pad_id if cfg.pad_id is not None else id_of(tc.pad_token, "pad_token")
    prefix, suffix = _post_processor(data) if kind == TOKENIZERS else ([], [])
    add_bos = (
        tc.add_bos
        if tc.add_bos is not None
        else (prefix == [bos_id] if kind == TOKENIZERS else bos_id is not None)
    )
    add_eos = tc.add_eos if tc.add_eos is not None else suffix == [eos_ids[0]]
    if add_bos and bos_id is None:
        raise ModelError("tokenizer_config.json says add_bos_token but names no bos_token")
    vocab = tok.vocab_size
    for what, i in (("bos", bos_id), ("pad", pad_id), *(("eos", e) for e in eos_ids)):
        if i is not None and i >= min(vocab, cfg.vocab_size):
            raise ModelError(f"{what} id {i} is outside the tokenizer's {vocab}-token vocabulary")
    info = TokenizerInfo(
        kind=kind,
        role="tokenizer",
        bos_id=bos_id,
        eos_id=eos_ids[0],
        pad_id=pad_id,
        extra_eos_ids=tuple(eos_ids[1:]),
        add_bos=bool(add_bos),
        add_eos=bool(add_eos),
        special_text=True,
        bos_token=tc.bos_token or "",
        eos_token=tc.eos_token or "",
    )
    Tokenizer(data, info)  # every id checked against the vocabulary
    return "tokenizer", path, info


def _post_processor(data: bytes) -> tuple[list[int], list[int]]:
    """The ids tokenizer.json's post-processor puts before and after a text."""
    from tokenizers import Tokenizer as HfTokenizer

    tok = HfTokenizer.from_str(data.decode("utf-8"))
    plain = tok.encode("a", add_special_tokens=False).ids
    full = tok.encode("a", add_special_tokens=True).ids
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return full[:start], full[start + len(plain) :]
    return [], []


def _place(src: Path, root: Path, role: str, path: str, progress: Progress | None) -> ModelFile:
    """Hash ``src/path`` (copying it to ``root/path`` when they differ); its manifest entry."""
    source, target = src / path, root / path
    total = source.stat().st_size
    copy = source.resolve() != target.resolve()
    label = f"{'copying' if copy else 'hashing'} {path}"
    h = hashlib.sha256()
    done = 0
    if copy:
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".partial")
    with source.open("rb") as f, partial.open("wb") if copy else _Null() as w:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            w.write(chunk)
            done += len(chunk)
            if progress:
                progress(label, done, total)
    if copy:
        partial.replace(target)
    if done != total:
        raise ModelError(f"{path} changed while it was read")
    return ModelFile(role=role, path=path, sha256=h.digest(), size=total)


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None

    def write(self, _data: bytes) -> None:
        return None


def _name(name: str | None, cfg: HfConfig, src: Path) -> str:
    chosen = name or cfg.name or src.resolve().name
    if not chosen or len(chosen) > 128:
        raise ModelError("the model needs a name of 1 to 128 characters (--name)")
    return chosen


def _license(src: Path) -> str:
    """The license named in the export's README front matter, else "unspecified"."""
    readme = src / "README.md"
    if readme.is_file() and readme.stat().st_size < 1 << 20:
        text = readme.read_text(encoding="utf-8", errors="replace")
        if text.startswith("---"):
            for line in text.split("\n---", 1)[0].splitlines():
                if line.startswith("license:"):
                    value = line.split(":", 1)[1].strip()
                    if value and len(value) <= 128:
                        return value
    return "unspecified"


def _smoke(model: ModelDir) -> None:
    """A few greedy tokens, with the KV cache and without: the export runs, and its two
    paths agree."""
    from .llm import LlmRunner
    from .sampling import SamplingParams

    runner = LlmRunner(model)
    ids = runner.tokenizer.encode(SMOKE_PROMPT)
    if not ids:
        raise ModelError("the tokenizer encodes the smoke prompt as no tokens")
    params = SamplingParams(max_tokens=SMOKE_TOKENS)
    cached = runner.generate(ids, params, seed=0).token_ids
    if runner.use_kv_cache:
        runner.use_kv_cache = runner.io_binding = False  # the cache-free path, truly
        full = runner.generate(ids, params, seed=0).token_ids
        if full != cached:
            raise ModelError(
                f"smoke test: greedy tokens with the KV cache {cached} differ from those without {full}"
            )
