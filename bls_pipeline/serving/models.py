"""The only module that talks to the Python backend (``triton_python_backend_utils``).

The classes here implement the Python backend's ``TritonPythonModel`` interface
(``initialize(args)``, ``execute(requests)``), so each ``model.py`` of the repository is one
import: :class:`ClassifierModel` (the BLS endpoint), :class:`PreprocessingModel` (DALI
hosted in Python, ``--target local``) and :class:`NetworkModel` (TensorRT or ONNX Runtime
hosted in Python, ``--target local``). :func:`call_model` performs every BLS call and its error check.

This module imports only numpy and ``bls_pipeline``'s light modules at import time, because
the classifier runs in the NVIDIA Triton container where torch and DALI are not installed.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import triton_python_backend_utils as pb_utils

from bls_pipeline.request.orchestration import (
    ClassifierSettings,
    Orchestrator,
    blames_input,
    classify_request,
    summarize_dali_error,
    prepare_request,
    request_error,
)
from bls_pipeline.errors import BlsPipelineError, InvalidImageError, InvalidRequestError, SubModelError
from bls_pipeline.request.postprocess import load_labels
from bls_pipeline.runtime.device import GPU, device_of_instance_kind

LOGGER = logging.getLogger(__name__)

# Names of the contract; duplicated from model_config on purpose: that module needs
# tritonclient's protobufs, which the NVIDIA Triton container does not have.
IMAGE_INPUT, SCORES_OUTPUT, CLASS_IDS_OUTPUT, LABELS_OUTPUT = "IMAGE", "SCORES", "CLASS_IDS", "LABELS"
DALI_INPUT, DALI_OUTPUT = "DALI_INPUT", "DALI_OUTPUT"
NETWORK_INPUT, NETWORK_OUTPUT = "INPUT", "OUTPUT"


def call_model(model_name: str, inputs: dict[str, np.ndarray], output_name: str) -> np.ndarray:
    """Run one BLS request on ``model_name`` and return one output; errors name the model."""
    request = pb_utils.InferenceRequest(
        model_name=model_name,
        inputs=[pb_utils.Tensor(name, array) for name, array in inputs.items()],
        requested_output_names=[output_name],
    )
    response = request.exec()
    if response.has_error():
        error = response.error()
        invalid = error.code() == pb_utils.TritonError.INVALID_ARG or blames_input(error.message())
        raise SubModelError(model_name, error.message(), invalid_input=invalid)
    output = pb_utils.get_output_tensor_by_name(response, output_name)
    if output is None:
        raise SubModelError(model_name, f"response has no output {output_name!r}")
    return output.as_numpy()


def error_response(error: BlsPipelineError | Exception) -> Any:
    """A failed response: ``INVALID_ARG`` for bad input, ``INTERNAL`` for everything else."""
    if isinstance(error, (InvalidImageError, InvalidRequestError)):
        return pb_utils.InferenceResponse(error=pb_utils.TritonError(str(error), pb_utils.TritonError.INVALID_ARG))
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(str(error), pb_utils.TritonError.INTERNAL))


def _parameters(model_config: dict) -> dict[str, str]:
    return {key: value["string_value"] for key, value in model_config.get("parameters", {}).items()}


def _device(args: dict) -> str:
    """The instance's device: its kind, which the build wrote from the repository's device."""
    return device_of_instance_kind(args.get("model_instance_kind", "CPU"))


def _gpu_id(args: dict) -> int:
    return int(args.get("model_instance_device_id", 0))


def _version_dir(args: dict) -> Path:
    return Path(args["model_repository"]) / args["model_version"]


def _input(request: Any, name: str) -> np.ndarray:
    return pb_utils.get_input_tensor_by_name(request, name).as_numpy()


def request_top_k(request: Any) -> object:
    """The request's ``top_k`` parameter as the client sent it; ``None`` when absent."""
    return json.loads(request.parameters() or "{}").get("top_k")


def classification_response(logits: np.ndarray, k: int, labels: Sequence[str]) -> Any:
    """The endpoint's answer to one request: ``SCORES``, ``CLASS_IDS``, ``LABELS`` of its logits."""
    outputs = classify_request(logits, k, labels)
    return pb_utils.InferenceResponse(
        output_tensors=[
            pb_utils.Tensor(SCORES_OUTPUT, outputs.scores),
            pb_utils.Tensor(CLASS_IDS_OUTPUT, outputs.class_ids),
            pb_utils.Tensor(LABELS_OUTPUT, outputs.labels),
        ]
    )


