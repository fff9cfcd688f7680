"""Imported diffusers exports (built by the test kit) run as diffusers runs them."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aipg.models import DiffusionParams, DiffusionRunner, ModelError, TokenizerInfo
from aipg.models.hf_diffusers import import_diffusers
from aipg.models.tokenizer_clip import ClipTokenizer, parse_merges
from aipg.testing.diffusers_exports import (
    BOS,
    DDIM_SD2_V,
    EOS,
    EULER_SDXL,
    build_diffusers_export,
    clip_vocab_and_merges,
    reference_clip_encode,
    reference_clip_row,
)
from aipg.testing.diffusers_reference import (
    ref_euler,
    ref_euler_step,
    ref_timesteps,
    reference_pipeline,
)

PROMPT = "a lighthouse at dusk, oil painting"


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    root = tmp_path_factory.mktemp("diffusers")
    made = {}
    for key, kw in {
        "sd_v": {"scheduler": DDIM_SD2_V, "timestep": "int64"},
        "sd_euler_v": {
            "scheduler": {**EULER_SDXL, "prediction_type": "v_prediction"},
            "timestep": "float",
        },
        "sdxl": {"sdxl": True},
        "sdxl_nozeros": {"sdxl": True, "force_zeros_for_empty_prompt": False},
    }.items():
        src = build_diffusers_export(root / f"{key}-src", **kw)
        made[key] = (src, import_diffusers(src, root / key))
    return made


def runner(exports, key) -> DiffusionRunner:
    return DiffusionRunner(exports[key][1])


def unit_latents(seed: int, shape=(1, 4, 8, 8)) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


# -- whole pipelines against the reference -------------------------------------------------


@pytest.mark.parametrize(
    ("key", "negative", "guidance_milli"),
    [
        ("sd_v", "", 7500),
        ("sd_v", "blurry", 3000),
        ("sd_euler_v", "", 1000),
        ("sdxl", "", 5000),  # force_zeros_for_empty_prompt: zeros, not the encoded ""
        ("sdxl", "low quality", 5000),
        ("sdxl_nozeros", "", 5000),
    ],
)
def test_generate_matches_the_reference_pipeline(exports, key, negative, guidance_milli):
    src, _ = exports[key]
    r = runner(exports, key)
    latents = unit_latents(1)
    params = DiffusionParams(
        steps=6, guidance_milli=guidance_milli, width=64, height=64, negative_prompt=negative
    )
    out = r.generate(PROMPT, params, seed=0, latents=latents)
    force = r.interface.force_zeros_for_empty_prompt
    want = reference_pipeline(
        src, PROMPT, negative or None, 6, guidance_milli / 1000, latents, force_zeros=force
    )
    scale = float(np.abs(want).max())
    assert np.max(np.abs(out.latents_final - want)) <= 1e-5 * max(1.0, scale)
    # The initial latent is the given one times init_noise_sigma.
    sigma = r.schedule(params).init_noise_sigma
    assert np.array_equal(out.latents_initial, latents * sigma)


def test_force_zeros_changes_only_the_empty_negative_prompt(exports):
    params = DiffusionParams(steps=3, guidance_milli=5000, width=64, height=64)
    a = runner(exports, "sdxl").encode_prompt(PROMPT, params)
    b = runner(exports, "sdxl_nozeros").encode_prompt(PROMPT, params)
    assert not a.embeddings[0].any() and not a.pooled[0].any()
    assert b.embeddings[0].any() and b.pooled[0].any()
    assert np.array_equal(a.embeddings[1], b.embeddings[1])
    c = runner(exports, "sdxl").encode_prompt(PROMPT, params.replace(negative_prompt="x"))
    assert c.embeddings[0].any()


def test_one_euler_step_is_the_formula(exports):
    """One SDXL step by hand: scale_model_input, the unet with text_embeds and time_ids,
    classifier-free guidance, EulerDiscreteScheduler.step."""
    src, _ = exports["sdxl"]
    r = runner(exports, "sdxl")
    params = DiffusionParams(steps=5, guidance_milli=5000, width=64, height=48)
    cond = r.encode_prompt(PROMPT, params)
    timesteps = ref_timesteps("euler", "leading", 1, 5)
    assert r.schedule(params).timesteps == list(timesteps)
    sigmas = ref_euler(_ac(), timesteps)
    x = unit_latents(4, (1, 4, 6, 8)) * np.float32(sigmas[2])
    unet = ort.InferenceSession(str(src / "unet/model.onnx"), providers=["CPUExecutionProvider"])
    assert unet.get_inputs()[1].shape == []  # current optimum: a 0-d float timestep
    feeds = {
        "sample": np.concatenate([x / np.float32((sigmas[2] ** 2 + 1) ** 0.5)] * 2),
        "timestep": np.array(timesteps[2], np.float32),
        "encoder_hidden_states": cond.embeddings,
        "text_embeds": cond.pooled,
        "time_ids": np.array([[48, 64, 0, 0, 48, 64]] * 2, np.float32),
    }
    (m,) = unet.run(["out_sample"], feeds)
    m = m[0:1] + 5.0 * (m[1:2] - m[0:1])
    want = ref_euler_step(sigmas, 2, x.astype(np.float64), m.astype(np.float64), "epsilon")
    got = r.step(x, 2, cond, params)
    assert np.max(np.abs(got - want)) <= 1e-5 * float(np.abs(want).max())


def _ac():
    from aipg.testing.diffusers_reference import ref_alphas_cumprod

    return ref_alphas_cumprod("scaled_linear")


@pytest.mark.parametrize("timestep", ["float0d", "float", "int64"])
def test_timestep_is_fed_as_the_graph_declares(tmp_path, timestep):
    src = build_diffusers_export(tmp_path / "src", timestep=timestep)
    r = DiffusionRunner(import_diffusers(src, tmp_path / "m"))
    params = DiffusionParams(steps=3, width=64, height=64)
    out = r.generate(PROMPT, params, seed=2)
    # The graphs compute the same thing from any of the three declarations.
    ref = build_diffusers_export(tmp_path / "ref", timestep="float0d")
    ref_out = DiffusionRunner(import_diffusers(ref, tmp_path / "rm")).generate(PROMPT, params, 2)
    assert out.png == ref_out.png


def test_fractional_timesteps_are_refused_for_an_integer_unet(tmp_path):
    linspace = {**EULER_SDXL, "timestep_spacing": "linspace", "steps_offset": 0}
    src = build_diffusers_export(tmp_path / "src", scheduler=linspace, timestep="int64")
    r = DiffusionRunner(import_diffusers(src, tmp_path / "m"))
    r.check_params(DiffusionParams(steps=4, width=64, height=64))  # 999, 666, 333, 0
    with pytest.raises(ModelError, match="fractional"):
        r.check_params(DiffusionParams(steps=3, width=64, height=64))  # 499.5


def test_bad_latents_are_refused_before_work(exports):
    r = runner(exports, "sd_v")
    params = DiffusionParams(steps=2, width=64, height=64)
    with pytest.raises(ModelError, match="shape"):
        r.generate(PROMPT, params, 0, latents=unit_latents(0, (1, 4, 4, 4)))
    with pytest.raises(ModelError, match="float32"):
        r.generate(PROMPT, params, 0, latents=unit_latents(0).astype(np.float64))
    bad = unit_latents(0)
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(ModelError, match="finite"):
        r.generate(PROMPT, params, 0, latents=bad)


def test_sizes_follow_the_unet_downsampling(exports):
    r = runner(exports, "sd_v")
    assert r.interface.size_step == 8 and r.interface.max_size == 128
    with pytest.raises(ModelError, match="width"):
        r.check_params(DiffusionParams(steps=2, width=60, height=64))


# -- the CLIP tokenizer ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clip():
    vocab_bytes, merges_bytes = clip_vocab_and_merges()
    vocab = json.loads(vocab_bytes)
    merges = parse_merges(merges_bytes)

    def make(pad: str) -> ClipTokenizer:
        info = TokenizerInfo(
            kind="clip", role="tokenizer", bos_id=vocab[BOS], eos_id=vocab[EOS], pad_id=vocab[pad]
        )
        return ClipTokenizer(vocab_bytes, merges_bytes, info)

    return vocab, merges, make


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.sampled_from([*"abcdefghij XYZ019'!.,-é日\t\n", "'s", "'ll", "  ", "the", "light"]),
        max_size=40,
    ).map("".join)
)
def test_clip_tokenizer_is_clips_bpe(clip, text):
    vocab, merges, make = clip
    tok = make(EOS)
    assert tok.encode(text, bos=False) == reference_clip_encode(text, vocab, merges)
    assert tok.row(text, 77) == reference_clip_row(text, vocab, merges, EOS)
    assert tok.encode(text)[0] == vocab[BOS]


def test_clip_rows_pad_and_truncate_as_the_config_says(clip):
    vocab, merges, make = clip
    row = make("!").row("a photo", 77)
    assert len(row) == 77 and row[0] == vocab[BOS] and row[-1] == vocab["!"] == 0
    assert row[row.index(vocab[EOS]) + 1 :] == [0] * (76 - row.index(vocab[EOS]))
    long = " ".join(["lighthouse"] * 200)
    row = make(EOS).row(long, 77)
    assert len(row) == 77 and row[-1] == vocab[EOS]
    assert row[1:-1] == reference_clip_encode(long, vocab, merges)[:75]
    # Case and whitespace runs are normalized, as CLIP's tokenizer does.
    assert make(EOS).encode("A  Photo\tOF") == make(EOS).encode("a photo of")
    # The special token written in text is the special token (an added token in HF).
    assert make(EOS).encode(f"x {EOS}", bos=False)[-1] == vocab[EOS]


def test_bad_clip_files_are_refused():
    vocab_bytes, merges_bytes = clip_vocab_and_merges()
    info = TokenizerInfo(kind="clip", role="t", bos_id=10**6, eos_id=0, pad_id=0)
    with pytest.raises(ModelError, match="bos_id"):
        ClipTokenizer(vocab_bytes, merges_bytes, info)
    ok = TokenizerInfo(kind="clip", role="t", bos_id=0, eos_id=0, pad_id=0)
    with pytest.raises(ModelError, match=r"vocab\.json"):
        ClipTokenizer(b"[1]", merges_bytes, ok)
    with pytest.raises(ModelError, match=r"merges\.txt line 2"):
        ClipTokenizer(vocab_bytes, b"#version: 0.2\na b c\n", ok)
    with pytest.raises(ModelError, match="distinct"):
        ClipTokenizer(b'{"a": 0, "b": 0}', b"", ok)
