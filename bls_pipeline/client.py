"""A client for the ``classifier`` endpoint: sends images in either input form, over gRPC or HTTP.

Example::

    client = ClassifierClient("127.0.0.1:8001")                  # DEFAULT_PROTOCOL, DEFAULT_FORM
    for prediction in client.classify([Path("cat.jpg").read_bytes()], top_k=3):
        print(prediction.labels[0], prediction.scores[0])
    ClassifierClient("http://127.0.0.1:8000", form="padded")     # a URL's scheme names its protocol

The form is how the images travel (``contract.FORMS``): ``"bytes"`` sends each file as one
element of ``IMAGE_BYTES``, unpadded; ``"padded"`` sends zero-padded ``IMAGE`` rows. The
protocol is ``"grpc"`` (``tritonclient.grpc``, one channel that multiplexes every request in
flight) or ``"http"`` (``tritonclient.http``: built on gevent, so a client object must stay
on one thread; for concurrency it uses the client's own connection pool).
"""

from __future__ import annotations

import importlib
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from bls_pipeline import contract
from bls_pipeline.errors import BlsPipelineError
from bls_pipeline.request.padding import pad_batch

MODEL_NAME = contract.CLASSIFIER
OUTPUT_NAMES = tuple(spec.name for spec in contract.CLASSIFIER_OUTPUTS)
PROTOCOLS = ("grpc", "http")
FORMS = tuple(contract.FORMS)
# Triton's default ports: where a client given no URL looks.
DEFAULT_PORTS = {"grpc": 8001, "http": 8000}
# What a URL's scheme says about its protocol (tritonclient itself takes host:port only).
_SCHEMES = {"http://": "http", "https://": "http", "grpc://": "grpc"}

# Chosen by the GPU measurement in docs/performance.md (one H100, the project's client as load
# generator): unpadded IMAGE_BYTES over gRPC was the fastest form at every request size
# (32 images per request, 8 in flight: 6,229 images/s against 5,429 padded and 5,995 over
# HTTP; 8 per request: 4,621 against 3,547 padded and 2,701 over HTTP), and it sends
# 3.7 MB instead of 13.8 MB for 32 photographs of ImageNet's spread of sizes.
DEFAULT_FORM = contract.BYTES_FORM
DEFAULT_PROTOCOL = "grpc"
# The classifier's best point on one H200 (docs/measurements/2026-12-01-h200.md, the client
# as load generator, one server): 64 images per request with 8 in flight, 10,624 images/s at
# p99 68 ms, against 9,525 for 32 x 16 and 9,653 for 16 x 32 (32 x 8: 9,211-9,451). The
# client never sends more per request than the model's max_batch_size.
DEFAULT_IMAGES_PER_REQUEST = 64
DEFAULT_REQUESTS_IN_FLIGHT = 8


# How long a request refused with UNAVAILABLE (the server's queue is full, the request waited
# past the queue timeout, or the server is stopping) is retried before the client gives up.
DEFAULT_RETRY_DEADLINE_S = 30.0


class ClientError(BlsPipelineError):
    """The server is unreachable, the model is not ready, or it refused a request.

    ``status`` is the server's status of a refused request where there is one: the HTTP code
    (``"400"``) or the gRPC code (``"StatusCode.INVALID_ARGUMENT"``).
    """

    def __init__(self, message: str, status: str | None = None) -> None:
        super().__init__(message)
        self.status = status


class ServerBusy(ClientError):
    """The server shed the request (``UNAVAILABLE``) and kept shedding it until the retry deadline.

    ``reason`` says why in a few words (``"queue full"``, ...).
    """

    def __init__(self, message: str, reason: str, status: str | None = None) -> None:
        super().__init__(message, status)
        self.reason = reason


