"""Closed-loop load through the project's client: ``concurrency`` requests always in flight.

A closed loop sends the next request as soon as one is answered. Every development tool that
loads a server this way runs its loop here: the CPU benchmark (:func:`warm_up`, then
:func:`measure_window` for each point), the GPU benchmark's request forms (one
:func:`run_window` per client process), the soak (:func:`drive`, every answer judged) and
the overload tool's capacity measurement. Open-loop arrival (sending on a schedule,
``overload.open_loop``) is not a loop of workers, but it times and classifies each request
with :func:`send` too.

Requests go through :class:`~bls_pipeline.client.ClassifierClient`. Over HTTP its
``tritonclient.http`` client is gevent-based and must stay on one thread: the workers are
greenlets on the calling thread sharing one client, whose pool holds a connection for each.
Over gRPC one channel multiplexes every request: the workers are threads sharing one client.

The client retries a request that the server sheds (``UNAVAILABLE``) until a deadline, and a
retried request's latency holds its back-off waits. Whether it does so here is the caller's
explicit choice (:attr:`Target.retry` has no default): :data:`NO_RETRY` to measure the server,
so that a shed request is an answer of its own (:data:`SHED`, timed from its one send); a
:class:`~bls_pipeline.client.RetryPolicy` where the load stands for users' clients, and then
:attr:`Answer.attempts` still shows every request that was shed and sent again.

Example::

    target = Target("127.0.0.1:8000", retry=NO_RETRY, protocol="http", form="padded")
    warm_up(target, images, concurrency=4)
    sample = measure_window(target, cyclic_groups(images, 1), concurrency=4, duration_s=5, warmup_s=1.5)
    print(sample.images_per_s, sample.server_cpu_ms_per_image, sample.slow)
"""

from __future__ import annotations

import dataclasses
import functools
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from bls_pipeline.client import (
    DEFAULT_FORM,
    MODEL_NAME,
    ClassifierClient,
    ClientError,
    Prediction,
    RetryPolicy,
    ServerBusy,
)
from bls_pipeline.errors import EndpointFailure

# How a request ended, as the server answered it.
OK = "ok"
SHED = "shed"  # refused with UNAVAILABLE (queue full, queue timeout, server stopping)
FAILED = "failed"  # any other error: refused, unreachable, timed out
# Measurements send each request once: what the server answers is what counts.
NO_RETRY = RetryPolicy(deadline_s=0.0)
# The first request to a model may wait for its lazy initialisation (a first DALI or network run).
WARM_UP_TIMEOUT_S = 600.0

clock = time.perf_counter


class Sendable(Protocol):
    """What a request of the load is: its images, and ``top_k`` (``None``: the server's default)."""

    @property
    def images(self) -> Sequence[bytes]: ...

    @property
    def top_k(self) -> Any: ...


@dataclass(frozen=True)
class Request:
    """One request: ``images`` in one call, ``top_k`` as a request parameter where given."""

    images: tuple[bytes, ...]
    top_k: int | None = None


R = TypeVar("R", bound=Sendable)


def cyclic_groups(images: Sequence[bytes], size: int) -> list[tuple[bytes, ...]]:
    """One group per starting image: it and the next ``size - 1`` (cyclic)."""
    return [tuple(images[(start + i) % len(images)] for i in range(size)) for start in range(len(images))]


@dataclass(frozen=True)
class Target:
    """Where the load goes, and how its client sends: ``retry`` is required (see the module docstring)."""

    url: str
    retry: RetryPolicy
    model_name: str = MODEL_NAME
    protocol: str | None = None
    form: str = DEFAULT_FORM
    timeout_s: float = 120.0

    def client(self, concurrency: int = 1) -> ClassifierClient:
        """A client for ``concurrency`` requests in flight (the size of an HTTP connection pool)."""
        return ClassifierClient(
            self.url,
            protocol=self.protocol,
            form=self.form,
            model_name=self.model_name,
            concurrency=concurrency,
            timeout_s=self.timeout_s,
            retry=self.retry,
        )


@dataclass(frozen=True)
class Answer:
    """How one request ended: when it was sent and answered (:data:`clock` seconds), and with what."""

    sent_s: float
    done_s: float
    predictions: list[Prediction] | None = None
    error: ClientError | None = None
    # Sends of the request: more than one when the server shed it and the client sent it again.
    attempts: int = 1

    @property
    def latency_s(self) -> float:
        """Seconds from the send to the parsed answer (or the error)."""
        return self.done_s - self.sent_s

    @property
    def outcome(self) -> str:
        """:data:`OK`, :data:`SHED` or :data:`FAILED`."""
        if self.error is None:
            return OK
        return SHED if isinstance(self.error, ServerBusy) else FAILED

    @property
    def detail(self) -> str | None:
        """Why it was not classified: the shed reason, or the error in one line (``None`` when it was)."""
        if isinstance(self.error, ServerBusy):
            return self.error.reason
        return None if self.error is None else " ".join(str(self.error).split())


