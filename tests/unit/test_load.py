"""The load driver's pure parts: how an answer ends, which answers a window counts, slow
points, and the overload tally over answers. The loop against a real server is in
tests/e2e/test_bench.py, test_soak.py and test_overload.py."""

from __future__ import annotations

import pytest
from tritonclient.utils import InferenceServerException

from bls_pipeline.client import ClientError, Prediction, request_failure
from bls_pipeline.devtools.load import FAILED, OK, SHED, Answer, Window, cyclic_groups, drive
from bls_pipeline.devtools.overload import LoadReport, format_report, open_loop
from bls_pipeline.errors import EndpointFailure

CAT = [Prediction(class_ids=[281], scores=[0.9], labels=["tabby"])]
QUEUE_FULL = request_failure(InferenceServerException("Exceeds maximum queue size", status="StatusCode.UNAVAILABLE"))
REFUSED = request_failure(InferenceServerException("image 0: not an image", status="400"))


def answered(sent_s: float, done_s: float) -> Answer:
    return Answer(sent_s, done_s, predictions=CAT)


def test_an_answer_is_ok_shed_or_failed_with_its_reason_in_one_line():
    assert answered(1.0, 1.25).outcome == OK and answered(1.0, 1.25).detail is None
    assert answered(1.0, 1.25).latency_s == pytest.approx(0.25)
    shed = Answer(1.0, 1.01, error=QUEUE_FULL)
    assert (shed.outcome, shed.detail) == (SHED, "queue full")
    failed = Answer(1.0, 1.01, error=ClientError("[400] image 0:\n  not an image", "400"))
    assert (failed.outcome, failed.detail) == (FAILED, "[400] image 0: not an image")
    assert Answer(1.0, 1.01, error=REFUSED).outcome == FAILED


def test_a_window_counts_what_was_sent_and_answered_inside_it():
    window = Window(10.0, 12.0)
    window.record(answered(9.5, 10.5))  # warm-up: sent before the window
    window.record(answered(10.0, 10.4))
    window.record(answered(11.0, 12.0))
    window.record(answered(11.5, 12.5))  # late: sent inside, answered after

    assert window.latencies_s == pytest.approx([0.4, 1.0])
    assert window.late == [(12.5, 1.0)]
    sample = window.sample("classifier", images_per_request=3, server_cpu_s=0.6)
    assert not sample.slow and sample.requests == 2
    assert sample.images_per_s == pytest.approx(2 * 3 / 2.0)
    assert sample.server_cpu_ms_per_image == pytest.approx(0.6e3 / 6)


def test_sending_stops_at_the_end_of_the_window_or_at_the_first_failure():
    window = Window(10.0, 12.0)
    assert window.accepts_sends(9.0) and window.accepts_sends(11.99) and not window.accepts_sends(12.0)
    window.record(Answer(10.5, 10.6, error=REFUSED))
    assert not window.accepts_sends(11.0)
    with pytest.raises(EndpointFailure, match="classifier: a request failed: image 0: not an image"):
        window.sample("classifier", 1)


def test_a_window_no_request_fits_in_is_a_slow_point_measured_from_the_requests_it_started():
    window = Window(10.0, 10.1)
    window.record(answered(9.9, 10.5))  # warm-up, not counted at all
    window.record(answered(10.0, 11.0))
    window.record(answered(10.05, 12.0))
    window.record(answered(10.1, 12.5))  # sent as the window closed: not the window's

    sample = window.sample("classifier", images_per_request=2, server_cpu_s=0.3)

    assert sample.slow and sample.requests == 2
    assert sample.latencies_s == pytest.approx([1.0, 1.95])
    # Two requests of two images from the window's start to the last answer, 2 s.
    assert sample.images_per_s == pytest.approx(4 / 2.0)
    assert sample.server_cpu_s is None and sample.server_cpu_ms_per_image is None


def test_a_window_with_no_answer_to_its_requests_fails():
    window = Window(10.0, 11.0)
    window.record(answered(9.0, 9.5))
    with pytest.raises(EndpointFailure, match="no request sent in the 1 s window was answered"):
        window.sample("classifier_naive", 1)


def test_groups_cycle_through_the_images():
    assert cyclic_groups([b"a", b"b", b"c"], 2) == [(b"a", b"b"), (b"b", b"c"), (b"c", b"a")]
    assert cyclic_groups([b"a", b"b"], 1) == [(b"a",), (b"b",)]


def test_the_overload_tally_counts_every_answer_by_outcome_with_reasons():
    report = LoadReport(rate_rps=10.0, duration_s=2.0)
    report.sent = 5
    for answer in (
        answered(0.0, 0.2),
        answered(0.1, 0.4),
        Answer(0.2, 0.21, error=QUEUE_FULL),
        Answer(0.3, 0.5, error=REFUSED),
    ):
        report.record(answer)

    assert (report.outcomes[OK], report.outcomes[SHED], report.outcomes[FAILED]) == (2, 1, 1)
    assert report.answered == 4 and report.lost == 1
    assert report.shed_reasons == {"queue full": 1}
    assert list(report.failures) == [str(REFUSED)]
    assert report.throughput_rps == pytest.approx(1.0)
    assert report.p(SHED, 50) == pytest.approx(0.01)


def test_the_driver_needs_a_request_in_flight():
    with pytest.raises(ValueError, match="concurrency must be at least 1"):
        drive(None, lambda: None, lambda request, answer: None, concurrency=0)  # type: ignore[arg-type]


def test_the_overload_report_says_when_the_load_generator_fell_behind():
    on_time = LoadReport(rate_rps=100.0, duration_s=1.0, max_in_flight=512)
    on_time.sent, on_time.late_sends = 100, 5
    behind = LoadReport(rate_rps=100.0, duration_s=1.0, max_in_flight=512)
    behind.sent, behind.late_sends = 100, 6
    closed = LoadReport(rate_rps=None, duration_s=1.0)
    closed.sent, closed.late_sends = 100, 50

    assert not on_time.generator_fell_behind and behind.generator_fell_behind
    assert not closed.generator_fell_behind
    assert "fell behind (512 senders; 6% of the requests left late)" in format_report(
        behind
    ) and "raise --max-in-flight" in format_report(behind)
    assert "fell behind" not in format_report(on_time)
    assert behind.to_dict()["generator_fell_behind"] is True and behind.to_dict()["max_in_flight"] == 512


def test_an_open_loop_needs_a_sender():
    with pytest.raises(ValueError, match="max_in_flight must be at least 1"):
        open_loop("127.0.0.1:1", [(b"x",)], rate_rps=1.0, duration_s=1.0, max_in_flight=0)
