"""Benchmark: imported diffusers exports against diffusers' math, and what importing costs.

For tiny exports the test kit builds (SD 1.x DDIM, SD 2.x v-prediction DDIM with trailing
spacing, Euler with v- and sample-prediction, SDXL's Euler with two text encoders), runs the
same given latents through the runner and through :func:`reference_pipeline` (diffusers'
scheduler and pipeline formulas written out in numpy, float64) at 5, 20 and 50 steps and
reports the largest deviation of the final latent relative to its scale (float32 rounding
is about 1e-7 per step). Also the median seconds ``import_diffusers`` takes (checks and
smoke run included) for the SDXL export.

Prints one JSON object as its last line. Run: ``.venv/bin/python bench/diffusion_reference.py``.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from aipg.models import DiffusionParams, DiffusionRunner, import_diffusers
from aipg.testing.diffusers_exports import (
    DDIM_SD2_V,
    EULER_SDXL,
    SD1_DDIM,
    build_diffusers_export,
)
from aipg.testing.diffusers_reference import reference_pipeline

CASES = {
    "sd1_ddim_epsilon": {"scheduler": SD1_DDIM},
    "sd2_ddim_v_trailing": {"scheduler": DDIM_SD2_V, "timestep": "int64"},
    "euler_v": {"scheduler": {**EULER_SDXL, "prediction_type": "v_prediction"}},
    "euler_sample_linspace": {
        "scheduler": {
            **EULER_SDXL,
            "prediction_type": "sample",
            "timestep_spacing": "linspace",
            "steps_offset": 0,
        }
    },
    "sdxl_euler": {"sdxl": True},
}


def main() -> None:
    root = Path(tempfile.mkdtemp())
    latents = np.random.default_rng(0).standard_normal((1, 4, 8, 8)).astype(np.float32)
    deviation = {}
    for name, kw in CASES.items():
        src = build_diffusers_export(root / name, **kw)
        runner = DiffusionRunner(import_diffusers(src, root / f"{name}-model"))
        force = runner.interface.force_zeros_for_empty_prompt
        worst = 0.0
        for steps in (5, 20, 50):
            params = DiffusionParams(steps=steps, guidance_milli=7500, width=64, height=64)
            out = runner.generate("a lighthouse", params, 0, latents=latents)
            want = reference_pipeline(
                src, "a lighthouse", None, steps, 7.5, latents, force_zeros=force
            )
            scale = max(1.0, float(np.abs(want).max()))
            worst = max(worst, float(np.max(np.abs(out.latents_final - want))) / scale)
        deviation[name] = float(f"{worst:.3g}")
    src = root / "sdxl_euler"
    import_s = []
    for i in range(3):
        start = time.perf_counter()
        import_diffusers(src, root / f"again-{i}")
        import_s.append(time.perf_counter() - start)
    print(
        json.dumps(
            {
                "max_deviation_vs_reference": deviation,
                "import_sdxl_s": round(statistics.median(import_s), 3),
            }
        )
    )


if __name__ == "__main__":
    main()
