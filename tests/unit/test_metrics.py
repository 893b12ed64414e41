"""Specification of the pure half of ``bls_pipeline.serving.metrics`` (the backend half: tests/e2e)."""

from __future__ import annotations

import sys
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


class _SlowMetric:
    """A metric whose every update takes as long as a round trip to a busy server."""

    def __init__(self, labels: dict[str, str], buckets: list[float] | None = None) -> None:
        self.labels, self.values = labels, []

    def increment(self, value: float) -> None:
        time.sleep(0.02)
        self.values.append(value)

    observe = increment


class _Family:
    COUNTER, GAUGE, HISTOGRAM = "counter", "gauge", "histogram"

    def __init__(self, name: str, description: str, kind: str) -> None:
        self.name, self.metrics = name, []

    def Metric(self, labels: dict[str, str], buckets: list[float] | None = None) -> _SlowMetric:  # noqa: N802 (backend's name)
        metric = _SlowMetric(labels, buckets)
        self.metrics.append(metric)
        return metric


@pytest.fixture()
def classifier_metrics(monkeypatch):
    import types

    from bls_pipeline.serving.metrics import ClassifierMetrics

    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", types.SimpleNamespace(MetricFamily=_Family))
    metrics = ClassifierMetrics(model="classifier", version="1", max_batch_size=16, flush_interval_s=0.05)
    yield metrics
    metrics.close()


def _sent(metrics, family: int, label: str) -> dict[str, float]:
    return {m.labels[label]: sum(m.values) for m in metrics._families[family].metrics}


def test_recording_does_not_wait_for_the_server_and_everything_recorded_is_sent(classifier_metrics):
    timer = StageTimer()
    started = time.perf_counter()
    for images in (3, 5, 8):
        timer.durations_us["network"] = 100.0
        classifier_metrics.record(timer, images=images)
        classifier_metrics.refused("invalid_image")
    # 15 updates of 20 ms each (0.3 s), if they were sent from execute.
    assert time.perf_counter() - started < 0.2

    classifier_metrics.close()

    assert _sent(classifier_metrics, 0, "stage")["network"] == 300.0
    assert sorted(classifier_metrics._families[1].metrics[0].values) == [3.0, 5.0, 8.0]
    assert _sent(classifier_metrics, 2, "reason") == {
        "invalid_request": 0,
        "invalid_image": 3.0,
        "undecodable": 0,
        "submodel_failure": 0,
    }


def test_the_sending_thread_sends_without_a_flush(classifier_metrics):
    timer = StageTimer()
    timer.durations_us["trim_check"] = 7.0
    classifier_metrics.record(timer, images=1)

    deadline = time.monotonic() + 5
    while _sent(classifier_metrics, 0, "stage")["trim_check"] != 7.0 and time.monotonic() < deadline:
        time.sleep(0.01)

    assert _sent(classifier_metrics, 0, "stage")["trim_check"] == 7.0
