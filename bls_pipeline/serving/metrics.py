"""Per-stage metrics of the ``classifier``, exported with Triton's own on ``:8002/metrics``.

The Python backend's custom metrics (``pb_utils.MetricFamily``) reach the server's metrics
endpoint beside ``nv_inference_*``, with the same ``model`` and ``version`` labels. Every
update is a synchronous message from the stub to the server (a round trip through shared
memory), so updates are not sent from ``execute``: it only adds to local totals, and a
background thread sends them at most once per :data:`FLUSH_INTERVAL_S` (and when the model
unloads). Sending five updates from every ``execute`` added their round trips to each
response: at concurrency 1 on a GPU that was a measurable part of the latency budget.
Prometheus scrapes every 15-30 s, so a second's delay changes nothing it shows.

What is exported (names are the constants below; the dashboard, the deploy tests and
``docs/metrics.md`` read them from here):

- ``bls_classifier_stage_duration_us{stage}``: counter of microseconds spent per stage
  (``trim_check``, ``preprocessing``, ``network``, ``postprocessing``); divided by
  ``bls_classifier_execute_images_count`` it is the mean time of a stage per ``execute``.
- ``bls_classifier_execute_images``: histogram of the images in one ``execute`` (all the
  requests that Triton batched into it); ``_sum / _count`` is the mean batch.
- ``bls_classifier_refusals{reason}``: counter of failed requests by :data:`REFUSAL_REASONS`.

This module imports ``triton_python_backend_utils`` only when :class:`ClassifierMetrics` is
built, so that the names are importable where no Python backend runs (tests, tools).

Example (inside ``ClassifierModel``)::

    metrics = ClassifierMetrics(model="classifier", version="1", max_batch_size=64)
    timer = StageTimer()
    infer = timer.timed("network", lambda batch: call_model(...))
    with timer.stage("trim_check"):
        ...
    metrics.record(timer, images=12)        # adds up, then zeroes the timer; sent within a second
    metrics.close()                          # at unload: send what is left
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from bls_pipeline.errors import BlsPipelineError, InvalidImageError, InvalidRequestError

STAGE_DURATION = "bls_classifier_stage_duration_us"
EXECUTE_IMAGES = "bls_classifier_execute_images"
REFUSALS = "bls_classifier_refusals"
METRIC_NAMES = (STAGE_DURATION, EXECUTE_IMAGES, REFUSALS)

STAGES = ("trim_check", "preprocessing", "network", "postprocessing")
REFUSAL_REASONS = (
    "invalid_request",  # dtype, rank, size or top_k of the request as a whole
    "invalid_image",  # refused by the header checks before decoding (format, size, pixels)
    "undecodable",  # passed the header checks, but the decoder refused it
    "submodel_failure",  # a sub-model failed (a dead stub, a crash): not the client's fault
)

T = TypeVar("T")

# Seconds between two sends of the totals to the server (see the module docstring).
FLUSH_INTERVAL_S = 1.0


def refusal_reason(error: BlsPipelineError | Exception, *, decoded: bool) -> str:
    """The :data:`REFUSAL_REASONS` entry of a failed request.

    ``decoded`` tells where it failed: ``False`` in the checks before any sub-model ran,
    ``True`` after preprocessing and the network (there an image error means the decoder
    refused the image).
    """
    if isinstance(error, InvalidRequestError):
        return "invalid_request"
    if isinstance(error, InvalidImageError):
        return "undecodable" if decoded else "invalid_image"
    return "submodel_failure"


def execute_buckets(max_batch_size: int) -> list[float]:
    """Histogram buckets for images per ``execute``: powers of two, then ``max_batch_size``."""
    buckets = []
    edge = 1
    while edge < max_batch_size:
        buckets.append(float(edge))
        edge *= 2
    buckets.append(float(max_batch_size))
    return buckets


class StageTimer:
    """Microseconds per stage within one ``execute``, added up before they are sent.

    One per model instance: the Python backend runs one ``execute`` of an instance at a time.
    """

    def __init__(self) -> None:
        self.durations_us = dict.fromkeys(STAGES, 0.0)

    def reset(self) -> None:
        """Zero every stage."""
        self.durations_us = dict.fromkeys(STAGES, 0.0)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Add the time spent in the ``with`` block to stage ``name``."""
        start = time.perf_counter_ns()
        try:
            yield
        finally:
            self.durations_us[name] += (time.perf_counter_ns() - start) / 1000.0

    def timed(self, name: str, function: Callable[..., T]) -> Callable[..., T]:
        """``function`` wrapped so that its calls count as stage ``name``."""

        def wrapper(*args: object, **kwargs: object) -> T:
            with self.stage(name):
                return function(*args, **kwargs)

        return wrapper


