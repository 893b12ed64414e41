"""The request forms side by side, driven by the project's own client.

The ``classifier`` takes its images in one of two forms (:mod:`bls_pipeline.contract`):
zero-padded rows of ``IMAGE`` (``[N, L]`` uint8, every row as long as the longest file) or
``IMAGE_BYTES`` (``[N, 1]`` BYTES, every file as it is). With one image per request the two
carry the same bytes; with several, padding sends ``N x max(len)`` bytes for ``sum(len)`` of
files. This module measures both forms, over gRPC and HTTP, at several images per request,
with :class:`~bls_pipeline.client.ClassifierClient` itself as the load generator
(the numbers are what a user of the client gets; each request sent once), one closed loop of
:mod:`bls_pipeline.devtools.load` in each of several processes so that the client's Python
does not starve the server.

Example::

    point = measure_form(FormLoad(url="127.0.0.1:8001", model="classifier", protocol="grpc", form="bytes",
                                  images_per_request=32, concurrency=8), images)
    print(point.images_per_s, point.p99_ms, point.request_bytes)
"""

from __future__ import annotations

import multiprocessing
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from bls_pipeline import contract
from bls_pipeline.client import DEFAULT_IMAGES_PER_REQUEST, DEFAULT_REQUESTS_IN_FLIGHT, FORMS
from bls_pipeline.devtools.bench.images import BenchImage
from bls_pipeline.devtools.load import NO_RETRY, Request, Target, Window, clock, cyclic_groups, run_window
from bls_pipeline.devtools.stats import percentile
from bls_pipeline.errors import BenchError, EndpointFailure

# (images per request, requests in flight): the client's default, and 256 images in flight
# at 8 and 32 per request (the load at which the classifier peaked with one image per request).
CLIENT_DEFAULT_POINT = (DEFAULT_IMAGES_PER_REQUEST, DEFAULT_REQUESTS_IN_FLIGHT)
DEFAULT_FORM_POINTS = ((8, 32), (32, 8), CLIENT_DEFAULT_POINT)
# Client processes at most: each drives its share of the requests in flight.
MAX_PROCESSES = 4
# Seconds the client processes get to start (spawn, imports) before the load begins.
_START_DELAY_S = 4.0
# BYTES elements travel with a 4-byte length each.
_BYTES_LENGTH_PREFIX = 4


def check_request_form(form: str) -> None:
    """Raise :class:`BenchError` unless ``form`` names one of the contract's input forms."""
    if form not in contract.FORMS:
        raise BenchError(f"unknown request form {form!r}: expected one of {', '.join(contract.FORMS)}")


def request_bytes(group: Sequence[bytes], form: str) -> int:
    """The image payload of one request in ``form``: padded rows, or files with their lengths."""
    check_request_form(form)
    if form == contract.PADDED_FORM:
        return len(group) * max(len(image) for image in group)
    return sum(len(image) + _BYTES_LENGTH_PREFIX for image in group)


@dataclass(frozen=True)
class FormLoad:
    """One point to measure: the client's protocol and form, the request size and the load."""

    url: str
    model: str
    protocol: str
    form: str
    images_per_request: int
    concurrency: int
    duration_s: float = 3.0
    warmup_s: float = 1.5


@dataclass
class FormPoint:
    """What one :class:`FormLoad` gave."""

    protocol: str
    form: str
    images_per_request: int
    concurrency: int
    processes: int
    images_per_s: float
    p50_ms: float
    p99_ms: float
    # Mean image payload of a request (what the form puts on the wire, headers aside).
    request_bytes: float
    extra: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)


@dataclass(frozen=True)
class _Share:
    """One client process's part of a load: its requests in flight and the window (epoch s)."""

    load: FormLoad
    groups: list[tuple[bytes, ...]]
    concurrency: int
    first: int
    window_start: float
    window_end: float


def _drive(share: _Share) -> list[float]:
    """Closed loop in one process: ``share.concurrency`` requests always in flight; returns
    the latency (s) of every request sent and answered inside the window."""
    load = share.load
    # Each request sent once: a shed one fails the point instead of waiting in the latencies.
    target = Target(load.url, retry=NO_RETRY, model_name=load.model, protocol=load.protocol, form=load.form)
    # The window is in wall-clock seconds, shared by every process; the driver's clock is local.
    offset = clock() - time.time()
    window = Window(share.window_start + offset, share.window_end + offset)
    with target.client(share.concurrency) as client:
        time.sleep(max(0.0, window.start_s - load.warmup_s - clock()))
        requests = [Request(group) for group in share.groups]
        run_window(client, requests, window, concurrency=share.concurrency, first=share.first)
    if window.failures:
        raise EndpointFailure(f"a request failed: {window.failures[0]}")
    return window.latencies_s


def measure_form(load: FormLoad, images: Sequence[BenchImage], *, processes: int | None = None) -> FormPoint:
    """Measure ``load`` with the client in up to :data:`MAX_PROCESSES` processes."""
    check_request_form(load.form)  # before any process starts
    groups = cyclic_groups([image.data for image in images], load.images_per_request)
    count = max(1, min(processes or MAX_PROCESSES, load.concurrency))
    window_start = time.time() + _START_DELAY_S + load.warmup_s
    window_end = window_start + load.duration_s
    shares = [
        _Share(
            load,
            groups,
            load.concurrency // count + (1 if i < load.concurrency % count else 0),
            i * 7,
            window_start,
            window_end,
        )
        for i in range(count)
    ]
    with multiprocessing.get_context("spawn").Pool(count) as pool:
        try:
            per_process = pool.map(_drive, shares)
        except Exception as exc:  # noqa: BLE001 - the client's errors come back pickled, any type
            raise EndpointFailure(
                f"{load.form} over {load.protocol}, {load.images_per_request} images per request: {exc}"
            ) from None
    latencies = [latency for part in per_process for latency in part]
    if not latencies:
        raise EndpointFailure(f"no request completed within {load.duration_s} s ({load.form}, {load.protocol})")
    return FormPoint(
        protocol=load.protocol,
        form=load.form,
        images_per_request=load.images_per_request,
        concurrency=load.concurrency,
        processes=count,
        images_per_s=len(latencies) * load.images_per_request / load.duration_s,
        p50_ms=percentile(latencies, 50) * 1e3,
        p99_ms=percentile(latencies, 99) * 1e3,
        request_bytes=statistics.fmean(request_bytes(group, load.form) for group in groups),
        extra={},
    )


def form_loads(
    model: str,
    urls: dict[str, str],
    *,
    protocols: Sequence[str],
    points: Sequence[tuple[int, int]] = DEFAULT_FORM_POINTS,
    forms: Sequence[str] = FORMS,
) -> list[FormLoad]:
    """Every (images per request, concurrency) point in every protocol and form, forms adjacent
    so that each pair is measured back to back."""
    loads = []
    for images_per_request, concurrency in points:
        for protocol in protocols:
            base = FormLoad(
                url=urls[protocol],
                model=model,
                protocol=protocol,
                form=forms[0],
                images_per_request=images_per_request,
                concurrency=concurrency,
            )
            loads.extend(replace(base, form=form) for form in forms)
    return loads