@dataclass(frozen=True)
class RetryPolicy:
    """Retries of requests that the server refused with ``UNAVAILABLE``.

    Waits grow exponentially from ``first_wait_s`` to at most ``max_wait_s``, each drawn
    uniformly below its bound ("full jitter": clients shed at the same moment do not return
    together), until ``deadline_s`` after the first attempt; ``deadline_s=0`` never retries.
    """

    deadline_s: float = DEFAULT_RETRY_DEADLINE_S
    first_wait_s: float = 0.05
    max_wait_s: float = 2.0

    def __post_init__(self) -> None:
        if self.deadline_s < 0 or self.first_wait_s <= 0 or self.max_wait_s < self.first_wait_s:
            raise ClientError(f"invalid retry policy {self}: deadline >= 0, 0 < first wait <= max wait")

    def waits(self, rng: random.Random) -> Iterator[float]:
        """The jittered waits before each retry, without end (the deadline stops them)."""
        bound = self.first_wait_s
        while True:
            yield rng.uniform(0.0, bound)
            bound = min(bound * 2.0, self.max_wait_s)


# Triton's UNAVAILABLE refusals and what they mean to whoever sent the request.
_SHED_REASONS = {
    "Exceeds maximum queue size": "queue full",
    "Request timeout expired": "waited longer than the queue timeout",
    "Server not ready": "server stopping",
}


def is_unavailable(exc: Exception) -> bool:
    """Whether ``exc`` is Triton shedding a request: ``UNAVAILABLE`` (gRPC status, or HTTP 503)
    from a server that answered, not gRPC's own ``UNAVAILABLE`` for a server it cannot reach."""
    return _status(exc) in ("StatusCode.UNAVAILABLE", "503") and "failed to connect" not in _one_line(exc)


def shed_reason(exc: Exception) -> str:
    """Why the server shed a request, in a few words ("queue full", ...)."""
    message = _one_line(exc)
    return next((reason for marker, reason in _SHED_REASONS.items() if marker in message), message)


@dataclass(frozen=True)
class Prediction:
    """Top-k classes of one image, best first."""

    class_ids: list[int]
    scores: list[float]
    labels: list[str]


def request_failure(exc: Exception, *, attempts: int = 1, waited_s: float = 0.0) -> ClientError:
    """The :class:`ClientError` of a failed inference request, in one line.

    ``UNAVAILABLE`` (the request was shed) is a :class:`ServerBusy` that says so, with the
    ``attempts`` made over ``waited_s`` seconds.

    A model without ``IMAGE_BYTES`` (a repository built before that input, or an ensemble,
    which takes padded rows only) gets the way out named: Triton's own text says only that
    the input is unexpected.
    """
    if is_unavailable(exc):
        tried = f"{attempts} attempts over {waited_s:.1f} s" if attempts > 1 else "not retried"
        reason = shed_reason(exc)
        return ServerBusy(f"server busy: {reason}, retry later ({tried})", reason, _status(exc))
    message = _one_line(exc)
    if f"unexpected inference input '{contract.IMAGE_BYTES_INPUT}'" in message:
        message += (
            f" (this model takes no {contract.IMAGE_BYTES_INPUT}: send the padded form, form='padded' or "
            "--form padded, or rebuild the repository with tools/build_repo.py)"
        )
    return ClientError(message, _status(exc))


def _status(exc: Exception) -> str | None:
    status = getattr(exc, "status", lambda: None)()
    return None if status is None else str(status)


def _one_line(exc: Exception) -> str:
    message = str(getattr(exc, "message", lambda: None)() or exc)
    return " ".join(message.split())


def endpoint(url: str | None, protocol: str | None = None) -> tuple[str, str]:
    """``(protocol, host:port)`` of a server address.

    ``protocol`` given: it, and ``url`` must not name another one by its scheme. Not given:
    the scheme of ``url`` (``http://``, ``https://``, ``grpc://``), else :data:`DEFAULT_PROTOCOL`.
    No ``url``: 127.0.0.1 on Triton's default port for the protocol. Raises :class:`ClientError`.
    """
    scheme = next((name for prefix, name in _SCHEMES.items() if url and url.startswith(prefix)), None)
    if protocol is not None and protocol not in PROTOCOLS:
        raise ClientError(f"unknown protocol {protocol!r}: expected one of {', '.join(PROTOCOLS)}")
    if protocol is not None and scheme is not None and scheme != protocol:
        raise ClientError(f"the scheme of {url} says {scheme}, but the protocol is {protocol}")
    protocol = protocol or scheme or DEFAULT_PROTOCOL
    return protocol, host_port(url) if url else f"127.0.0.1:{DEFAULT_PORTS[protocol]}"