class ClassifierMetrics:
    """The classifier's metric families and their metrics, created once per model instance.

    :meth:`record` and :meth:`refused` only add to totals held here; a daemon thread sends
    them (:meth:`flush`) at most every ``flush_interval_s``, so no ``execute`` waits on the
    server for its metrics.
    """

    def __init__(
        self, *, model: str, version: str, max_batch_size: int, flush_interval_s: float = FLUSH_INTERVAL_S
    ) -> None:
        import triton_python_backend_utils as pb_utils

        labels = {"model": model, "version": version}
        family = pb_utils.MetricFamily
        # Families are kept: the backend requires them to outlive their metrics.
        self._families = [
            family(STAGE_DURATION, "Cumulative time of the classifier's stages in microseconds", family.COUNTER),
            family(EXECUTE_IMAGES, "Images per execute of the classifier (all batched requests)", family.HISTOGRAM),
            family(REFUSALS, "Requests the classifier failed, by reason", family.COUNTER),
        ]
        stages, images, refusals = self._families
        self._stages = {name: stages.Metric(labels={**labels, "stage": name}) for name in STAGES}
        self._images = images.Metric(labels=labels, buckets=execute_buckets(max_batch_size))
        self._refusals = {name: refusals.Metric(labels={**labels, "reason": name}) for name in REFUSAL_REASONS}
        # Totals not sent yet; the lock guards them between execute and the sending thread.
        self._lock = threading.Lock()
        # One send at a time: a flush returns once everything recorded before it was sent.
        self._send_lock = threading.Lock()
        self._stage_us: Counter[str] = Counter()
        self._execute_images: list[float] = []
        self._refused: Counter[str] = Counter()
        self._pending = threading.Event()
        self._closed = threading.Event()
        self._interval_s = flush_interval_s
        self._sender = threading.Thread(target=self._send_periodically, name="classifier-metrics", daemon=True)
        self._sender.start()

    def record(self, timer: StageTimer, *, images: int) -> None:
        """Add one ``execute``'s stage times and image count to the totals, then zero ``timer``."""
        with self._lock:
            self._stage_us.update(timer.durations_us)
            self._execute_images.append(float(images))
        timer.reset()
        self._pending.set()

    def refused(self, reason: str) -> None:
        """Count one failed request under ``reason`` (one of :data:`REFUSAL_REASONS`)."""
        with self._lock:
            self._refused[reason] += 1
        self._pending.set()

    def flush(self) -> None:
        """Send the totals gathered since the last send, and zero them."""
        with self._send_lock:
            with self._lock:
                stage_us, self._stage_us = self._stage_us, Counter()
                execute_images, self._execute_images = self._execute_images, []
                refused, self._refused = self._refused, Counter()
            for name, duration_us in stage_us.items():
                self._stages[name].increment(duration_us)
            for value in execute_images:
                self._images.observe(value)
            for reason, count in refused.items():
                self._refusals[reason].increment(float(count))

    def close(self) -> None:
        """Stop the sending thread and send what is left (at model unload)."""
        self._closed.set()
        self._pending.set()
        self._sender.join(timeout=5.0)
        self.flush()

    def _send_periodically(self) -> None:
        while not self._closed.is_set():
            self._pending.wait()
            self._pending.clear()
            if self._closed.is_set():
                return
            self.flush()
            # Whatever arrives meanwhile waits for the next send.
            self._closed.wait(self._interval_s)
