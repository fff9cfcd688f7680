"""Session-scoped demo models (built once per test run, in a tmp dir)."""

from __future__ import annotations

import pytest

from aipg.testing.models import build_diffusion_models, build_llm_models


@pytest.fixture(scope="session")
def llm_models(tmp_path_factory):
    return build_llm_models(tmp_path_factory.mktemp("pouw-llm"))


@pytest.fixture(scope="session")
def diffusion_models(tmp_path_factory):
    return build_diffusion_models(tmp_path_factory.mktemp("pouw-diffusion"))