class ClassifierModel:
    """The ``classifier`` endpoint: trims, validates, batches, calls the sub-models, answers."""

    def initialize(self, args: dict) -> None:
        """Set up from the Python backend's ``args`` (called once per model instance)."""
        config = json.loads(args["model_config"])
        parameters = _parameters(config)
        self.settings = ClassifierSettings.from_parameters(parameters, max_batch_size=config["max_batch_size"])
        self.labels = load_labels(_version_dir(args) / parameters["labels_file"])
        preprocessing = parameters.get("preprocessing_model", "preprocessing")
        network = parameters.get("network_model", "efficientnet-b0")
        self.orchestrator = Orchestrator(
            preprocess=lambda batch: call_model(preprocessing, {DALI_INPUT: batch}, DALI_OUTPUT),
            infer=lambda images: call_model(network, {NETWORK_INPUT: images}, NETWORK_OUTPUT),
            max_batch_size=config["max_batch_size"],
        )

    def execute(self, requests: Sequence[Any]) -> list[Any]:
        """One response per request; every valid image of every request goes in one batch."""
        responses: list[Any] = [None] * len(requests)
        prepared = {}
        for index, request in enumerate(requests):
            try:
                prepared[index] = prepare_request(
                    _input(request, IMAGE_INPUT),
                    top_k=request_top_k(request),
                    settings=self.settings,
                    num_classes=len(self.labels),
                )
            except BlsPipelineError as exc:
                responses[index] = error_response(exc)
        images = [image for item in prepared.values() for image in item.images]
        results = self.orchestrator(images) if images else []
        offset = 0
        for index, item in prepared.items():
            own = results[offset : offset + len(item.images)]
            offset += len(item.images)
            error = request_error(own)
            if error is not None:
                responses[index] = error_response(error)
                continue
            responses[index] = classification_response(np.stack(own), item.top_k, self.labels)
        return responses


def _split_rows(requests: Sequence[Any], name: str) -> tuple[list[np.ndarray], list[int]]:
    arrays = [_input(request, name) for request in requests]
    return arrays, [len(array) for array in arrays]


class PreprocessingModel:
    """The DALI pipeline of ``1/model.dali`` or ``1/dali.py`` hosted in a Python-backend model (``--target local``)."""

    def initialize(self, args: dict) -> None:
        """Set up from the Python backend's ``args`` (called once per model instance)."""
        from bls_pipeline.runtime.dali import DaliPreprocessor

        config = json.loads(args["model_config"])
        parameters = _parameters(config)
        # The decoder device is the repository's device setting: in preprocessing.json for
        # dali.py, in the graph of model.dali (and this instance's kind) for a user pipeline.
        self.runner = DaliPreprocessor.from_version_dir(
            _version_dir(args),
            on_device=_device(args) == GPU,
            max_batch_size=config["max_batch_size"],
            num_threads=int(parameters.get("num_threads", 0)) or None,
            gpu_id=_gpu_id(args),
        )

    def execute(self, requests: Sequence[Any]) -> list[Any]:
        """Decode every row of every request as one DALI batch; isolate failures per request."""
        arrays, counts = _split_rows(requests, DALI_INPUT)
        rows = [row for array in arrays for row in array]
        try:
            outputs = np.split(self.runner(rows), np.cumsum(counts)[:-1])
        except RuntimeError as exc:
            if len(requests) == 1:
                return [error_response(InvalidRequestError(summarize_dali_error(str(exc))))]
            return [response for request in requests for response in self.execute([request])]
        return [pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(DALI_OUTPUT, out)]) for out in outputs]


class NetworkModel:
    """The exported network hosted in a Python-backend model (``--target local``)."""

    def initialize(self, args: dict) -> None:
        """Set up from the Python backend's ``args`` (called once per model instance)."""
        from bls_pipeline.runtime.network import load_network, network_options

        parameters = _parameters(json.loads(args["model_config"]))
        self.network = load_network(
            _version_dir(args), device=_device(args), gpu_id=_gpu_id(args), **network_options(parameters)
        )

    def execute(self, requests: Sequence[Any]) -> list[Any]:
        """Run every request's images through the network as one batch."""
        arrays, counts = _split_rows(requests, NETWORK_INPUT)
        logits = self.network(arrays[0] if len(arrays) == 1 else np.concatenate(arrays))
        return [
            pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(NETWORK_OUTPUT, out)])
            for out in np.split(logits, np.cumsum(counts)[:-1])
        ]
