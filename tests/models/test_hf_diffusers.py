"""import_diffusers: what it reads from an export, what it refuses; the CLI around it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from aipg.models import (
    DiffusionParams,
    DiffusionRunner,
    ModelError,
    build_demo_diffusion,
    load_model_dir,
    write_manifest,
)
from aipg.models.hf_diffusers import check_runnable, import_diffusers
from aipg.models.manifest import file_entry
from aipg.testing.diffusers_exports import DDIM_SD2_V, EULER_SDXL, build_diffusers_export


@pytest.fixture(scope="module")
def sdxl_src(tmp_path_factory):
    return build_diffusers_export(tmp_path_factory.mktemp("xl") / "src", sdxl=True)


@pytest.fixture(scope="module")
def sd_src(tmp_path_factory):
    return build_diffusers_export(
        tmp_path_factory.mktemp("sd") / "src", scheduler=DDIM_SD2_V, timestep="int64"
    )


def test_sdxl_manifest_comes_from_the_export(sdxl_src, tmp_path):
    out = import_diffusers(sdxl_src, tmp_path / "m", name="tiny-xl")
    m = load_model_dir(out).manifest
    d = m.diffusion
    assert m.name == "tiny-xl" and m.kind == "diffusion"
    assert d.scheduler.kind == "euler" and d.scheduler.timestep_spacing == "leading"
    assert (d.train_timesteps, d.beta_start_nano, d.beta_end_nano) == (1000, 850_000, 12_000_000)
    assert d.text_dim == 32 + 48 and d.text_length == 77
    assert d.text_output == "hidden_states.1"  # penultimate of 2 layers
    e2 = d.text_encoder_2
    assert (e2.text_dim, e2.pooled_dim, e2.output, e2.pooled_output) == (
        48,
        40,
        "hidden_states.1",
        "text_embeds",
    )
    assert e2.tokenizer.kind == "clip" and e2.tokenizer.pad_id == 0  # "!"
    assert m.tokenizer.pad_id == m.tokenizer.eos_id  # "<|endoftext|>"
    assert d.force_zeros_for_empty_prompt and d.latent_scale_micro == 130_250
    assert (d.vae_scale_factor, d.size_step, d.min_size, d.max_size) == (8, 8, 8, 128)
    assert m.default_diffusion == DiffusionParams(
        steps=30, guidance_milli=5000, width=64, height=64
    )
    roles = {f.role for f in m.files}
    assert roles == {
        "text_encoder",
        "text_encoder_2",
        "unet",
        "vae_decoder",
        "tokenizer",
        "tokenizer.merges",
        "tokenizer_2",
        "tokenizer_2.merges",
    }
    load_model_dir(out).verify_all()


def test_sd_import_keeps_the_last_hidden_state_and_ddim(sd_src, tmp_path):
    d = load_model_dir(import_diffusers(sd_src, tmp_path / "m")).manifest.diffusion
    assert d.text_encoder_2 is None and d.text_output == "last_hidden_state"
    assert (d.scheduler.kind, d.scheduler.prediction_type) == ("ddim", "v_prediction")
    assert not d.force_zeros_for_empty_prompt and d.latent_scale_micro == 182_150


def test_importing_twice_gives_the_same_model_id(sd_src, tmp_path):
    a = load_model_dir(import_diffusers(sd_src, tmp_path / "a")).model_id
    b = load_model_dir(import_diffusers(sd_src, tmp_path / "b")).model_id
    assert a == b


def _edit(src, tmp_path, path, change):
    copy = tmp_path / "edited"
    shutil.copytree(src, copy)
    config = json.loads((copy / path).read_text())
    (copy / path).write_text(json.dumps(change(config)))
    return copy


@pytest.mark.parametrize(
    ("path", "change", "match"),
    [
        (
            "scheduler/scheduler_config.json",
            lambda c: {**c, "_class_name": "PNDMScheduler"},
            "PNDMScheduler' is not supported",
        ),
        (
            "scheduler/scheduler_config.json",
            lambda c: {**c, "use_karras_sigmas": True},
            "use_karras_sigmas",
        ),
        ("unet/config.json", lambda c: {**c, "cross_attention_dim": 64}, "cross_attention_dim"),
        (
            "unet/config.json",
            lambda c: {**c, "projection_class_embeddings_input_dim": 7},
            "added-condition",
        ),
        ("vae_decoder/config.json", lambda c: {**c, "latent_channels": 8}, "latent_channels"),
        ("tokenizer_2/special_tokens_map.json", lambda c: {**c, "pad_token": "<pad>"}, "pad"),
        ("model_index.json", lambda c: {**c, "requires_aesthetics_score": True}, "refiner"),
    ],
)
def test_what_cannot_run_exactly_is_refused(sdxl_src, tmp_path, path, change, match):
    src = _edit(sdxl_src, tmp_path, path, change)
    with pytest.raises(ModelError, match=match):
        import_diffusers(src, tmp_path / "out")
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_graphs_that_contradict_the_configs_are_refused(sdxl_src, tmp_path):
    # text_encoder_2's config says a hidden size its graph does not have.
    src = _edit(
        sdxl_src, tmp_path, "text_encoder_2/config.json", lambda c: {**c, "hidden_size": 40}
    )
    src_unet = json.loads((src / "unet/config.json").read_text())
    (src / "unet/config.json").write_text(json.dumps({**src_unet, "cross_attention_dim": 72}))
    with pytest.raises(ModelError, match="dimension"):
        import_diffusers(src, tmp_path / "out")


def test_missing_pieces_and_a_used_out_dir_are_refused(sd_src, tmp_path):
    with pytest.raises(ModelError, match=r"model_index\.json is missing"):
        import_diffusers(tmp_path, tmp_path / "x")
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "file").write_text("x")
    with pytest.raises(ModelError, match="not an empty directory"):
        import_diffusers(sd_src, tmp_path / "used")
    broken = tmp_path / "broken"
    shutil.copytree(sd_src, broken)
    (broken / "tokenizer" / "merges.txt").unlink()
    with pytest.raises(ModelError, match=r"merges\.txt"):
        import_diffusers(broken, tmp_path / "y")


def test_a_model_that_cannot_run_is_refused(tmp_path, sdxl_src):
    """The demo's manifest with a unet that wants SDXL's extra inputs: every hash matches,
    but the model cannot run."""
    demo = build_demo_diffusion(tmp_path / "demo")
    check_runnable(load_model_dir(demo))
    shutil.copyfile(sdxl_src / "unet/model.onnx", demo / "unet/model.onnx")
    m = load_model_dir(demo).manifest
    files = tuple(file_entry(demo, f.role, f.path) if f.role == "unet" else f for f in m.files)
    write_manifest(demo, m.replace(files=files))
    load_model_dir(demo).verify_all()  # self-consistent
    with pytest.raises(ModelError, match="unet graph"):
        check_runnable(load_model_dir(demo))
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "aipg.cli",
            "models",
            "add",
            str(demo),
            "--data-dir",
            str(tmp_path / "n"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 1 and "unet graph" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "n" / "blobs").exists() or not any((tmp_path / "n").rglob("*.onnx"))


def _models_run(model, latents, *args):
    command = [sys.executable, "-m", "aipg.cli", "models", "run", str(model), *args]
    command += ["--latents", str(latents)]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def test_cli_runs_from_given_latents(tmp_path, sdxl_src):
    model = import_diffusers(sdxl_src, tmp_path / "m")
    latents = np.random.default_rng(0).standard_normal((1, 4, 8, 8)).astype(np.float32)
    np.save(tmp_path / "lat.npy", latents)
    png = tmp_path / "x.png"
    args = ["--prompt", "a kite", "--steps", "4", "--out", str(png), "--json"]
    r = _models_run(model, tmp_path / "lat.npy", *args)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["image"] == str(png) and out["scheduler"] == "euler"
    params = DiffusionParams(steps=4, guidance_milli=5000, width=64, height=64)  # the defaults
    want = DiffusionRunner(model).generate("a kite", params, 0, latents=latents)
    assert png.read_bytes() == want.png
    np.save(tmp_path / "bad.npy", latents[:, :, :4])
    r = _models_run(model, tmp_path / "bad.npy", *args)
    assert r.returncode == 1 and "latents must be" in r.stderr


def test_euler_config_without_offset_imports(tmp_path):
    src = build_diffusers_export(
        tmp_path / "s", scheduler={**EULER_SDXL, "steps_offset": 0, "timestep_spacing": "trailing"}
    )
    r = DiffusionRunner(import_diffusers(src, tmp_path / "m"))
    assert r.schedule(DiffusionParams(steps=4)).timesteps == [999.0, 749.0, 499.0, 249.0]


def test_external_data_travels_with_its_graph(tmp_path):
    """Exports over 2 GB keep weights in ``model.onnx_data`` next to the graph."""
    from aipg.models.demo_graph import write_external

    src = build_diffusers_export(tmp_path / "s")
    graph = (src / "unet/model.onnx").read_bytes()
    write_external(src / "unet/model.onnx", graph, "model.onnx_data")
    assert (src / "unet/model.onnx").stat().st_size < len(graph) // 4
    out = import_diffusers(src, tmp_path / "m")
    entries = {f.role: f.path for f in load_model_dir(out).manifest.files}
    assert entries["unet.data"] == "unet/model.onnx_data"
    params = DiffusionParams(steps=2, width=64, height=64)
    inline = import_diffusers(build_diffusers_export(tmp_path / "s2"), tmp_path / "m2")
    assert (
        DiffusionRunner(out).generate("x", params, 1).png
        == DiffusionRunner(inline).generate("x", params, 1).png
    )


def test_the_largest_side_keeps_latents_verifiable(tmp_path):
    """SDXL's trained 1024: twice that would make a 1 MiB latent, over the 512 KiB a
    latent message carries; the largest side is the largest multiple of 8 that fits."""
    src = build_diffusers_export(tmp_path / "s", sdxl=True, sample_size=128)
    d = load_model_dir(import_diffusers(src, tmp_path / "m")).manifest
    assert d.default_diffusion.width == 1024
    assert d.diffusion.max_size == 1448  # 4 channels x 4 bytes x 181^2 <= 512 KiB < 182^2
    assert 16 * (1448 // 8) ** 2 <= 512 << 10 < 16 * (1456 // 8) ** 2
