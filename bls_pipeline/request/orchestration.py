"""The classifier's logic, free of Triton: validate requests, batch images, classify, answer.

``classifier/1/model.py`` adapts this to the Python backend; the tests and the benchmark
drive the same code in process with real DALI and a real network.

Example (in process)::

    settings = ClassifierSettings(max_batch_size=64)
    classify = Orchestrator(preprocess=dali_on_rows, infer=network, max_batch_size=64)  # rows -> handle -> logits
    request = prepare_request(padded_rows, top_k="3", settings=settings, num_classes=1000)
    request = prepare_request(encoded=files, top_k=None, settings=settings, num_classes=1000)   # IMAGE_BYTES [N, 1]
    results = classify(request.images)          # per image: logits or an InvalidImageError
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bls_pipeline.contract import IMAGE_BYTES_INPUT, IMAGE_INPUT
from bls_pipeline.errors import BlsPipelineError, InvalidImageError, InvalidRequestError, SubModelError
from bls_pipeline.request.faults import failed_sample, summarize_dali_error
from bls_pipeline.request.image_header import ImageHeaderError, check_image
from bls_pipeline.request.padding import pad_batch, trim_padding
from bls_pipeline.request.postprocess import map_labels, parse_top_k, softmax, top_k

LOGGER = logging.getLogger(__name__)

DEFAULT_MAX_IMAGE_BYTES = 16 * 1024 * 1024
# 40 megapixels: a 7680x5120 photograph decodes to 118 MB of RGB; more is refused unread.
DEFAULT_MAX_IMAGE_PIXELS = 40_000_000
DEFAULT_TOP_K = 5


@dataclass(frozen=True)
class ClassifierSettings:
    """Limits and defaults of the endpoint, read from the ``classifier`` config parameters."""

    max_batch_size: int
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    default_top_k: int = DEFAULT_TOP_K
    # The whole IMAGE tensor (padding included) or the sum of IMAGE_BYTES' files; None:
    # max_batch_size full-size images. Checked before any image is read, so megabytes of
    # padding cost nothing.
    max_request_bytes: int | None = None

    def __post_init__(self) -> None:
        for name in ("max_batch_size", "max_image_bytes", "max_image_pixels", "default_top_k"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_request_bytes is not None and self.max_request_bytes < 1:
            raise ValueError(f"max_request_bytes must be at least 1, got {self.max_request_bytes}")

    @property
    def request_byte_limit(self) -> int:
        """The most bytes one request's ``IMAGE`` tensor may hold (padding included), or its ``IMAGE_BYTES`` files together."""
        if self.max_request_bytes is not None:
            return self.max_request_bytes
        return self.max_batch_size * self.max_image_bytes

    @classmethod
    def from_parameters(cls, parameters: Mapping[str, str], *, max_batch_size: int) -> ClassifierSettings:
        """Settings from config ``parameters`` (strings); absent keys keep their defaults."""
        known = ("max_image_bytes", "max_image_pixels", "default_top_k", "max_request_bytes")
        return cls(
            max_batch_size=max_batch_size,
            **{key: int(parameters[key]) for key in known if key in parameters},
        )


@dataclass
class PreparedRequest:
    """The trimmed, validated images of one request and its ``top_k``."""

    images: list[bytes]
    top_k: int


def prepare_request(
    rows: np.ndarray | None = None,
    *,
    encoded: np.ndarray | None = None,
    top_k: object,
    settings: ClassifierSettings,
    num_classes: int,
) -> PreparedRequest:
    """Validate one request's images and ``top_k``; return the images without padding.

    The request carries exactly one of the contract's two forms: ``rows``, the ``IMAGE``
    tensor (uint8 ``[N, L]``, every row's padding trimmed), or ``encoded``, the
    ``IMAGE_BYTES`` tensor (a ``[N, 1]`` object array of ``bytes``, one file each, taken as
    they are). Either way the image count and the tensor's bytes are checked before any image
    is read, then every image's header. Raises :class:`InvalidRequestError` for the request as
    a whole and :class:`InvalidImageError` naming the first bad image.
    """
    if (rows is None) == (encoded is None):
        given = "both" if rows is not None else "neither"
        raise InvalidRequestError(
            f"a request carries exactly one of the inputs {IMAGE_INPUT} or {IMAGE_BYTES_INPUT}, got {given}"
        )
    images = _padded_images(rows, settings) if rows is not None else _encoded_images(encoded, settings)
    k = parse_top_k(top_k, num_classes, default=settings.default_top_k)
    checked = []
    for index, image in enumerate(images):
        try:
            check_image(image, max_bytes=settings.max_image_bytes, max_pixels=settings.max_image_pixels)
        except ImageHeaderError as exc:
            raise InvalidImageError(index, str(exc)) from None
        checked.append(image)
    return PreparedRequest(images=checked, top_k=k)


