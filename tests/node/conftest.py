"""Fixtures of the HTTP API tests: the demo models, a gateway that runs them, and the API
served on 127.0.0.1 in front of it."""

from __future__ import annotations

import pytest

from aipg.testing.apikit import app_for, demo_models, make_gateway, running_api

__all__ = ["demo_models"]  # the fixture, imported for pytest


@pytest.fixture
def gateway(demo_models):
    return make_gateway(demo_models)


@pytest.fixture
async def api(gateway):
    async with running_api(app_for(gateway)) as address:
        yield address
