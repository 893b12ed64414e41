"""The Python-backend models: adapters from ``triton_python_backend_utils`` to ``bls_pipeline``.

The classes here implement the Python backend's ``TritonPythonModel`` interface
(``initialize(args)``, ``execute(requests)``), so each ``model.py`` of the repository is one
import: :class:`ClassifierModel` (the BLS endpoint), :class:`PreprocessingModel` (DALI
hosted in Python, ``--target local``) and :class:`NetworkModel` (TensorRT or ONNX Runtime
hosted in Python, ``--target local``). Every BLS call goes through :mod:`bls_pipeline.serving.bls`.

Each instance runs on the device of its instance kind (``args["model_instance_kind"]``),
which the build wrote from the repository's one device setting. On a GPU the preprocessed
batch stays in GPU memory from DALI to the network (DLPack), and only logits reach the host.

This module imports only numpy and ``bls_pipeline``'s light modules at import time, because
the classifier runs in the NVIDIA Triton container where torch and DALI are not installed.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from bls_pipeline.contract import (
    CLASS_IDS_OUTPUT,
    DALI_INPUT,
    DALI_OUTPUT,
    IMAGE_BYTES_INPUT,
    IMAGE_INPUT,
    LABELS_OUTPUT,
    NETWORK_INPUT,
    NETWORK_OUTPUT,
    PROBABILITIES_OUTPUT,
    SCORES_OUTPUT,
)
from bls_pipeline.errors import BlsPipelineError, InvalidRequestError, SubModelError
from bls_pipeline.request.faults import blames_input, summarize_dali_error
from bls_pipeline.request.orchestration import (
    ClassifierSettings,
    Orchestrator,
    PreparedRequest,
    classify_request,
    prepare_request,
    request_error,
)
from bls_pipeline.request.postprocess import label_table, load_labels
from bls_pipeline.request.submodels import SubModels
from bls_pipeline.runtime.device import GPU, device_of_instance_kind
from bls_pipeline.serving.bls import call_model, error_response, host_array
from bls_pipeline.serving.metrics import ClassifierMetrics, StageTimer, refusal_reason

LOGGER = logging.getLogger(__name__)


def _parameters(model_config: dict) -> dict[str, str]:
    # An empty string_value is left out of the config's JSON.
    return {key: value.get("string_value", "") for key, value in model_config.get("parameters", {}).items()}


def _device(args: dict) -> str:
    """The instance's device: its kind, which the build wrote from the repository's device."""
    return device_of_instance_kind(args.get("model_instance_kind", "CPU"))


def _tensor_names(config: dict, default_input: str, default_output: str) -> tuple[str, str]:
    """The model's own input and output name (an adopted model keeps the user's), else the contract's."""
    inputs, outputs = config.get("input") or [{}], config.get("output") or [{}]
    return inputs[0].get("name", default_input), outputs[0].get("name", default_output)


def _gpu_id(args: dict) -> int:
    return int(args.get("model_instance_device_id", 0))


def _internal_error(message: str) -> Any:
    # The full text: the classifier reads it to tell a server fault from a bad image.
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, pb_utils.TritonError.INTERNAL))


def _version_dir(args: dict) -> Path:
    return Path(args["model_repository"]) / args["model_version"]


def _input(request: Any, name: str) -> np.ndarray:
    return pb_utils.get_input_tensor_by_name(request, name).as_numpy()


def _optional_input(request: Any, name: str) -> np.ndarray | None:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy()


def prepare_images(request: Any, settings: ClassifierSettings, num_classes: int) -> PreparedRequest:
    """:func:`prepare_request` on whichever of ``IMAGE`` / ``IMAGE_BYTES`` the request carries."""
    return prepare_request(
        _optional_input(request, IMAGE_INPUT),
        encoded=_optional_input(request, IMAGE_BYTES_INPUT),
        top_k=request_top_k(request),
        settings=settings,
        num_classes=num_classes,
    )


def request_top_k(request: Any) -> object:
    """The request's ``top_k`` parameter as the client sent it; ``None`` when absent."""
    return json.loads(request.parameters() or "{}").get("top_k")


def wants_probabilities(request: Any) -> bool:
    """Whether the request asked for ``PROBABILITIES`` (Triton's classification extension).

    Only then is the ``[N, classes]`` tensor sent through shared memory; Triton turns it into
    ``"score:index:label"`` strings itself when the client set ``class_count``.
    """
    return PROBABILITIES_OUTPUT in request.requested_output_names()


