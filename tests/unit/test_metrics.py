"""Specification of the pure half of ``bls_pipeline.serving.metrics`` (the backend half: tests/e2e)."""

from __future__ import annotations

import time

import pytest

from bls_pipeline.errors import InvalidImageError, InvalidRequestError, SubModelError
from bls_pipeline.serving.metrics import REFUSAL_REASONS, STAGES, StageTimer, execute_buckets, refusal_reason


@pytest.mark.parametrize(
    ("error", "decoded", "reason"),
    [
        (InvalidRequestError("top_k must be ..."), False, "invalid_request"),
        (InvalidImageError(0, "not a supported image format"), False, "invalid_image"),
        (InvalidImageError(2, "cannot be decoded (preprocessing: ...)"), True, "undecodable"),
        (SubModelError("preprocessing", "Stub process is not healthy."), True, "submodel_failure"),
        (RuntimeError("anything else"), True, "submodel_failure"),
    ],
)
def test_refusal_reason_tells_client_errors_from_server_failures(error, decoded, reason):
    assert refusal_reason(error, decoded=decoded) == reason
    assert reason in REFUSAL_REASONS


@pytest.mark.parametrize(
    ("max_batch_size", "buckets"),
    [(1, [1.0]), (2, [1.0, 2.0]), (16, [1.0, 2.0, 4.0, 8.0, 16.0]), (24, [1.0, 2.0, 4.0, 8.0, 16.0, 24.0])],
)
def test_execute_buckets_are_powers_of_two_ending_at_the_max_batch(max_batch_size, buckets):
    assert execute_buckets(max_batch_size) == buckets


def test_stage_timer_adds_up_each_stage_and_resets():
    timer = StageTimer()
    sleep = timer.timed("network", time.sleep)

    sleep(0.01)
    sleep(0.01)
    with timer.stage("trim_check"):
        time.sleep(0.005)

    assert list(timer.durations_us) == list(STAGES)
    assert 19_000 <= timer.durations_us["network"] < 200_000
    assert 4_500 <= timer.durations_us["trim_check"] < 100_000
    assert timer.durations_us["preprocessing"] == timer.durations_us["postprocessing"] == 0
    timer.reset()
    assert set(timer.durations_us.values()) == {0.0}


def test_stage_timer_counts_a_stage_that_raises():
    timer = StageTimer()
    with pytest.raises(ValueError), timer.stage("preprocessing"):
        time.sleep(0.002)
        raise ValueError("refused")

    assert timer.durations_us["preprocessing"] >= 1_500
