"""The exceptions of ``bls_pipeline``: one flat tree under :class:`BlsPipelineError`.

Each maps to a one-line message for a user; a client of the ``classifier`` endpoint sees
:class:`InvalidImageError` and :class:`InvalidRequestError` as ``INVALID_ARG`` errors.
"""

from __future__ import annotations


class BlsPipelineError(Exception):
    """Base of every error this package raises on purpose."""


class InvalidImageError(BlsPipelineError):
    """An image of a request cannot be classified (empty, not an image, too large, ...)."""

    def __init__(self, index: int, reason: str) -> None:
        super().__init__(f"image {index}: {reason}")
        self.index = index
        self.reason = reason


class InvalidRequestError(BlsPipelineError):
    """A request is malformed as a whole (wrong dtype or rank, bad ``top_k``, too large)."""


class CheckpointError(BlsPipelineError):
    """A checkpoint cannot be loaded safely or does not match the architecture."""


class ExportError(BlsPipelineError):
    """Exporting the network (ONNX, TensorRT) failed or its output disagrees with torch."""


class ConfigError(BlsPipelineError):
    """A model configuration or repository is invalid or inconsistent."""


class SubModelError(BlsPipelineError):
    """A BLS call to a sub-model failed; the message names the sub-model.

    ``invalid_input`` is true when the sub-model refused its input (``INVALID_ARG``: an image
    that does not decode), false when the sub-model itself failed (a dead stub, a crash).
    """

    def __init__(self, model_name: str, message: str, *, invalid_input: bool = False) -> None:
        super().__init__(f"{model_name}: {message}")
        self.model_name = model_name
        self.message = message
        self.invalid_input = invalid_input


class ServerError(BlsPipelineError):
    """The local Triton server could not be started, reached or stopped cleanly."""


class BackendBuildError(BlsPipelineError):
    """Triton's native DALI or ONNX Runtime backend could not be built or installed."""


class CapacityError(BlsPipelineError):
    """A benchmark file lacks what a capacity plan needs, or no measured point meets the target."""


class BenchError(BlsPipelineError):
    """The benchmark cannot run: no images, no repository, bad options."""


class EndpointFailure(BenchError, ServerError):
    """A measured endpoint failed a request or answered none: the server's fault, so the
    tools exit with the server's code (``ExitCode.SERVER``), not the input's."""