def host_port(url: str) -> str:
    """``host:port`` of a server URL, as ``tritonclient`` takes it: no scheme, no trailing slash."""
    for prefix in _SCHEMES:
        url = url.removeprefix(prefix)
    return url.rstrip("/")


def tritonclient_module(protocol: str) -> ModuleType:
    """``tritonclient.grpc`` or ``tritonclient.http``."""
    return importlib.import_module(f"tritonclient.{protocol}")


def _is_http(tritonclient: ModuleType) -> bool:
    return tritonclient.__name__ == "tritonclient.http"


def files_batch(images: Sequence[bytes]) -> np.ndarray:
    """The ``IMAGE_BYTES`` tensor of ``images``: an object array ``[N, 1]``, one file per element."""
    batch = np.empty((len(images), 1), dtype=object)
    for row, image in zip(batch, images):
        row[0] = bytes(image)
    return batch


def check_form(form: str) -> None:
    """Raise :class:`ClientError` unless ``form`` is one of :data:`FORMS`."""
    if form not in contract.FORMS:
        raise ClientError(f"unknown input form {form!r}: expected one of {', '.join(FORMS)}")


def image_input(tritonclient: ModuleType, images: Sequence[bytes], form: str) -> Any:
    """The endpoint's input holding ``images`` in ``form`` (``"padded"``: ``IMAGE``, ``"bytes"``:
    ``IMAGE_BYTES``), for ``tritonclient`` (``tritonclient.http`` or ``.grpc``, imported by the caller)."""
    check_form(form)
    spec = contract.FORMS[form]
    data = pad_batch(images) if form == contract.PADDED_FORM else files_batch(images)
    tensor = tritonclient.InferInput(spec.name, list(data.shape), spec.datatype)
    if _is_http(tritonclient):
        tensor.set_data_from_numpy(data, binary_data=True)
    else:
        tensor.set_data_from_numpy(data)
    return tensor


def requested_outputs(tritonclient: ModuleType) -> list:
    """The endpoint's three outputs (binary data over HTTP; gRPC has no other kind)."""
    binary = {"binary_data": True} if _is_http(tritonclient) else {}
    return [tritonclient.InferRequestedOutput(name, **binary) for name in OUTPUT_NAMES]


