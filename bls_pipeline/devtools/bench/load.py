"""The CPU benchmark's load generator: a closed loop of HTTP requests on one endpoint.

``concurrency`` requests always in flight from one gevent-driven ``tritonclient.http``
client, a warm-up, then a measurement window whose every request's latency is kept, and the
server's CPU time over the window. The GPU benchmark drives its server with perf_analyzer
and the project's client instead (:mod:`~bls_pipeline.devtools.bench.perf`,
:mod:`~bls_pipeline.devtools.bench.forms`); the request groups are shared.

Example::

    sample = closed_loop_load("127.0.0.1:8000", "classifier", images, concurrency=4, duration_s=5, warmup_s=1)
    print(sample.images_per_s, sample.server_cpu_ms_per_image)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from bls_pipeline import contract
from bls_pipeline.client import image_input, requested_outputs
from bls_pipeline.devtools.bench.images import BenchImage
from bls_pipeline.errors import BenchError, EndpointFailure


@dataclass
class LoadSample:
    """One measurement window of a closed-loop load on an endpoint."""

    images_per_s: float
    latencies_s: list[float]
    requests: int
    images_per_request: int = 1
    # CPU seconds the server (tritonserver and its stubs) spent during the window.
    server_cpu_s: float | None = None
    # No request both started and finished inside the window: the figures come from the
    # requests started in it, however long they took (a slow or busy machine).
    slow: bool = False

    @property
    def server_cpu_ms_per_image(self) -> float | None:
        """Server CPU time per image answered in the window, in milliseconds."""
        if self.server_cpu_s is None or not self.requests:
            return None
        return self.server_cpu_s * 1e3 / (self.requests * self.images_per_request)


def check_request_form(form: str) -> None:
    """Raise :class:`BenchError` unless ``form`` names one of the contract's input forms."""
    if form not in contract.FORMS:
        raise BenchError(f"unknown request form {form!r}: expected one of {', '.join(contract.FORMS)}")


def request_groups(images: Sequence[BenchImage], images_per_request: int) -> list[list[bytes]]:
    """One request per starting image: it and the next ``images_per_request - 1`` (cyclic)."""
    return [[images[(start + i) % len(images)].data for i in range(images_per_request)] for start in range(len(images))]


def request_inputs(
    httpclient, images: Sequence[BenchImage], images_per_request: int, form: str = contract.PADDED_FORM
) -> list[list]:
    """The ``IMAGE`` (or ``IMAGE_BYTES``) input of every :func:`request_groups` request, in ``form``."""
    return [[image_input(httpclient, group, form)] for group in request_groups(images, images_per_request)]