def send(client: ClassifierClient, request: Sendable, *, sent_s: float | None = None) -> Answer:
    """Classify ``request`` in one call and time it; a :class:`ClientError` is kept in the answer.

    ``sent_s`` is the moment the latency counts from (default: now; an open loop gives the
    moment the request was due).
    """
    start = clock() if sent_s is None else sent_s
    try:
        pending = client.submit(request.images, top_k=request.top_k, wait=True)
    except ClientError as exc:
        return Answer(start, clock(), error=exc)
    try:
        predictions = pending.result()
    except ClientError as exc:
        return Answer(start, clock(), error=exc, attempts=pending.attempts)
    return Answer(start, clock(), predictions=predictions, attempts=pending.attempts)


def drive(
    client: ClassifierClient,
    next_request: Callable[[], R | None],
    on_answer: Callable[[R, Answer], None],
    *,
    concurrency: int,
    timers: Sequence[tuple[float, Callable[[], None]]] = (),
) -> None:
    """Keep ``concurrency`` requests in flight through ``client`` until ``next_request`` has no more.

    Each worker takes ``next_request()`` (called under a lock, one worker at a time; ``None``
    ends that worker), sends it, and hands the answer to ``on_answer`` (outside the lock; over
    HTTP the other workers wait while it runs, so it stays short). Each ``(at, action)`` of
    ``timers`` runs ``action`` once at :data:`clock` time ``at``, alongside. An exception in
    any of them stops every worker and is raised here once all have ended.
    """
    if concurrency < 1:
        raise ValueError(f"concurrency must be at least 1, got {concurrency}")
    run, sleep = (_run_as_greenlets, _gevent_sleep()) if client.protocol == "http" else (_run_as_threads, time.sleep)
    lock = threading.Lock()
    raised: list[BaseException] = []

    def take() -> R | None:
        with lock:
            return None if raised else next_request()

    def worker() -> None:
        try:
            while (request := take()) is not None:
                on_answer(request, send(client, request))
        except BaseException as exc:  # noqa: BLE001 - raised again in the caller
            raised.append(exc)

    def timer(at: float, action: Callable[[], None]) -> None:
        try:
            sleep(max(0.0, at - clock()))
            action()
        except BaseException as exc:  # noqa: BLE001 - raised again in the caller
            raised.append(exc)

    run([worker] * concurrency + [functools.partial(timer, at, action) for at, action in timers])
    if raised:
        raise raised[0]


def _gevent_sleep() -> Callable[[float], None]:
    import gevent

    return gevent.sleep


def _run_as_greenlets(tasks: Sequence[Callable[[], None]]) -> None:
    """Run ``tasks`` as greenlets on this thread (HTTP: the client's gevent loop) until all end."""
    import gevent

    gevent.joinall([gevent.spawn(task) for task in tasks])


