"""Demo models, built once per test session (they build in well under a second)."""

from pathlib import Path

import pytest

from aipg.models import build_demo_diffusion, build_demo_llm


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("demo")


@pytest.fixture(scope="session")
def llm_dir(demo_root) -> Path:
    return build_demo_llm(demo_root / "llm")


@pytest.fixture(scope="session")
def diffusion_dir(demo_root) -> Path:
    return build_demo_diffusion(demo_root / "diffusion")


@pytest.fixture(scope="session")
def llm_runner(llm_dir):
    from aipg.models import LlmRunner

    return LlmRunner(llm_dir)


@pytest.fixture(scope="session")
def diffusion_runner(diffusion_dir):
    from aipg.models import DiffusionRunner

    return DiffusionRunner(diffusion_dir)