def classification_response(
    logits: np.ndarray, k: int, labels: Sequence[str] | np.ndarray, *, probabilities: bool = False
) -> Any:
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


@functools.cache
def _torch() -> Any:
    """torch where it is importable (the pip-installed server), else ``None`` (the NVIDIA Triton container)."""
    try:
        import torch
    except ImportError:
        return None
    return torch


def _check_dims(dims: Sequence[int], wiring: SubModels) -> None:
    if wiring.network_input_dims and tuple(dims) != wiring.network_input_dims:
        raise SubModelError(
            wiring.preprocessing_model,
            f"{wiring.preprocessing_output} is {list(dims)} per image, {wiring.network_model}'s "
            f"{wiring.network_input} takes {list(wiring.network_input_dims)}",
        )


def network_input(batch: Any, wiring: SubModels) -> Any:
    """The preprocessed ``batch`` (a ``pb_utils.Tensor``) as the network takes it.

    A host batch is checked against ``network_input_dims`` when the wiring names them (a
    clear error instead of the network's), and cast to FP16 for a network with FP16 inputs.
    A GPU batch is passed on untouched (the build checked the fit), unless it must be cast:
    then torch casts it on the GPU, checking its dims too. Without torch (the NVIDIA Triton
    container) the classifier asked for a batch to cast in host memory.
    """
    if batch.is_cpu():
        if not (wiring.network_input_dims or wiring.casts_to_fp16):
            return batch
        array = batch.as_numpy()
        _check_dims(array.shape[1:], wiring)
        return array.astype(np.float16) if wiring.casts_to_fp16 else batch
    if not wiring.casts_to_fp16:
        return batch
    tensor = _torch().from_dlpack(batch.to_dlpack())
    _check_dims(tensor.shape[1:], wiring)
    return pb_utils.Tensor.from_dlpack(wiring.network_input, tensor.half())


