"""The fraud matrix (issue 5): every cheat rejected in >= 99% of >= 100 randomized
trials on the demo models; honest workers never rejected in >= 1,000 trials across
thread counts 1/2, optimization levels 0/99 and with/without KV cache."""

from __future__ import annotations

import pytest

from aipg.testing.fraud_matrix import FraudMatrix

TRIALS = 100


@pytest.fixture(scope="module")
def matrix(llm_models, diffusion_models):
    return FraudMatrix(llm_models, diffusion_models)


def test_honest_llm_workers_are_never_rejected(matrix):
    row = matrix.honest_llm(1000)
    assert row.trials == 1000 and row.rejected == 0, row.reasons


def test_honest_diffusion_workers_are_never_rejected(matrix):
    row = matrix.honest_diffusion(TRIALS)
    assert row.rejected == 0 and row.committee_rejected == 0, row.reasons


@pytest.mark.parametrize(
    "name",
    [
        "alter_token",  # (1)
        "other_model",  # (2)
        "lower_precision",  # (3) fp16 and int8 weights
        "inflate_counts",  # (4)
        "fabricate_commitment",  # (5)
        "replay",  # (6)
        "draft_model",  # (8)
    ],
)
def test_llm_fraud_is_rejected(matrix, name):
    row = getattr(matrix, name)(TRIALS)
    assert row.trials == TRIALS
    assert row.rate >= 0.99, (row.rate, row.reasons)


@pytest.mark.parametrize("kind", [0, 1])
def test_diffusion_step_reuse_and_interpolation_are_rejected(matrix, kind):  # (7)
    row = matrix.skip_steps(TRIALS, kind)
    assert row.rate >= 0.99, (row.rate, row.reasons)


def test_diffusion_skipping_every_other_step_is_rejected_by_the_committee(matrix):  # (7)
    # Half the steps are guesses; one validator re-runs 3 of n steps, so it misses with
    # probability C(n/2, 3) / C(n, 3) (5-10%). A committee of 5 draws its challenges
    # independently, and 2 invalid votes of 5 block the certificate.
    row = matrix.skip_steps(TRIALS, 2)
    assert row.rate >= 0.85, (row.rate, row.reasons)
    assert row.committee_rate >= 0.99, (row.committee_rate, row.reasons)


@pytest.mark.parametrize("fp16", [False, True])
def test_diffusion_other_and_fp16_models_are_rejected(matrix, fp16):  # (2), (3) for diffusion
    row = matrix.diffusion_other_model(TRIALS, fp16)
    assert row.rate >= 0.99, (row.rate, row.reasons)
