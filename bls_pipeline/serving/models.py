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
from bls_pipeline.serving.metrics import ClassifierMetrics, StageTimer, refusal_reason

LOGGER = logging.getLogger(__name__)

# Names of the contract; duplicated from model_config on purpose: that module needs
# tritonclient's protobufs, which the NVIDIA Triton container does not have.
IMAGE_INPUT, SCORES_OUTPUT, CLASS_IDS_OUTPUT, LABELS_OUTPUT = "IMAGE", "SCORES", "CLASS_IDS", "LABELS"
PROBABILITIES_OUTPUT = "PROBABILITIES"
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


def _version_dir(args: dict) -> Path:
    return Path(args["model_repository"]) / args["model_version"]


def _input(request: Any, name: str) -> np.ndarray:
    return pb_utils.get_input_tensor_by_name(request, name).as_numpy()


def request_top_k(request: Any) -> object:
    """The request's ``top_k`` parameter as the client sent it; ``None`` when absent."""
    return json.loads(request.parameters() or "{}").get("top_k")


def wants_probabilities(request: Any) -> bool:
    """Whether the request asked for ``PROBABILITIES`` (Triton's classification extension).

    Only then is the ``[N, classes]`` tensor sent through shared memory; Triton turns it into
    ``"score:index:label"`` strings itself when the client set ``class_count``.
    """
    return PROBABILITIES_OUTPUT in request.requested_output_names()


def classification_response(logits: np.ndarray, k: int, labels: Sequence[str], *, probabilities: bool = False) -> Any:
    """The endpoint's answer to one request: ``SCORES``, ``CLASS_IDS``, ``LABELS`` of its logits,
    and with ``probabilities`` the full softmax as ``PROBABILITIES``."""
    outputs = classify_request(logits, k, labels)
    tensors = [
        pb_utils.Tensor(SCORES_OUTPUT, outputs.scores),
        pb_utils.Tensor(CLASS_IDS_OUTPUT, outputs.class_ids),
        pb_utils.Tensor(LABELS_OUTPUT, outputs.labels),
    ]
    if probabilities:
        tensors.append(pb_utils.Tensor(PROBABILITIES_OUTPUT, outputs.probabilities))
    return pb_utils.InferenceResponse(output_tensors=tensors)


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
        self.timer = StageTimer()
        self.metrics = ClassifierMetrics(
            model=args["model_name"], version=args["model_version"], max_batch_size=config["max_batch_size"]
        )
        self.orchestrator = Orchestrator(
            preprocess=self.timer.timed(
                "preprocessing", lambda batch: call_model(preprocessing, {DALI_INPUT: batch}, DALI_OUTPUT)
            ),
            infer=self.timer.timed("network", lambda images: call_model(network, {NETWORK_INPUT: images}, NETWORK_OUTPUT)),
            max_batch_size=config["max_batch_size"],
        )

    def _refuse(self, error: BlsPipelineError, *, decoded: bool) -> Any:
        self.metrics.refused(refusal_reason(error, decoded=decoded))
        return error_response(error)

    def execute(self, requests: Sequence[Any]) -> list[Any]:
        """One response per request; every valid image of every request goes in one batch."""
        responses: list[Any] = [None] * len(requests)
        prepared = {}
        with self.timer.stage("trim_check"):
            for index, request in enumerate(requests):
                try:
                    prepared[index] = prepare_request(
                        _input(request, IMAGE_INPUT),
                        top_k=request_top_k(request),
                        settings=self.settings,
                        num_classes=len(self.labels),
                    )
                except BlsPipelineError as exc:
                    responses[index] = self._refuse(exc, decoded=False)
        images = [image for item in prepared.values() for image in item.images]
        results = self.orchestrator(images) if images else []
        offset = 0
        with self.timer.stage("postprocessing"):
            for index, item in prepared.items():
                own = results[offset : offset + len(item.images)]
                offset += len(item.images)
                error = request_error(own)
                if error is not None:
                    responses[index] = self._refuse(error, decoded=True)
                    continue
                responses[index] = classification_response(
                    np.stack(own), item.top_k, self.labels, probabilities=wants_probabilities(requests[index])
                )
        self.metrics.record(self.timer, images=len(images))
        return responses


def _split_rows(requests: Sequence[Any], name: str) -> tuple[list[np.ndarray], list[int]]:
    arrays = [_input(request, name) for request in requests]
    return arrays, [len(array) for array in arrays]


class PreprocessingModel:
    """The DALI pipeline of ``1/dali.py`` hosted in a Python-backend model (``--target local``)."""

    def initialize(self, args: dict) -> None:
        """Set up from the Python backend's ``args`` (called once per model instance)."""
        from bls_pipeline.runtime.dali import DaliPreprocessor, gpu_device_id

        config = json.loads(args["model_config"])
        parameters = _parameters(config)
        self.runner = DaliPreprocessor.from_file(
            _version_dir(args) / "dali.py",
            max_batch_size=config["max_batch_size"],
            num_threads=int(parameters.get("num_threads", 0)) or None,
            device_id=gpu_device_id() if args.get("model_instance_kind") == "GPU" else None,
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
        self.network = load_network(_version_dir(args), **network_options(parameters))

    def execute(self, requests: Sequence[Any]) -> list[Any]:
        """Run every request's images through the network as one batch."""
        arrays, counts = _split_rows(requests, NETWORK_INPUT)
        logits = self.network(arrays[0] if len(arrays) == 1 else np.concatenate(arrays))
        return [
            pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(NETWORK_OUTPUT, out)])
            for out in np.split(logits, np.cumsum(counts)[:-1])
        ]