class ClassifierModel:
    """The ``classifier`` endpoint: trims, validates, batches, calls the sub-models, answers."""

    def initialize(self, args: dict) -> None:
        """Set up from the Python backend's ``args`` (called once per model instance)."""
        config = json.loads(args["model_config"])
        parameters = _parameters(config)
        self.settings = ClassifierSettings.from_parameters(parameters, max_batch_size=config["max_batch_size"])
        self.labels = label_table(load_labels(_version_dir(args) / parameters["labels_file"]))
        # The sub-models' names, tensors and batch limits (adopted repositories name their own).
        self.submodels = wiring = SubModels.from_parameters(parameters)
        # On a GPU the preprocessed batch is asked for in this GPU's memory and handed to the
        # network as it is; the logits are asked for in host memory. A cast to FP16 without
        # torch (the NVIDIA Triton container) happens on the host.
        gpu_id = _gpu_id(args) if _device(args) == GPU else None
        if gpu_id is not None and wiring.casts_to_fp16 and _torch() is None:
            gpu_id = None
        self.timer = StageTimer()
        self.metrics = ClassifierMetrics(
            model=args["model_name"], version=args["model_version"], max_batch_size=config["max_batch_size"]
        )
        self.orchestrator = Orchestrator(
            preprocess=self.timer.timed(
                "preprocessing",
                lambda rows: call_model(
                    wiring.preprocessing_model,
                    {wiring.preprocessing_input: rows},
                    wiring.preprocessing_output,
                    gpu_id=gpu_id,
                ),
            ),
            infer=self.timer.timed(
                "network",
                lambda batch: host_array(
                    wiring.network_model,
                    call_model(
                        wiring.network_model,
                        {wiring.network_input: network_input(batch, wiring)},
                        wiring.network_output,
                    ),
                ),
            ),
            max_batch_size=wiring.chunk_size(config["max_batch_size"]),
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
                    prepared[index] = prepare_images(request, self.settings, len(self.labels))
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

    def finalize(self) -> None:
        """Send the metrics not sent yet (the Python backend calls this at unload)."""
        self.metrics.close()


def _split_rows(requests: Sequence[Any], name: str) -> tuple[list[np.ndarray], list[int]]:
    arrays = [_input(request, name) for request in requests]
    return arrays, [len(array) for array in arrays]


def _gpu_batch(requests: Sequence[Any], name: str, gpu_id: int) -> tuple[Any, list[int]]:
    """The inputs ``name`` of ``requests`` as one torch tensor on GPU ``gpu_id``, and their row counts.

    GPU inputs are read through DLPack, without a copy; host inputs (a client that sent them
    directly) are copied up.
    """
    import torch

    device = torch.device("cuda", gpu_id)
    parts = []
    for request in requests:
        tensor = pb_utils.get_input_tensor_by_name(request, name)
        if tensor.is_cpu():
            parts.append(torch.from_numpy(tensor.as_numpy()).to(device))
        else:
            parts.append(torch.from_dlpack(tensor.to_dlpack()))
    return (parts[0] if len(parts) == 1 else torch.cat(parts)), [len(part) for part in parts]


class PreprocessingModel:
    """The DALI pipeline of ``1/model.dali`` or ``1/dali.py`` hosted in a Python-backend model (``--target local``)."""

    def initialize(self, args: dict) -> None:
        """Set up from the Python backend's ``args`` (called once per model instance)."""
        from bls_pipeline.runtime.dali import DaliPreprocessor

        config = json.loads(args["model_config"])
        parameters = _parameters(config)
        self.input_name, self.output_name = _tensor_names(config, DALI_INPUT, DALI_OUTPUT)
        # The decoder device is the repository's device setting: in preprocessing.json for
        # dali.py, in the graph of model.dali (and this instance's kind) for a user pipeline.
        self.runner = DaliPreprocessor.from_version_dir(
            _version_dir(args),
            on_device=_device(args) == GPU,
            max_batch_size=config["max_batch_size"],
            num_threads=int(parameters.get("num_threads", 0)) or None,
            gpu_id=_gpu_id(args),
            input_name=self.input_name,
        )
        memory = f"GPU {_gpu_id(args)}" if self.runner.on_device else "host"
        pb_utils.Logger.log_info(
            f"preprocessing: DALI {self.runner.decoder_device} decoder, outputs in {memory} memory"
        )

    def execute(self, requests: Sequence[Any]) -> list[Any]:
        """Decode every row of every request as one DALI batch; isolate failures per request.

        A decoder failure on the data fails the request that holds the image (``INVALID_ARG``;
        with several requests, each is retried alone to find it). Any other failure (a CUDA
        error, out of memory) is the server's: every request fails ``INTERNAL`` at once, with
        the full DALI text, which the classifier reads and logs.
        """
        arrays, counts = _split_rows(requests, self.input_name)
        rows = [row for array in arrays for row in array]
        try:
            outputs = self._outputs(rows, counts)
        except RuntimeError as exc:
            message = str(exc)
            if not blames_input(message):
                return [_internal_error(message)] * len(requests)
            if len(requests) == 1:
                # The sample number stays: the classifier finds its bad image by it.
                return [error_response(InvalidRequestError(summarize_dali_error(message, keep_sample=True)))]
            return [response for request in requests for response in self.execute([request])]
        return [pb_utils.InferenceResponse(output_tensors=[output]) for output in outputs]

    def _outputs(self, rows: list[np.ndarray], counts: list[int]) -> list[Any]:
        """One output tensor per request: in GPU memory for a mixed decoder, else host."""
        if self.runner.on_device:
            import torch

            return [
                pb_utils.Tensor.from_dlpack(self.output_name, part)
                for part in torch.split(self.runner.on_gpu(rows), counts)
            ]
        return [pb_utils.Tensor(self.output_name, part) for part in np.split(self.runner(rows), np.cumsum(counts)[:-1])]


class NetworkModel:
    """The exported network hosted in a Python-backend model (``--target local``)."""

    def initialize(self, args: dict) -> None:
        """Set up from the Python backend's ``args`` (called once per model instance)."""
        from bls_pipeline.runtime.network import load_network, network_options

        config = json.loads(args["model_config"])
        self.device, self.gpu_id = _device(args), _gpu_id(args)
        self.input_name, self.output_name = _tensor_names(config, NETWORK_INPUT, NETWORK_OUTPUT)
        self.network = load_network(
            _version_dir(args),
            device=self.device,
            gpu_id=self.gpu_id,
            max_batch_size=config["max_batch_size"],
            **network_options(_parameters(config)),
        )

    def execute(self, requests: Sequence[Any]) -> list[Any]:
        """Run every request's images through the network as one batch; logits go back in host memory."""
        if self.device == GPU:
            batch, counts = _gpu_batch(requests, self.input_name, self.gpu_id)
        else:
            arrays, counts = _split_rows(requests, self.input_name)
            batch = arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
        logits = self.network(batch)
        return [
            pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(self.output_name, out)])
            for out in np.split(logits, np.cumsum(counts)[:-1])
        ]