def _check_count(count: int, settings: ClassifierSettings) -> None:
    if count > settings.max_batch_size:
        raise InvalidRequestError(f"request holds {count} images, over the max batch size of {settings.max_batch_size}")


def _check_bytes(name: str, size: int, shape: Sequence[int], settings: ClassifierSettings) -> None:
    if size > settings.request_byte_limit:
        raise InvalidRequestError(
            f"{name} is {size} bytes (shape {list(shape)}), over the limit of {settings.request_byte_limit} bytes per request"
        )


def _padded_images(rows: np.ndarray, settings: ClassifierSettings) -> Iterator[bytes]:
    """The trimmed rows of an ``IMAGE`` tensor, lazily, once its shape and size are checked."""
    if rows.dtype != np.uint8:
        raise InvalidRequestError(f"{IMAGE_INPUT} must be UINT8, got {rows.dtype}")
    if rows.ndim != 2:
        raise InvalidRequestError(f"{IMAGE_INPUT} must have shape [batch, bytes], got {list(rows.shape)}")
    _check_count(rows.shape[0], settings)
    _check_bytes(IMAGE_INPUT, rows.nbytes, rows.shape, settings)
    return (trim_padding(row) for row in rows)


def _encoded_images(encoded: np.ndarray, settings: ClassifierSettings) -> list[bytes]:
    """The files of an ``IMAGE_BYTES`` tensor, once its shape, count and total size are checked.

    The total comes from the elements' lengths alone: no file is read before it is known to
    fit. An empty element is left for :func:`check_image`, which calls it an empty image, as
    it does an all-zero padded row.
    """
    if encoded.ndim != 2 or encoded.shape[1] != 1:
        raise InvalidRequestError(f"{IMAGE_BYTES_INPUT} must have shape [batch, 1], got {list(encoded.shape)}")
    _check_count(encoded.shape[0], settings)
    files = list(encoded[:, 0])
    if not all(isinstance(data, bytes) for data in files):
        raise InvalidRequestError(f"{IMAGE_BYTES_INPUT} must hold BYTES elements, got {encoded.dtype}")
    _check_bytes(IMAGE_BYTES_INPUT, sum(map(len, files)), encoded.shape, settings)
    return files


