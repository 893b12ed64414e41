"""A client for the ``classifier`` endpoint: pads images into one request, sends, parses.

Example::

    client = ClassifierClient("127.0.0.1:8000")
    for prediction in client.classify([Path("cat.jpg").read_bytes()], top_k=3):
        print(prediction.labels[0], prediction.scores[0])

``tritonclient.http`` is built on gevent and a client object must stay on one thread; for
concurrency this class uses the client's own connection pool (``async_infer``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from bls_pipeline import contract
from bls_pipeline.errors import BlsPipelineError
from bls_pipeline.request.padding import pad_batch

MODEL_NAME = contract.CLASSIFIER
OUTPUT_NAMES = tuple(spec.name for spec in contract.CLASSIFIER_OUTPUTS)


class ClientError(BlsPipelineError):
    """The server is unreachable, the model is not ready, or it refused a request."""


@dataclass(frozen=True)
class Prediction:
    """Top-k classes of one image, best first."""

    class_ids: list[int]
    scores: list[float]
    labels: list[str]


def _one_line(exc: Exception) -> str:
    message = str(getattr(exc, "message", lambda: None)() or exc)
    return " ".join(message.split())


def image_input(httpclient, batch: np.ndarray):
    """The ``IMAGE`` input of a zero-padded ``[N, L]`` uint8 batch, for ``httpclient``
    (the ``tritonclient.http`` module, imported by the caller)."""
    tensor = httpclient.InferInput(contract.IMAGE.name, list(batch.shape), contract.IMAGE.datatype)
    tensor.set_data_from_numpy(batch, binary_data=True)
    return tensor


def requested_outputs(httpclient) -> list:
    """The endpoint's three outputs, requested as binary data."""
    return [httpclient.InferRequestedOutput(name, binary_data=True) for name in OUTPUT_NAMES]


def host_port(url: str) -> str:
    """``host:port`` of a server URL, as ``tritonclient.http`` takes it: no scheme, no trailing slash."""
    return url.removeprefix("http://").removeprefix("https://").rstrip("/")


class ClassifierClient:
    """Classify encoded images through a Triton server's ``classifier`` model over HTTP."""

    def __init__(
        self,
        url: str = "127.0.0.1:8000",
        *,
        model_name: str = MODEL_NAME,
        concurrency: int = 1,
        timeout_s: float = 120.0,
    ) -> None:
        import tritonclient.http as httpclient

        self._http = httpclient
        self.url = host_port(url)
        self.model_name = model_name
        self._client = httpclient.InferenceServerClient(
            self.url, concurrency=concurrency, connection_timeout=timeout_s, network_timeout=timeout_s
        )

    def close(self) -> None:
        """Close the connection pool."""
        self._client.close()

    def __enter__(self) -> "ClassifierClient":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def check_ready(self) -> None:
        """Raise :class:`ClientError` unless the server is live and the model is ready."""
        try:
            live = self._client.is_server_live()
        except Exception as exc:  # noqa: BLE001 - gevent/socket errors have no common base
            raise ClientError(f"cannot reach a Triton server at {self.url}: {_one_line(exc)}") from None
        if not live:
            raise ClientError(f"the Triton server at {self.url} is not live")
        try:
            ready = self._client.is_model_ready(self.model_name)
        except Exception as exc:  # noqa: BLE001
            raise ClientError(f"cannot ask {self.url} about model {self.model_name!r}: {_one_line(exc)}") from None
        if not ready:
            raise ClientError(f"model {self.model_name!r} is not ready on {self.url}")

    def max_batch_size(self) -> int:
        """The endpoint's ``max_batch_size`` (the most images one request may hold)."""
        try:
            return int(self._client.get_model_config(self.model_name)["max_batch_size"])
        except Exception as exc:  # noqa: BLE001
            raise ClientError(f"cannot read the config of {self.model_name!r} at {self.url}: {_one_line(exc)}") from None

    def _request(self, images: Sequence[bytes]) -> tuple[list, list]:
        return [image_input(self._http, pad_batch(images))], requested_outputs(self._http)

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

    @staticmethod
    def _parameters(top_k: int | None) -> dict | None:
        return None if top_k is None else {"top_k": top_k}

    def classify(self, images: Sequence[bytes], *, top_k: int | None = None) -> list[Prediction]:
        """Classify ``images`` in one request; raises :class:`ClientError` if it fails."""
        inputs, outputs = self._request(images)
        try:
            result = self._client.infer(self.model_name, inputs, outputs=outputs, parameters=self._parameters(top_k))
        except Exception as exc:  # noqa: BLE001
            raise ClientError(_one_line(exc)) from None
        return self._parse(result)

    def submit(self, images: Sequence[bytes], *, top_k: int | None = None) -> "PendingRequest":
        """Send ``images`` as one request without waiting; :meth:`PendingRequest.result` waits."""
        inputs, outputs = self._request(images)
        try:
            handle = self._client.async_infer(
                self.model_name, inputs, outputs=outputs, parameters=self._parameters(top_k)
            )
        except Exception as exc:  # noqa: BLE001
            raise ClientError(_one_line(exc)) from None
        return PendingRequest(handle)

    def classify_batches(
        self, batches: Sequence[Sequence[bytes]], *, top_k: int | None = None
    ) -> list[list[Prediction] | ClientError]:
        """Send every batch as its own request, all in flight at once (up to the pool size).

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


class PendingRequest:
    """A request in flight (``tritonclient``'s async handle), read once with :meth:`result`."""

    def __init__(self, handle) -> None:
        self._handle = handle

    def result(self) -> list[Prediction]:
        """Wait for the answer; raises :class:`ClientError` if the request failed."""
        try:
            return ClassifierClient._parse(self._handle.get_result())
        except Exception as exc:  # noqa: BLE001 - gevent/socket/server errors have no common base
            raise ClientError(_one_line(exc)) from None


def single_image_reason(error: ClientError) -> str:
    """Why the server refused a one-image request, without the status and ``image 0:`` prefixes.

    ``image 0: not an image (...)`` becomes ``not an image (...)``: for a file sent alone the
    index says nothing.
    """
    message = str(error)
    for prefix in ("[400] ", "[StatusCode.INVALID_ARGUMENT] "):
        message = message.removeprefix(prefix)
    return message.removeprefix("image 0: ")