class ClassifierClient:
    """Classify encoded images through a Triton server's ``classifier`` model.

    ``url``: ``host:port`` or a URL whose scheme names the protocol (see :func:`endpoint`);
    ``protocol``: ``"grpc"`` or ``"http"``; ``form``: ``"bytes"`` or ``"padded"``.
    ``concurrency`` sizes the HTTP connection pool (gRPC multiplexes one channel).
    ``retry``: how a request shed with ``UNAVAILABLE`` is retried (:class:`RetryPolicy`: up to
    :data:`DEFAULT_RETRY_DEADLINE_S` seconds, jittered exponential waits); after that
    deadline the call raises :class:`ServerBusy`.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        protocol: str | None = None,
        form: str = DEFAULT_FORM,
        model_name: str = MODEL_NAME,
        concurrency: int = 1,
        timeout_s: float = 120.0,
        retry: RetryPolicy = RetryPolicy(),
    ) -> None:
        check_form(form)
        self.retry = retry
        self._rng = random.Random()
        self.protocol, self.url = endpoint(url, protocol)
        self.form = form
        self.model_name = model_name
        self._triton = tritonclient_module(self.protocol)
        if _is_http(self._triton):
            self._client = self._triton.InferenceServerClient(
                self.url, concurrency=concurrency, connection_timeout=timeout_s, network_timeout=timeout_s
            )
            self._per_call: dict[str, float] = {}
            # The wait before a retry yields to the other requests in flight on this thread.
            self._sleep: Callable[[float], None] = importlib.import_module("gevent").sleep
        else:
            # A gRPC client takes its timeout with every call instead.
            self._client = self._triton.InferenceServerClient(self.url)
            self._per_call = {"client_timeout": timeout_s}
            self._sleep = time.sleep

    def close(self) -> None:
        """Close the connections."""
        self._client.close()

    def __enter__(self) -> ClassifierClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def check_ready(self) -> None:
        """Raise :class:`ClientError` unless the server is live and the model is ready."""
        try:
            live = self._client.is_server_live(**self._per_call)
        except Exception as exc:  # noqa: BLE001 - gevent/socket/gRPC errors have no common base
            raise ClientError(
                f"cannot reach a Triton server at {self.url} ({self.protocol}): {_one_line(exc)}"
            ) from None
        if not live:
            raise ClientError(f"the Triton server at {self.url} is not live")
        try:
            ready = self._client.is_model_ready(self.model_name, **self._per_call)
        except Exception as exc:  # noqa: BLE001
            raise ClientError(f"cannot ask {self.url} about model {self.model_name!r}: {_one_line(exc)}") from None
        if not ready:
            raise ClientError(f"model {self.model_name!r} is not ready on {self.url}")

    def max_batch_size(self) -> int:
        """The endpoint's ``max_batch_size`` (the most images one request may hold)."""
        try:
            if _is_http(self._triton):
                config = self._client.get_model_config(self.model_name)
            else:
                config = self._client.get_model_config(self.model_name, as_json=True, **self._per_call)["config"]
            return int(config["max_batch_size"])
        except Exception as exc:  # noqa: BLE001
            raise ClientError(
                f"cannot read the config of {self.model_name!r} at {self.url}: {_one_line(exc)}"
            ) from None

    def _request(self, images: Sequence[bytes], top_k: int | None) -> dict[str, Any]:
        """The keyword arguments of ``infer``/``async_infer`` for one request."""
        return {
            "inputs": [image_input(self._triton, images, self.form)],
            "outputs": requested_outputs(self._triton),
            "parameters": None if top_k is None else {"top_k": top_k},
            **self._per_call,
        }

    @staticmethod
    def _parse(result) -> list[Prediction]:
        scores = result.as_numpy(contract.SCORES_OUTPUT)
        class_ids = result.as_numpy(contract.CLASS_IDS_OUTPUT)
        labels = result.as_numpy(contract.LABELS_OUTPUT)
        return [
            Prediction(
                class_ids=[int(c) for c in class_ids[i]],
                scores=[float(s) for s in scores[i]],
                labels=[label.decode() if isinstance(label, bytes) else str(label) for label in labels[i]],
            )
            for i in range(len(scores))
        ]

    def _send(self, request: dict[str, Any], wait: bool) -> Any:
        """Send one prepared request: a handle with ``get_result()``.

        ``wait`` over HTTP sends with the blocking call and returns once answered:
        ``async_infer`` yields to the event loop for 10 ms after every send, which a caller
        that waits at once need not pay.
        """
        if _is_http(self._triton):
            if wait:
                return _Answered(self._client.infer(self.model_name, **request))
            return self._client.async_infer(self.model_name, **request)
        answer = _GrpcAnswer()
        self._client.async_infer(self.model_name, callback=answer, **request)
        return answer

    def classify(self, images: Sequence[bytes], *, top_k: int | None = None) -> list[Prediction]:
        """Classify ``images`` in one request; raises :class:`ClientError` if it fails
        (:class:`ServerBusy` when it was shed until the retry deadline)."""
        return self.submit(images, top_k=top_k, wait=True).result()

    def submit(self, images: Sequence[bytes], *, top_k: int | None = None, wait: bool = False) -> PendingRequest:
        """Send ``images`` as one request; :meth:`PendingRequest.result` waits for the answer
        (and retries it while the server sheds it). ``wait``: return only once it is answered
        (cheaper over HTTP, for a caller that would wait at once)."""
        request = self._request(images, top_k)
        return PendingRequest(lambda: self._send(request, wait), self.retry, self._rng, self._sleep)

    def classify_batches(
        self, batches: Sequence[Sequence[bytes]], *, top_k: int | None = None
    ) -> list[list[Prediction] | ClientError]:
        """Send every batch as its own request, all in flight at once (over HTTP, up to the pool size).

        Returns per batch its predictions or the :class:`ClientError` of that request, so
        one refused request does not hide the others' results.
        """
        pending = [self.submit(images, top_k=top_k) for images in batches]
        results: list[list[Prediction] | ClientError] = []
        for request in pending:
            try:
                results.append(request.result())
            except ClientError as exc:
                results.append(exc)
        return results