def closed_loop_load(
    url: str,
    model: str,
    images: Sequence[BenchImage],
    *,
    concurrency: int,
    duration_s: float,
    warmup_s: float,
    images_per_request: int = 1,
    server_cpu: Callable[[], float] | None = None,
    form: str = contract.PADDED_FORM,
) -> LoadSample:
    """``concurrency`` requests of ``images_per_request`` images always in flight for
    ``warmup_s + duration_s``.

    One ``tritonclient.http`` client with a pool of ``concurrency`` connections, driven by
    ``concurrency`` greenlets on this thread (the client is gevent-based and must not be
    shared across threads). Requests completed inside the window after the warm-up count;
    each request's latency is its own, from send to parsed response. ``server_cpu`` (the
    server's CPU seconds so far) is read at the window's start and end. ``form`` is the
    input form of the requests (``"padded"`` rows or ``"bytes"``: see ``contract.FORMS``).
    """
    import gevent
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url, concurrency=concurrency, connection_timeout=120, network_timeout=120)
    requests = request_inputs(httpclient, images, images_per_request, form)
    outputs = requested_outputs(httpclient)
    latencies: list[float] = []
    # (answered, latency) of requests started in the window and answered after it.
    late: list[tuple[float, float]] = []
    errors: list[str] = []
    start = time.perf_counter()
    window_start, window_end = start + warmup_s, start + warmup_s + duration_s

    def worker(offset: int) -> None:
        index = offset
        while not errors:
            sent = time.perf_counter()
            if sent >= window_end:
                return
            try:
                result = client.infer(model, requests[index % len(requests)], outputs=outputs)
                result.as_numpy(contract.CLASS_IDS_OUTPUT)
            except Exception as exc:  # noqa: BLE001 - gevent/HTTP errors have no common base
                errors.append(" ".join(str(exc).split()))
                return
            done = time.perf_counter()
            if sent >= window_start and done <= window_end:
                latencies.append(done - sent)
            elif sent >= window_start:
                late.append((done, done - sent))
            index += concurrency

    cpu_marks: list[float] = []

    def meter() -> None:
        for mark in (window_start, window_end):
            gevent.sleep(max(0.0, mark - time.perf_counter()))
            cpu_marks.append(server_cpu())  # type: ignore[misc]

    greenlets = [gevent.spawn(worker, offset) for offset in range(concurrency)]
    if server_cpu is not None:
        greenlets.append(gevent.spawn(meter))
    try:
        gevent.joinall(greenlets)
    finally:
        client.close()
    if errors:
        raise EndpointFailure(f"{model}: a request failed: {errors[0]}")
    if not latencies:
        if not late:
            raise EndpointFailure(f"{model}: no request sent in the {duration_s} s window was answered")
        # A slow point: measured from the requests the window started, to their last answer.
        last_done = max(done for done, _ in late)
        return LoadSample(
            images_per_s=len(late) * images_per_request / (last_done - window_start),
            latencies_s=[latency for _, latency in late],
            requests=len(late),
            images_per_request=images_per_request,
            slow=True,
        )
    return LoadSample(
        images_per_s=len(latencies) * images_per_request / duration_s,
        latencies_s=latencies,
        requests=len(latencies),
        images_per_request=images_per_request,
        server_cpu_s=cpu_marks[1] - cpu_marks[0] if len(cpu_marks) == 2 else None,
    )


def warm_up(
    url: str,
    model: str,
    images: Sequence[BenchImage],
    *,
    concurrency: int,
    form: str = contract.PADDED_FORM,
    bound_factor: float = 4.0,
) -> float:
    """Send one request alone, then ``concurrency`` at once, and wait until all are answered.

    The wait for the concurrent ones is bounded by what this machine needs right now:
    ``bound_factor`` times ``concurrency`` times the lone request's time (at least 30 s), so
    a slow or busy machine is measured rather than failed. Returns the lone request's
    seconds; raises :class:`EndpointFailure` when a request fails or the bound passes.
    """
    import gevent
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url, concurrency=concurrency, connection_timeout=600, network_timeout=600)
    requests = request_inputs(httpclient, images, 1, form)
    outputs = requested_outputs(httpclient)
    try:
        started = time.perf_counter()
        try:
            client.infer(model, requests[0], outputs=outputs)
        except Exception as exc:  # noqa: BLE001 - gevent/HTTP errors have no common base
            raise EndpointFailure(f"{model}: a warm-up request failed: {' '.join(str(exc).split())}") from None
        single_s = time.perf_counter() - started
        bound_s = max(30.0, bound_factor * concurrency * single_s)
        greenlets = [
            gevent.spawn(client.infer, model, requests[i % len(requests)], outputs=outputs) for i in range(concurrency)
        ]
        done = gevent.joinall(greenlets, timeout=bound_s)
        failed = [g.exception for g in done if g.exception is not None]
        if failed:
            raise EndpointFailure(f"{model}: a warm-up request failed: {' '.join(str(failed[0]).split())}")
        if len(done) < concurrency:
            gevent.killall(greenlets)
            raise EndpointFailure(
                f"{model}: {concurrency - len(done)} of {concurrency} warm-up requests unanswered after {bound_s:.0f} s "
                f"(one request alone took {single_s:.2f} s)"
            )
        return single_s
    finally:
        client.close()
