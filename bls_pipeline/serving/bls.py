"""The one BLS helper: every call from the classifier to a sub-model, its error check, and
every failed response with its log line.

Tensors stay where the next model wants them: :func:`call_model` asks for its output in GPU
memory when the caller will hand it to another model on a GPU
(``preferred_memory``), and :func:`as_input` passes such a tensor on without copying it
(only its name changes, through DLPack). Only the logits come to the host
(:func:`host_array`). A sub-model's failure becomes :class:`SubModelError`, naming the model
and whether an image is to blame (:mod:`bls_pipeline.request.faults`).

This module imports only numpy and ``bls_pipeline``'s light modules: the classifier runs in
the NVIDIA Triton container, where torch and DALI are not installed.

Example (inside a Python-backend model)::

    batch = call_model("preprocessing", {"DALI_INPUT": rows}, "DALI_OUTPUT", gpu_id=0)   # stays on GPU 0
    logits = host_array("efficientnet-b0", call_model("efficientnet-b0", {"INPUT": batch}, "OUTPUT"))
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from bls_pipeline.errors import BlsPipelineError, InvalidImageError, InvalidRequestError, SubModelError
from bls_pipeline.request.faults import blames_input, is_system_fault, summarize_dali_error


def as_input(name: str, value: Any) -> Any:
    """``value`` as a request input called ``name``: a numpy array, or a ``pb_utils.Tensor``
    that is passed on where it lives (a GPU tensor is renamed through DLPack, not copied)."""
    if isinstance(value, np.ndarray):
        return pb_utils.Tensor(name, value)
    if value.name() == name:
        return value
    if value.is_cpu():
        return pb_utils.Tensor(name, value.as_numpy())
    return pb_utils.Tensor.from_dlpack(name, value.to_dlpack())


def _preferred_memory(gpu_id: int | None) -> Any:
    if gpu_id is None:
        return pb_utils.PreferredMemory(pb_utils.TRITONSERVER_MEMORY_CPU, 0)
    return pb_utils.PreferredMemory(pb_utils.TRITONSERVER_MEMORY_GPU, gpu_id)


def call_model(model_name: str, inputs: Mapping[str, Any], output_name: str, *, gpu_id: int | None = None) -> Any:
    """Run one BLS request on ``model_name`` and return its output ``pb_utils.Tensor``.

    ``inputs`` are numpy arrays or tensors (see :func:`as_input`). The output is asked for in
    the memory of GPU ``gpu_id``, or in host memory when ``gpu_id`` is ``None``. Raises
    :class:`SubModelError` naming the model; the full error text is logged.
    """
    request = pb_utils.InferenceRequest(
        model_name=model_name,
        inputs=[as_input(name, value) for name, value in inputs.items()],
        requested_output_names=[output_name],
        preferred_memory=_preferred_memory(gpu_id),
    )
    try:
        response = request.exec()
    except pb_utils.TritonModelException as exc:
        # The BLS call itself failed (the model is unloaded or restarting): the server's fault.
        log_error(f"{model_name} failed: {exc}")
        raise SubModelError(model_name, str(exc)) from None
    if response.has_error():
        error = response.error()
        message = error.message()
        invalid = not is_system_fault(message) and (
            error.code() == pb_utils.TritonError.INVALID_ARG or blames_input(message)
        )
        if not invalid:
            log_error(f"{model_name} failed: {message}")
        raise SubModelError(model_name, message, invalid_input=invalid)
    output = pb_utils.get_output_tensor_by_name(response, output_name)
    if output is None:
        raise SubModelError(model_name, f"response has no output {output_name!r}")
    return output


def host_array(model_name: str, tensor: Any) -> np.ndarray:
    """The host array of an output that was asked for in host memory."""
    if not tensor.is_cpu():
        raise SubModelError(model_name, f"returned {tensor.name()} in GPU memory where host memory was asked for")
    return tensor.as_numpy()


def log_error(message: str) -> None:
    """The full text of a failure, for the server log (clients get one line)."""
    pb_utils.Logger.log_error(message)


def error_response(error: BlsPipelineError | Exception) -> Any:
    """A failed response in one line: ``INVALID_ARG`` for bad input, ``INTERNAL`` for everything else."""
    if isinstance(error, (InvalidImageError, InvalidRequestError)):
        return pb_utils.InferenceResponse(error=pb_utils.TritonError(str(error), pb_utils.TritonError.INVALID_ARG))
    if isinstance(error, SubModelError):
        line = f"{error.model_name}: {summarize_dali_error(error.message)}"
    else:
        line = " ".join(str(error).split())
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(line, pb_utils.TritonError.INTERNAL))