@dataclass
class Orchestrator:
    """Preprocess and infer many images as few large batches, isolating bad images.

    ``preprocess`` takes a zero-padded ``[N, L]`` uint8 batch and returns the preprocessed
    batch of those ``N`` images as an opaque handle (a host array, or a tensor that stays in
    GPU memory); ``infer`` takes such a handle and returns host logits ``[N, C]``. The
    orchestrator never reads, stacks or slices a handle: it only counts images and hands the
    handle on, so that a GPU batch never comes to the host. Both raise
    :class:`SubModelError` on failure.

    When preprocessing refuses a batch because an image does not decode, the batch is split
    until the bad images are found (:meth:`_isolate`), then the good ones are preprocessed once
    more as one batch where they were found in several parts (stacking handles would need
    their memory). When the sub-model itself fails (a dead stub, a CUDA error: see
    :mod:`bls_pipeline.request.faults`), every image of the batch fails with that error:
    retrying would only blame the images, and slowly.
    """

    preprocess: Callable[[np.ndarray], Any]
    infer: Callable[[Any], np.ndarray]
    max_batch_size: int

    def __call__(self, images: Sequence[bytes]) -> list[np.ndarray | BlsPipelineError]:
        """Logits ``[C]`` for each image, or the error that image caused."""
        results: list[np.ndarray | BlsPipelineError] = []
        for start in range(0, len(images), self.max_batch_size):
            results.extend(self._classify_chunk(images[start : start + self.max_batch_size]))
        return results

    def _classify_chunk(self, images: Sequence[bytes]) -> list[np.ndarray | BlsPipelineError]:
        results: list[np.ndarray | BlsPipelineError | None] = [None] * len(images)
        batch, good = self._preprocess_isolated(images, results)
        if not good:
            return results  # type: ignore[return-value]
        try:
            logits = self.infer(batch)
        except BlsPipelineError as exc:
            _fail_undecided(results, _detached(exc))
            return results  # type: ignore[return-value]
        for row, i in enumerate(good):
            results[i] = logits[row]
        return results  # type: ignore[return-value]

    def _preprocess(self, images: Sequence[bytes]) -> tuple[Any, SubModelError | None]:
        """The preprocessed batch of ``images``, or the error preprocessing raised instead."""
        try:
            return self.preprocess(pad_batch(images)), None
        except SubModelError as exc:
            return None, _detached(exc)

    def _preprocess_isolated(
        self, images: Sequence[bytes], results: list[np.ndarray | BlsPipelineError | None]
    ) -> tuple[Any, list[int]]:
        """The preprocessed batch of the images that decode, and their indices; errors go into ``results``."""
        batch, failure = self._preprocess(images)
        if failure is None:
            return batch, list(range(len(images)))
        if not failure.invalid_input:
            _fail_undecided(results, failure)
            return None, []
        if len(images) > 1:
            LOGGER.info("preprocessing a batch of %d failed (%s): finding the bad images", len(images), failure)
        return self._isolate(images, failure, results)

    def _isolate(
        self, images: Sequence[bytes], failure: SubModelError, results: list[np.ndarray | BlsPipelineError | None]
    ) -> tuple[Any, list[int]]:
        """Split the failed batch until every group either decodes or is one bad image.

        A group that failed is split around the sample DALI's error names (the rest, then that
        image alone), or in halves when it names none: one bad image among 64 costs three calls,
        not 65. The larger part goes first because DALI rebuilds its pipeline after a failure
        and a mixed decoder sizes its hardware share from the first batch it runs. The groups
        that decoded are preprocessed again as one batch, unless one group holds them all.
        """
        pending = [(list(range(len(images))), failure)]
        decoded: list[list[int]] = []
        # The handle of the only group decoded so far; dropped once a second one decodes (only
        # one batch's memory is held at a time).
        kept: Any = None
        while pending:
            group, error = pending.pop()
            if len(group) == 1:
                results[group[0]] = _image_error(error)
                continue
            suspect = failed_sample(error.message, len(group))
            if suspect is None:
                parts = [group[: len(group) // 2], group[len(group) // 2 :]]
            else:
                parts = [group[:suspect] + group[suspect + 1 :], [group[suspect]]]
            for part in parts:
                handle, error = self._preprocess([images[i] for i in part])
                if error is None:
                    decoded.append(part)
                    kept = handle if len(decoded) == 1 else None
                elif error.invalid_input:
                    pending.append((part, error))
                else:
                    # The sub-model failed: no image is to blame, and none can be preprocessed.
                    _fail_undecided(results, error)
                    return None, []
        if len(decoded) == 1:
            return kept, decoded[0]
        good = sorted(i for part in decoded for i in part)
        if not good:
            return None, []
        batch, error = self._preprocess([images[i] for i in good])
        if error is None:
            return batch, good
        _fail_undecided(results, error)
        return None, []


def _fail_undecided(results: list[np.ndarray | BlsPipelineError | None], error: BlsPipelineError) -> None:
    """``error`` for every image of the chunk whose result is not known yet (the bad images
    found so far keep their own)."""
    for i, result in enumerate(results):
        if result is None:
            results[i] = error


def _detached(error: BlsPipelineError) -> BlsPipelineError:
    """``error`` without its traceback, to be kept as a result: the traceback holds the frames
    it passed through, the BLS call's request and response tensors (shared memory) among them,
    alive until the garbage collector finds the cycle through the results that hold it."""
    return error.with_traceback(None)


def _image_error(exc: SubModelError) -> InvalidImageError:
    # Index 0 is a placeholder: request_error() re-indexes errors within each request.
    return InvalidImageError(0, f"cannot be decoded ({exc.model_name}: {summarize_dali_error(exc.message)})")


@dataclass
class Classification:
    """The endpoint's outputs for one request: ``[N, K]`` each, and the full ``[N, C]`` softmax."""

    scores: np.ndarray
    class_ids: np.ndarray
    labels: np.ndarray
    probabilities: np.ndarray


def classify_request(logits: np.ndarray, k: int, labels: Sequence[str] | np.ndarray) -> Classification:
    """Softmax, top-k and label names for the ``[N, C]`` logits of one request."""
    probabilities = softmax(logits)
    scores, class_ids = top_k(probabilities, k)
    return Classification(
        scores=scores, class_ids=class_ids, labels=map_labels(class_ids, labels), probabilities=probabilities
    )


def request_error(results: Sequence[np.ndarray | BlsPipelineError]) -> BlsPipelineError | None:
    """The first failure among one request's image results, re-indexed within the request."""
    for index, result in enumerate(results):
        if isinstance(result, InvalidImageError):
            return InvalidImageError(index, result.reason)
        if isinstance(result, BlsPipelineError):
            return result
    return None