def _run_as_threads(tasks: Sequence[Callable[[], None]]) -> None:
    """Run ``tasks`` as threads (gRPC: one channel for all) until all end."""
    threads = [threading.Thread(target=task, name=f"load-{i}", daemon=True) for i, task in enumerate(tasks)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


# --- a measurement window -----------------------------------------------------------------------


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


@dataclass
class Window:
    """Which answers a measurement window counts, from ``start_s`` to ``end_s`` (:data:`clock` seconds).

    A request sent before the window is warm-up; one sent and answered inside it counts, with
    its latency; one sent inside and answered after it is late (kept for a slow point); the
    first failed request ends the load.
    """

    start_s: float
    end_s: float
    latencies_s: list[float] = field(default_factory=list)
    # (answered, latency) of the requests sent in the window and answered after it.
    late: list[tuple[float, float]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def duration_s(self) -> float:
        """The window's length."""
        return self.end_s - self.start_s

    def accepts_sends(self, now: float) -> bool:
        """Whether the load goes on: the window has not ended and no request has failed."""
        return now < self.end_s and not self.failures

    def record(self, answer: Answer) -> None:
        """Count one answer."""
        if answer.error is not None:
            self.failures.append(answer.detail or answer.outcome)
        elif self.start_s <= answer.sent_s and answer.done_s <= self.end_s:
            self.latencies_s.append(answer.latency_s)
        elif self.start_s <= answer.sent_s < self.end_s:
            self.late.append((answer.done_s, answer.latency_s))

    def sample(self, label: str, images_per_request: int, server_cpu_s: float | None = None) -> LoadSample:
        """The window's :class:`LoadSample`; raises :class:`EndpointFailure` when a request failed
        or none sent in the window was answered.

        When none was both sent and answered inside it, the sample is a slow one, measured from
        the requests the window started to their last answer (and without server CPU).
        """
        if self.failures:
            raise EndpointFailure(f"{label}: a request failed: {self.failures[0]}")
        if self.latencies_s:
            return LoadSample(
                images_per_s=len(self.latencies_s) * images_per_request / self.duration_s,
                latencies_s=list(self.latencies_s),
                requests=len(self.latencies_s),
                images_per_request=images_per_request,
                server_cpu_s=server_cpu_s,
            )
        if not self.late:
            raise EndpointFailure(f"{label}: no request sent in the {self.duration_s:g} s window was answered")
        last_done = max(done for done, _ in self.late)
        return LoadSample(
            images_per_s=len(self.late) * images_per_request / (last_done - self.start_s),
            latencies_s=[latency for _, latency in self.late],
            requests=len(self.late),
            images_per_request=images_per_request,
            slow=True,
        )


def run_window(
    client: ClassifierClient,
    requests: Sequence[Sendable],
    window: Window,
    *,
    concurrency: int,
    first: int = 0,
    timers: Sequence[tuple[float, Callable[[], None]]] = (),
) -> None:
    """Send ``requests`` (cycled, from index ``first``) ``concurrency`` at a time from now until
    ``window`` ends or a request fails, every answer recorded in ``window``."""
    index = first

    def next_request() -> Sendable | None:
        nonlocal index
        if not window.accepts_sends(clock()):
            return None
        index += 1
        return requests[(index - 1) % len(requests)]

    drive(client, next_request, lambda _, answer: window.record(answer), concurrency=concurrency, timers=timers)


def measure_window(
    target: Target,
    groups: Sequence[Sequence[bytes]],
    *,
    concurrency: int,
    duration_s: float,
    warmup_s: float,
    server_cpu: Callable[[], float] | None = None,
) -> LoadSample:
    """``concurrency`` requests (``groups``, cycled, all of one size) always in flight for
    ``warmup_s + duration_s``; the requests sent and answered in the last ``duration_s`` count.

    ``server_cpu`` (the server's CPU seconds so far) is read at the window's start and end.
    """
    sizes = {len(group) for group in groups}
    if len(sizes) != 1:
        raise ValueError(f"the requests of a window hold one number of images, got {sorted(sizes)}")
    requests = [Request(tuple(group)) for group in groups]
    cpu_marks: list[float] = []
    with target.client(concurrency) as client:
        start = clock()
        window = Window(start + warmup_s, start + warmup_s + duration_s)
        timers = (
            [(mark, lambda: cpu_marks.append(server_cpu())) for mark in (window.start_s, window.end_s)]
            if server_cpu is not None
            else []
        )
        run_window(client, requests, window, concurrency=concurrency, timers=timers)
    return window.sample(
        target.model_name,
        sizes.pop(),
        server_cpu_s=cpu_marks[1] - cpu_marks[0] if len(cpu_marks) == 2 else None,
    )


def warm_up(target: Target, images: Sequence[bytes], *, concurrency: int, bound_factor: float = 4.0) -> float:
    """Send one image alone, then ``concurrency`` one-image requests at once, and wait until all are answered.

    The wait for the concurrent ones is bounded by what this machine needs right now:
    ``bound_factor`` times ``concurrency`` times the lone request's time (at least 30 s), so
    a slow or busy machine is measured rather than failed. Returns the lone request's
    seconds; raises :class:`EndpointFailure` when a request fails or the bound passes.
    """
    with dataclasses.replace(target, timeout_s=WARM_UP_TIMEOUT_S).client() as client:
        lone = send(client, Request((images[0],)))
    if lone.error is not None:
        raise EndpointFailure(f"{target.model_name}: a warm-up request failed: {lone.detail}")
    single_s = lone.latency_s
    bound_s = max(30.0, bound_factor * concurrency * single_s)
    pending = [Request((images[i % len(images)],)) for i in range(concurrency)]
    answers: list[Answer] = []
    # The client's timeout is the bound: a request unanswered by then fails with it.
    with dataclasses.replace(target, timeout_s=bound_s).client(concurrency) as client:
        started = clock()
        drive(
            client,
            lambda: pending.pop() if pending else None,
            lambda _, answer: answers.append(answer),
            concurrency=concurrency,
        )
    failed = [answer for answer in answers if answer.error is not None]
    unanswered = [answer for answer in failed if answer.done_s - started >= bound_s]
    if unanswered:
        raise EndpointFailure(
            f"{target.model_name}: {len(unanswered)} of {concurrency} warm-up requests unanswered after {bound_s:.0f} s "
            f"(one request alone took {single_s:.2f} s)"
        )
    if failed:
        raise EndpointFailure(f"{target.model_name}: a warm-up request failed: {failed[0].detail}")
    return single_s