class _Answered:
    """The handle of a request sent with the blocking call: its result is already there."""

    def __init__(self, result: Any) -> None:
        self._result = result

    def get_result(self) -> Any:
        return self._result


class _GrpcAnswer:
    """The callback of one gRPC ``async_infer``, and the wait for what it is called with.

    gRPC calls it once, on its own thread, with the result or the error (the request's
    ``client_timeout`` bounds the wait); ``get_result`` mirrors the HTTP client's handle.
    """

    def __init__(self) -> None:
        self._done = threading.Event()
        self._result: Any = None
        self._error: Exception | None = None

    def __call__(self, result: Any, error: Exception | None) -> None:
        self._result, self._error = result, error
        self._done.set()

    def get_result(self) -> Any:
        self._done.wait()
        if self._error is not None:
            raise self._error
        return self._result


class PendingRequest:
    """A request in flight, read once with :meth:`result`.

    ``send`` sends it (again) and returns a handle with ``get_result()`` (``tritonclient.http``'s
    async handle or a :class:`_GrpcAnswer`); it is sent once here, and again by
    :meth:`result` after each ``UNAVAILABLE`` while ``retry`` allows, ``sleep`` waiting in
    between (gevent's over HTTP, so that the other requests of the thread go on meanwhile).
    ``attempts`` counts the sends.
    """

    def __init__(
        self,
        send: Callable[[], Any],
        retry: RetryPolicy,
        rng: random.Random,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._send = send
        self._retry = retry
        self._rng = rng
        self._sleep = sleep
        # Sends so far: more than one once the server shed it and it was sent again.
        self.attempts = 1
        self._started = time.monotonic()
        self._handle: Any = None
        self._error: Exception | None = None
        self._start()

    def _start(self) -> None:
        try:
            self._handle = self._send()
        except Exception as exc:  # noqa: BLE001 - gevent/socket/gRPC errors have no common base
            self._handle, self._error = None, exc

    def _answer(self) -> Any:
        if self._error is not None:
            raise self._error
        return self._handle.get_result()

    def result(self) -> list[Prediction]:
        """Wait for the answer; raises :class:`ClientError` if the request failed."""
        waits = self._retry.waits(self._rng)
        while True:
            try:
                return ClassifierClient._parse(self._answer())
            except Exception as exc:  # noqa: BLE001 - gevent/socket/gRPC/server errors have no common base
                elapsed = time.monotonic() - self._started
                wait = next(waits)
                if not is_unavailable(exc) or elapsed + wait > self._retry.deadline_s:
                    raise request_failure(exc, attempts=self.attempts, waited_s=elapsed) from None
            self._sleep(wait)
            self.attempts += 1
            self._error = None
            self._start()


def single_image_reason(error: ClientError) -> str:
    """Why the server refused a one-image request, without the status and ``image 0:`` prefixes.

    ``image 0: not an image (...)`` becomes ``not an image (...)``: for a file sent alone the
    index says nothing.
    """
    message = str(error)
    for prefix in ("[400] ", "[StatusCode.INVALID_ARGUMENT] "):
        message = message.removeprefix(prefix)
    return message.removeprefix("image 0: ")
