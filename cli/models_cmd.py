"""`aipg-node models build-demo | import | run | check | add | list | fetch`: model commands.

:func:`add_parser` registers ``models`` on the top-level subparsers; every command sets
``func(args) -> int``. The offline commands that build, run and check a model directory are
here; those of the data dir's store (add, list, and fetch from peers) are in
:mod:`.models_store`. Errors a user can fix are one line on stderr and exit status 1.
This module also runs on its own (``python -m aipg.cli.models_cmd models ...``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import struct
import sys
from decimal import Decimal, InvalidOperation
from pathlib import Path

from .models_common import PROG, UsageError, id_text
from .models_store import ProgressBar, cmd_add, cmd_fetch, cmd_list

__all__ = ["ProgressBar", "add_parser", "main"]  # ProgressBar: re-exported from .models_store


def add_parser(
    subparsers: argparse._SubParsersAction, data_dir_parent: argparse.ArgumentParser
) -> None:
    """Add ``models`` and its sub-commands to the ``aipg-node`` subcommands."""
    models = subparsers.add_parser(
        "models",
        help="build, run, check and store models (offline)",
        description="Offline model commands: build the demo models, run a job, check a model "
        "directory, add a model to the data dir's store.",
    )
    sub = models.add_subparsers(dest="models_command", metavar="COMMAND", required=True)

    demo = sub.add_parser(
        "build-demo",
        help="build the tiny demo LLM and diffusion models",
        description="Build OUT_DIR/llm and OUT_DIR/diffusion from seeded weights (seconds, "
        "nothing downloaded, byte-identical on every run).",
    )
    demo.add_argument("out_dir", metavar="OUT_DIR")
    demo.add_argument("--json", action="store_true", help="print one JSON object")
    demo.set_defaults(func=_guarded(cmd_build_demo))

    run = sub.add_parser(
        "run",
        help="run one job on a model directory",
        description="Run a prompt through MODEL_DIR: prints the text (LLM) or writes the PNG "
        "(diffusion), and the output hash.",
    )
    run.add_argument("model_dir", metavar="MODEL_DIR")
    text = run.add_mutually_exclusive_group(required=True)
    text.add_argument("--prompt")
    text.add_argument(
        "--messages",
        metavar="FILE.json",
        help="LLM: an OpenAI-style message list, rendered with the model's chat template",
    )
    run.add_argument("--seed", type=int, default=0, help="job seed (default 0)")
    run.add_argument("--threads", type=int, default=1, help="intra-op threads (default 1)")
    run.add_argument("--max-tokens", type=int, help="LLM: most tokens to generate")
    run.add_argument("--temperature", help="LLM: e.g. 0.7 (default 0: greedy)")
    run.add_argument("--top-k", type=int, help="LLM: keep the k most likely tokens")
    run.add_argument("--top-p", help="LLM: e.g. 0.9")
    run.add_argument("--stop", action="append", default=[], help="LLM: stop string (repeatable)")
    run.add_argument("--steps", type=int, help="diffusion: scheduler steps")
    run.add_argument("--guidance", help="diffusion: guidance scale, e.g. 7.5")
    run.add_argument("--width", type=int, help="diffusion: image width in pixels")
    run.add_argument("--height", type=int, help="diffusion: image height in pixels")
    run.add_argument("--negative-prompt", help="diffusion: what the image should not show")
    run.add_argument(
        "--latents",
        metavar="FILE.npy",
        help="diffusion: initial latents (float32, unscaled, as diffusers' latents= takes them) "
        "instead of the seed's noise",
    )
    run.add_argument("--out", default="out.png", help="diffusion: PNG path (default out.png)")
    run.add_argument("--json", action="store_true", help="print one JSON object")
    run.set_defaults(func=_guarded(cmd_run))

    imp = sub.add_parser(
        "import",
        help="turn a Hugging Face ONNX export into a hostable model directory",
        description="Read an optimum (or diffusers) ONNX export: its configs, tokenizer and "
        "chat template; check the graphs against config.json; run a short smoke test; hash "
        "every file and write manifest.json. Without --out the manifest is written into SRC "
        "(nothing is copied); with --out the files are copied into DIR.",
    )
    imp.add_argument(
        "src", metavar="SRC", help="the export directory (optimum-cli export onnx ... SRC)"
    )
    imp.add_argument("--out", metavar="DIR", help="copy the model into DIR (default: in place)")
    imp.add_argument("--name", help="the model's name (default: from config.json)")
    imp.add_argument("--json", action="store_true", help="print one JSON object")
    imp.set_defaults(func=_guarded(cmd_import))

    check = sub.add_parser(
        "check",
        help="check a model directory: hashes, interface, determinism",
        description="Verify every file's hash, load the graphs against the manifest's "
        "interface, and run the same job twice and with 1 and 2 threads, reporting whether "
        "the outputs are bitwise equal. Exits 1 when anything fails.",
    )
    check.add_argument("model_dir", metavar="MODEL_DIR")
    check.add_argument("--json", action="store_true", help="print one JSON object")
    check.set_defaults(func=_guarded(cmd_check))

    add = sub.add_parser(
        "add",
        parents=[data_dir_parent],
        help="add a model directory to the data dir's blob store",
        description="Copy a model directory's files into the content-addressed store "
        "(hash-checked on the way in) and host the model.",
    )
    add.add_argument("model_dir", metavar="MODEL_DIR")
    add.set_defaults(func=_guarded(cmd_add))

    fetch = sub.add_parser(
        "fetch",
        parents=[data_dir_parent],
        help="fetch a model from peers into the data dir's store",
        description="Fetch MODEL_ID's manifest and files over the blob protocol from the given "
        "peers (resuming partial files), check every hash, and store them. Shows a progress "
        "bar on a terminal.",
    )
    fetch.add_argument("model_id", metavar="MODEL_ID", help="sha256:<hex> model id")
    fetch.add_argument(
        "--peer",
        action="append",
        required=True,
        metavar="MULTIADDR",
        help="a peer that has the model, /ip4/.../tcp/.../ws/p2p/<peer id> (repeatable)",
    )
    fetch.add_argument("--timeout", type=float, default=30.0, help="seconds per chunk request")
    fetch.add_argument("--json", action="store_true", help="print one JSON object")
    fetch.set_defaults(func=_guarded(cmd_fetch))

    lst = sub.add_parser("list", parents=[data_dir_parent], help="list the models in the store")
    lst.add_argument("--json", action="store_true", help="print one JSON object")
    lst.set_defaults(func=_guarded(cmd_list))


def _guarded(command):
    """Wrap a command so model and usage errors are one line on stderr and exit 1."""

    def run(args: argparse.Namespace) -> int:
        from aipg.models import ModelError
        from aipg.wire import WireError

        try:
            return command(args)
        except (ModelError, WireError, UsageError, OSError) as e:
            message = e
            if isinstance(e, OSError) and e.strerror and e.filename:
                message = f"{e.strerror}: {e.filename}"
            print(f"{PROG}: {message}", file=sys.stderr)
            return 1

    return run


# -- build-demo ------------------------------------------------------------------------------


def cmd_build_demo(args: argparse.Namespace) -> int:
    """``models build-demo OUT_DIR``: build both demo models, print their dirs and ids."""
    from aipg.models import build_demo, load_model_dir, model_id_text

    llm, diffusion = build_demo(Path(args.out_dir))
    result = {
        kind: {"dir": str(path), "model_id": model_id_text(load_model_dir(path).model_id)}
        for kind, path in (("llm", llm), ("diffusion", diffusion))
    }
    if args.json:
        print(json.dumps(result))
    else:
        for kind, info in result.items():
            print(f"{kind:<10} {info['dir']}  {info['model_id']}")
    return 0


# -- import ------------------------------------------------------------------------------------


def cmd_import(args: argparse.Namespace) -> int:
    """``models import SRC``: the model directory and its id (progress on a terminal)."""
    from aipg.models import load_model_dir
    from aipg.models.hf_import import import_export

    bar = ProgressBar(sys.stderr)
    shown = [""]

    def progress(label: str, done: int, total: int) -> None:
        if label != shown[0]:
            bar.finish()
            bar.shown = False
            if bar.enabled:
                print(label, file=sys.stderr)
            shown[0] = label
        bar.update(done, total)

    out = import_export(Path(args.src), Path(args.out) if args.out else None, args.name, progress)
    bar.finish()
    model = load_model_dir(out)
    m = model.manifest
    result = {"dir": str(out), "model_id": id_text(model.model_id), "name": m.name, "kind": m.kind}
    if m.llm is not None:
        result |= {
            "layers": m.llm.num_layers,
            "kv_heads": m.llm.num_heads,
            "head_dim": m.llm.head_dim,
            "vocab_size": m.llm.vocab_size,
            "context_length": m.llm.context_length,
            "kv_cache": m.llm.kv_cache,
            "tokenizer": m.tokenizer.kind,
            "eos_ids": [m.tokenizer.eos_id, *m.tokenizer.extra_eos_ids],
            "chat_template": bool(m.chat_template),
        }
    if args.json:
        print(json.dumps(result))
    else:
        print(f"imported {result['name']} into {out}")
        print(f"model_id {result['model_id']}")
        print(f"next: {PROG} models add {out}")
    return 0


# -- run ---------------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    """``models run MODEL_DIR --prompt ...``: one job; the text or a PNG, and the output hash."""
    from aipg.models import LLM, load_model_dir

    model = load_model_dir(args.model_dir)
    is_llm = model.manifest.kind == LLM
    _refuse_flags(args, DIFFUSION_FLAGS if is_llm else LLM_FLAGS, model.manifest.kind)
    result = _run_llm(model, args) if is_llm else _run_diffusion(model, args)
    if args.json:
        print(json.dumps(result))
    elif "text" in result:
        print(result["text"])
        print(f"output_hash {result['output_hash']}", file=sys.stderr)
    else:
        print(f"wrote {result['image']}  output_hash {result['output_hash']}")
    return 0


LLM_FLAGS = ("max_tokens", "temperature", "top_k", "top_p", "stop", "messages")
DIFFUSION_FLAGS = ("steps", "guidance", "width", "height", "negative_prompt", "latents")


def _refuse_flags(args: argparse.Namespace, flags: tuple[str, ...], kind: str) -> None:
    """A flag for the other kind of model is a mistake worth saying, not ignoring."""
    given = [f for f in flags if getattr(args, f) not in (None, [])]
    if given:
        names = ", ".join("--" + f.replace("_", "-") for f in given)
        raise UsageError(f"{names} do(es) not apply to a {kind} model")


def _run_llm(model, args: argparse.Namespace) -> dict:
    from aipg.models import LlmRunner, SamplingParams, SessionFactory

    defaults = model.manifest.default_sampling or SamplingParams()
    params = SamplingParams(
        temperature_milli=_milli(args.temperature, "--temperature", defaults.temperature_milli),
        top_k=defaults.top_k if args.top_k is None else args.top_k,
        top_p_milli=_milli(args.top_p, "--top-p", defaults.top_p_milli),
        max_tokens=defaults.max_tokens if args.max_tokens is None else args.max_tokens,
        stop=tuple(args.stop) or defaults.stop,
    )
    runner = LlmRunner(model, SessionFactory(threads=args.threads))
    prompt = args.prompt if args.messages is None else _chat_prompt(model, args.messages)
    prompt_ids = runner.tokenizer.encode(prompt)
    out = runner.generate(prompt_ids, params, args.seed)
    return {
        "model_id": id_text(model.model_id),
        "text": out.text,
        "tokens": out.token_ids,
        "prompt_ids": prompt_ids,
        "prompt_tokens": len(prompt_ids),
        "finish_reason": out.finish_reason,
        "output_hash": tokens_hash(out.token_ids),
        "timings": {
            "prefill_ms": out.timings.prefill_ns / 1e6,
            "decode_ms": out.timings.decode_ns / 1e6,
            "total_ms": out.timings.total_ns / 1e6,
            "tokens_per_s": round(out.timings.tokens_per_s, 1),
        },
    }


def _chat_prompt(model, path: str) -> str:
    """The prompt text of the messages in ``path`` under the model's chat template."""
    from aipg.models.chat import chat_prompt

    try:
        messages = json.loads(Path(path).read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise UsageError(f"--messages {path}: not valid JSON: {e}") from None
    return chat_prompt(model.manifest, messages)


def _run_diffusion(model, args: argparse.Namespace) -> dict:
    from aipg.models import DiffusionParams, DiffusionRunner, SessionFactory

    d = model.manifest.default_diffusion or DiffusionParams()
    params = DiffusionParams(
        steps=d.steps if args.steps is None else args.steps,
        guidance_milli=_milli(args.guidance, "--guidance", d.guidance_milli),
        width=d.width if args.width is None else args.width,
        height=d.height if args.height is None else args.height,
        negative_prompt=d.negative_prompt if args.negative_prompt is None else args.negative_prompt,
    )
    runner = DiffusionRunner(model, SessionFactory(threads=args.threads))
    latents = None if args.latents is None else _load_latents(Path(args.latents))
    out = runner.generate(args.prompt, params, args.seed, latents=latents)
    Path(args.out).write_bytes(out.png)
    return {
        "model_id": id_text(model.model_id),
        "image": str(args.out),
        "scheduler": runner.interface.scheduler.kind,
        "latents": args.latents,
        "output_hash": "sha256:" + hashlib.sha256(out.png).hexdigest(),
        "width": params.width,
        "height": params.height,
        "steps": params.steps,
        "timings": {
            "encode_ms": out.timings.encode_ns / 1e6,
            "denoise_ms": out.timings.denoise_ns / 1e6,
            "decode_ms": out.timings.decode_ns / 1e6,
            "total_ms": out.timings.total_ns / 1e6,
            "steps_per_s": round(out.timings.steps_per_s, 1),
        },
    }


def _load_latents(path: Path):
    """A ``.npy`` array (no pickles); float32 as diffusers' pipelines take latents."""
    import numpy as np

    from aipg.models import ModelError

    if path.stat().st_size > 1 << 30:
        raise UsageError(f"{path} is over 1 GiB")
    try:
        array = np.load(path, allow_pickle=False)
    except ValueError as e:
        raise ModelError(f"{path} is not a .npy array: {e}") from None
    if not isinstance(array, np.ndarray) or array.dtype.kind != "f":
        raise ModelError(f"{path} must hold a float array")
    return np.ascontiguousarray(array, dtype=np.float32)


def tokens_hash(token_ids: list[int]) -> str:
    """The output hash of an LLM job: sha256 of the token ids as little-endian u32s."""
    return "sha256:" + hashlib.sha256(struct.pack(f"<{len(token_ids)}I", *token_ids)).hexdigest()


def _milli(text: str | None, flag: str, default: int) -> int:
    """``"0.7"`` -> 700, exactly (no float on the way)."""
    if text is None:
        return default
    try:
        value = Decimal(text) * 1000
    except InvalidOperation:
        raise UsageError(f"{flag} must be a number, got {text!r}") from None
    if not value.is_finite() or value != value.to_integral_value() or value < 0:
        raise UsageError(f"{flag} must be >= 0 with at most 3 decimals, got {text!r}")
    return int(value)


# -- check -------------------------------------------------------------------------------------


def cmd_check(args: argparse.Namespace) -> int:
    """``models check MODEL_DIR``: hashes, interface, determinism; exit 1 on any failure."""
    from aipg.models import ModelError, load_model_dir

    model = load_model_dir(args.model_dir)
    report: dict = {"model_id": id_text(model.model_id), "name": model.manifest.name}
    report["files"] = files = {}
    for entry in model.manifest.files:
        try:
            model.read_verified(entry.role)
            files[entry.path] = "ok"
        except ModelError as e:
            files[entry.path] = str(e)
    ok = all(v == "ok" for v in files.values())
    if ok:
        try:
            report |= _determinism(model)
            report["interface"] = "ok"
        except ModelError as e:
            report["interface"] = str(e)
    else:
        report["interface"] = "not checked (bad files)"
    ok = ok and report["interface"] == "ok" and report["same_run_equal"] and report["threads_equal"]
    report["ok"] = ok
    if args.json:
        print(json.dumps(report))
    else:
        print(f"model      {report['name']}  {report['model_id']}")
        for path, status in files.items():
            print(f"file       {path}: {status}")
        print(f"interface  {report['interface']}")
        if "profile" in report:
            print("profile    " + ", ".join(f"{k}={v}" for k, v in report["profile"].items()))
        for key in ("same_run_equal", "threads_equal"):
            if key in report:
                print(f"{key:<14} {'yes' if report[key] else 'NO'}")
        print("ok" if ok else "FAILED")
    return 0 if ok else 1


def _determinism(model) -> dict:
    """Run one small job twice with 1 thread and once with 2; compare outputs bitwise (the
    tokens and every logit; the PNG and the final latent)."""
    import numpy as np

    from aipg.models import LLM, DiffusionParams, DiffusionRunner, LlmRunner, SamplingParams

    prompt = "Determinism is a feature."

    def llm_job(threads: int):
        runner = LlmRunner(model, threads=threads)
        ids = runner.tokenizer.encode(prompt)
        params = SamplingParams(temperature_milli=800, top_k=40, max_tokens=16)
        out = runner.generate(ids, params, seed=1)
        return runner.profile, repr(out.token_ids).encode(), runner.prefill(ids + out.token_ids)

    def diffusion_job(threads: int):
        runner = DiffusionRunner(model, threads=threads)
        d = model.manifest.default_diffusion or DiffusionParams()
        params = DiffusionParams(steps=4, width=d.width, height=d.height)
        out = runner.generate(prompt, params, seed=1)
        return runner.profile, out.png, out.latents_final

    job = llm_job if model.manifest.kind == LLM else diffusion_job
    profile, *first = job(1)

    def same(other) -> bool:
        return other[1] == first[0] and np.array_equal(other[2], first[1])

    return {
        "profile": {
            "ort_version": profile.ort_version,
            "provider": profile.provider,
            "graph_optimization_level": profile.graph_optimization_level,
            "deterministic_compute": profile.deterministic_compute,
        },
        "same_run_equal": same(job(1)),
        "threads_equal": same(job(2)),
    }


def main(argv: list[str] | None = None) -> int:
    """Run only the ``models`` commands (for use before they are wired into the main CLI)."""
    parser = argparse.ArgumentParser(prog=PROG)
    data_dir_parent = argparse.ArgumentParser(add_help=False)
    data_dir_parent.add_argument("--data-dir", metavar="DIR", help="node data dir")
    add_parser(parser.add_subparsers(dest="command", required=True), data_dir_parent)
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
