"""Schedulers against diffusers' formulas, written out here independently (numpy, float64).

The timesteps lists are the ones diffusers' DDIMScheduler / EulerDiscreteScheduler
``set_timesteps`` give for these configs; the steps are diffusers' ``step`` code paths
(pred_original_sample, then the update), not the rearranged coefficients the module uses.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aipg.models import ModelError
from aipg.models.schedulers import (
    DDIM,
    EULER,
    LEGACY_DDIM,
    SchedulerInfo,
    betas,
    build_schedule,
    scheduler_info_from_config,
)
from aipg.testing.diffusers_exports import DDIM_SD2_V, EULER_SDXL, SD1_DDIM
from aipg.testing.diffusers_reference import (
    ref_alphas_cumprod,
    ref_ddim_step,
    ref_euler,
    ref_euler_step,
)

T = 1000
SD_BETAS = (850_000, 12_000_000)


def info(
    kind=DDIM, spacing="leading", prediction="epsilon", offset=1, beta="scaled_linear", one=False
):
    return SchedulerInfo(
        kind=kind,
        beta_schedule=beta,
        prediction_type=prediction,
        timestep_spacing=spacing,
        steps_offset=offset,
        set_alpha_to_one=one,
    )


# -- timesteps ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "spacing", "offset", "steps", "want"),
    [
        (DDIM, "leading", 1, 10, [901, 801, 701, 601, 501, 401, 301, 201, 101, 1]),
        (DDIM, "leading", 0, 4, [750, 500, 250, 0]),
        (DDIM, "trailing", 0, 10, [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]),
        (DDIM, "trailing", 0, 3, [999, 666, 332]),
        (DDIM, "linspace", 0, 10, [999, 888, 777, 666, 555, 444, 333, 222, 111, 0]),
        (DDIM, "linspace", 0, 3, [999, 500, 0]),  # 499.5 rounds half to even
        (EULER, "leading", 1, 5, [801, 601, 401, 201, 1]),
        (EULER, "linspace", 0, 3, [999, 499.5, 0]),
        (EULER, "trailing", 0, 4, [999, 749, 499, 249]),
    ],
)
def test_timesteps_are_diffusers(kind, spacing, offset, steps, want):
    s = build_schedule(info(kind, spacing, offset=offset), steps, T, *SD_BETAS)
    assert s.timesteps == [float(t) for t in want]


def test_a_step_count_that_leaves_the_trained_range_is_refused():
    # leading spacing with steps_offset 1 and 1000 steps would ask for timestep 1000.
    with pytest.raises(ModelError, match=r"outside 0\.\.999"):
        build_schedule(info(), 1000, T, *SD_BETAS)
    with pytest.raises(ModelError, match="steps must be"):
        build_schedule(info(), 0, T, *SD_BETAS)


@pytest.mark.parametrize("beta", ["linear", "scaled_linear", "squaredcos_cap_v2"])
def test_betas_are_diffusers(beta):
    start, end = (0.0001, 0.02) if beta == "linear" else (0.00085, 0.012)
    ours = np.cumprod(1 - betas(beta, start, end, T))
    np.testing.assert_allclose(ours, ref_alphas_cumprod(beta, start, end), rtol=1e-12)


# -- one step ---------------------------------------------------------------------------------


PREDICTIONS = ["epsilon", "v_prediction", "sample"]
SPACINGS = ["leading", "trailing", "linspace"]


@settings(max_examples=40, deadline=None)
@given(
    prediction=st.sampled_from(PREDICTIONS),
    spacing=st.sampled_from(SPACINGS),
    beta=st.sampled_from(["linear", "scaled_linear", "squaredcos_cap_v2"]),
    one=st.booleans(),
    steps=st.integers(1, 60),
    seed=st.integers(0, 2**32 - 1),
)
def test_ddim_steps_are_diffusers(prediction, spacing, beta, one, steps, seed):
    offset = 1 if spacing == "leading" else 0
    s = build_schedule(info(DDIM, spacing, prediction, offset, beta, one), steps, T, *SD_BETAS)
    ac = ref_alphas_cumprod(beta, 0.00085, 0.012)
    final = 1.0 if one else ac[0]
    rng = np.random.default_rng(seed)
    x, m = rng.standard_normal((2, 1, 4, 3, 3)).astype(np.float32)
    for i, t in enumerate(s.timesteps):
        assert s.model_input(i, x) is x  # DDIM does not scale the model input
        want = ref_ddim_step(ac, final, int(t), T // steps, x.astype(np.float64), m, prediction)
        np.testing.assert_allclose(s.step(i, x, m), want, rtol=2e-5, atol=2e-5)
    assert s.init_noise_sigma == 1


@settings(max_examples=40, deadline=None)
@given(
    prediction=st.sampled_from(PREDICTIONS),
    spacing=st.sampled_from(SPACINGS),
    steps=st.integers(1, 60),
    seed=st.integers(0, 2**32 - 1),
)
def test_euler_steps_are_diffusers(prediction, spacing, steps, seed):
    offset = 1 if spacing == "leading" else 0
    s = build_schedule(info(EULER, spacing, prediction, offset), steps, T, *SD_BETAS)
    sigmas = ref_euler(ref_alphas_cumprod("scaled_linear"), np.array(s.timesteps))
    top = sigmas.max()
    want_init = top if spacing in ("linspace", "trailing") else (top**2 + 1) ** 0.5
    assert s.init_noise_sigma == pytest.approx(want_init, rel=1e-6)
    rng = np.random.default_rng(seed)
    x, m = rng.standard_normal((2, 1, 4, 3, 3)).astype(np.float32)
    for i in range(steps):
        # scale_model_input: sample / sqrt(sigma^2 + 1)
        np.testing.assert_allclose(s.model_input(i, x), x / (sigmas[i] ** 2 + 1) ** 0.5, rtol=1e-6)
        want = ref_euler_step(sigmas, i, x.astype(np.float64), m, prediction)
        np.testing.assert_allclose(s.step(i, x, m), want, rtol=2e-5, atol=2e-5 * max(1, top))


def test_a_step_is_a_pure_function_of_its_inputs():
    s = build_schedule(info(EULER), 8, T, *SD_BETAS)
    x = np.ones((1, 4, 2, 2), np.float32)
    m = np.full_like(x, 0.5)
    assert np.array_equal(s.step(3, x, m), s.step(3, x.copy(), m.copy()))
    assert s.step(3, x, m).dtype == np.float32


# -- configs -----------------------------------------------------------------------------------


def test_configs_of_known_models_are_read():
    sd1 = scheduler_info_from_config(SD1_DDIM)
    assert sd1.info == LEGACY_DDIM
    assert (sd1.train_timesteps, sd1.beta_start_nano, sd1.beta_end_nano) == (
        1000,
        850_000,
        12_000_000,
    )
    sd2 = scheduler_info_from_config(DDIM_SD2_V)
    assert (sd2.info.prediction_type, sd2.info.timestep_spacing) == ("v_prediction", "trailing")
    xl = scheduler_info_from_config(EULER_SDXL)
    assert xl.info == info(EULER, "leading", "epsilon", 1)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"_class_name": "PNDMScheduler"}, "PNDMScheduler' is not supported"),
        ({"_class_name": "LMSDiscreteScheduler"}, "not supported"),
        ({"clip_sample": True}, "clip_sample"),
        ({"thresholding": True}, "thresholding"),
        ({"trained_betas": [0.1, 0.2]}, "trained_betas"),
        ({"rescale_betas_zero_snr": True}, "rescale_betas_zero_snr"),
        ({"prediction_type": "flow"}, "prediction_type 'flow'"),
        ({"timestep_spacing": "karras"}, "timestep_spacing"),
        ({"beta_schedule": "sigmoid"}, "beta_schedule"),
        ({"steps_offset": -1}, "steps_offset"),
        ({"beta_start": 0.5, "beta_end": 0.1}, "beta_start < beta_end"),
        ({"beta_start": 1e-12}, "billionths"),
    ],
)
def test_unsupported_ddim_settings_are_refused(change, match):
    with pytest.raises(ModelError, match=match):
        scheduler_info_from_config({**SD1_DDIM, **change})


@pytest.mark.parametrize(
    "change",
    [
        {"use_karras_sigmas": True},
        {"interpolation_type": "log_linear"},
        {"timestep_type": "continuous"},
        {"final_sigmas_type": "sigma_min"},
    ],
)
def test_unsupported_euler_settings_are_refused(change):
    with pytest.raises(ModelError, match=next(iter(change))):
        scheduler_info_from_config({**EULER_SDXL, **change})


def test_missing_keys_take_diffusers_defaults():
    # DDIMScheduler's default clip_sample is True: a config that leaves it out clips.
    with pytest.raises(ModelError, match="clip_sample"):
        scheduler_info_from_config({"_class_name": "DDIMScheduler"})
    euler = scheduler_info_from_config({"_class_name": "EulerDiscreteScheduler"})
    assert euler.info == info(EULER, "linspace", "epsilon", 0, "linear")
    assert (euler.beta_start_nano, euler.beta_end_nano) == (100_000, 20_000_000)
    with pytest.raises(ModelError, match="JSON object"):
        scheduler_info_from_config([1, 2])
