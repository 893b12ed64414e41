"""Triton model configurations for the three models, built as protobuf messages.

Every ``config.pbtxt`` of the repository comes from here: a dict in the JSON form of
``inference.ModelConfig`` is parsed into the message (unknown fields fail loudly), then
written with ``text_format``. Nothing is rendered from string templates.

Example::

    config = classifier_config(max_batch_size=64, parameters={"network_model": "efficientnet-b0"})
    write_config(repo / "classifier" / "config.pbtxt", config)
    assert read_config(repo / "classifier" / "config.pbtxt") == config
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2

from bls_pipeline import contract

# The contract's names, importable from here too because every config user needs them.
from bls_pipeline.contract import (  # noqa: F401
    CLASS_IDS_OUTPUT,
    CLASSIFIER,
    DALI_INPUT,
    DALI_OUTPUT,
    IMAGE_INPUT,
    LABELS_OUTPUT,
    NETWORK,
    NETWORK_INPUT,
    NETWORK_OUTPUT,
    PREPROCESSING,
    PROBABILITIES_OUTPUT,
    SCORES_OUTPUT,
)
from bls_pipeline.errors import ConfigError
from bls_pipeline.layout import ONNX_FILE, PLAN_FILE
from bls_pipeline.runtime.device import CPU, GPU, check_device, instance_kind

ModelConfig = model_config_pb2.ModelConfig


TARGETS = ("triton", "local")
FORCE_CPU_ONLY_INPUT_TENSORS = "FORCE_CPU_ONLY_INPUT_TENSORS"
# The network's runtime: a TensorRT engine (model.plan, GPU), ONNX Runtime (model.onnx, CPU or
# its CUDA provider), or FP16 torch CUDA graphs (model.pt, a Python-backend model on a GPU).
TENSORRT, ONNXRUNTIME, TORCH_CUDA = "tensorrt", "onnxruntime", "torch-cuda"
RUNTIMES = (TENSORRT, ONNXRUNTIME, TORCH_CUDA)


def _parse(config: Mapping[str, Any]) -> ModelConfig:
    try:
        return json_format.ParseDict(dict(config), ModelConfig())
    except json_format.ParseError as exc:
        raise ConfigError(f"invalid model configuration for {config.get('name')!r}: {exc}") from exc


def _string_parameters(parameters: Mapping[str, object] | None) -> dict[str, dict[str, str]]:
    return {key: {"string_value": str(value)} for key, value in (parameters or {}).items()}


@dataclass(frozen=True)
class QueuePolicy:
    """How much a model's queue holds before Triton refuses requests with ``UNAVAILABLE``.

    ``max_queue_size`` requests wait at most (a request beyond them is refused at once,
    "Exceeds maximum queue size"); one that waited ``timeout_ms`` is refused when the
    scheduler next looks at the queue ("Request timeout expired"). A client may ask for a
    shorter wait with the request's ``timeout`` parameter (``allow_timeout_override``).
    ``0`` turns a bound off, as in Triton.
    """

    max_queue_size: int
    timeout_ms: int

    def __post_init__(self) -> None:
        if self.max_queue_size < 0 or self.timeout_ms < 0:
            raise ConfigError(
                f"queue size and timeout must be 0 (unbounded) or more, got {self.max_queue_size} and {self.timeout_ms} ms"
            )

    def config(self) -> dict[str, Any]:
        """The ``default_queue_policy`` of a ``dynamic_batching`` block, in JSON form."""
        return {
            "max_queue_size": self.max_queue_size,
            "default_timeout_microseconds": self.timeout_ms * 1000,
            "timeout_action": "REJECT",
            "allow_timeout_override": True,
        }


def _dynamic_batching(max_queue_delay_us: int, queue: QueuePolicy | None = None) -> dict[str, Any]:
    batching: dict[str, Any] = {"max_queue_delay_microseconds": max_queue_delay_us}
    if queue is not None:
        batching["default_queue_policy"] = queue.config()
    return batching


def _instances(device: str, count: int = 1, gpus: Sequence[int] = ()) -> list[dict[str, Any]]:
    """One instance group: ``count`` instances on each of ``gpus`` (empty: on every visible GPU,
    Triton's rule for ``KIND_GPU``; on the CPU, ``count`` in all)."""
    if count < 1:
        raise ConfigError(f"instance count must be at least 1, got {count}")
    group: dict[str, Any] = {"kind": instance_kind(device), "count": count}
    if gpus:
        if device != GPU:
            raise ConfigError("--gpus places instances on GPUs: it needs --device gpu")
        group["gpus"] = list(gpus)
    return [group]


def _python_backend_parameters(parameters: Mapping[str, object] | None, *, gpu_inputs: bool) -> dict[str, object]:
    """``parameters`` plus ``FORCE_CPU_ONLY_INPUT_TENSORS``, set deliberately on every model.

    The Python backend copies GPU inputs to the host unless told ``"no"``; only a model that
    computes on GPU inputs (the network on a GPU) takes them where they are.
    """
    return {**(parameters or {}), FORCE_CPU_ONLY_INPUT_TENSORS: "no" if gpu_inputs else "yes"}


def classifier_config(
    *,
    max_batch_size: int,
    device: str = CPU,
    parameters: Mapping[str, object] | None = None,
    max_queue_delay_us: int = 0,
    queue: QueuePolicy | None = None,
    instances: int = 1,
    gpus: Sequence[int] = (),
) -> ModelConfig:
    """The public ``classifier`` endpoint: Python-backend BLS model, bytes in, classes out.

    ``queue`` bounds its queue (see :class:`QueuePolicy`): the one queue that clients fill.
    The sub-models need none, since their only client is the classifier, whose instances
    have a bounded number of requests in flight.

    Its inputs are the contract's two forms, both optional: ``IMAGE`` (padded rows, ragged
    batching) and ``IMAGE_BYTES`` (one BYTES element per image).

    Outputs are ``[-1]`` per image because ``top_k`` is a per-request parameter. On a GPU its
    instances are ``KIND_GPU`` so that each knows the GPU its sub-models' outputs stay on;
    its own input (encoded bytes from the client) is host memory either way.
    """
    return _parse(
        {
            "name": CLASSIFIER,
            "backend": "python",
            "max_batch_size": max_batch_size,
            # Each request carries one of the two forms (contract.IMAGE_BYTES says why two).
            # Triton 2.51's dynamic batcher joins only consecutive queued requests that carry
            # the same inputs: an execute never mixes forms, and clients that alternate forms
            # get smaller batches (measured: alternating requests ran one per execute).
            "input": [
                {**contract.IMAGE.config(), "allow_ragged_batch": True, "optional": True},
                {**contract.IMAGE_BYTES.config(), "optional": True},
            ],
            "output": [spec.config() for spec in contract.CLASSIFIER_OUTPUTS],
            "dynamic_batching": _dynamic_batching(max_queue_delay_us, queue),
            "instance_group": _instances(device, instances, gpus),
            "parameters": _string_parameters(_python_backend_parameters(parameters, gpu_inputs=False)),
        }
    )


def preprocessing_config(
    *,
    target: str,
    max_batch_size: int,
    crop: int,
    device: str = CPU,
    num_threads: int = 4,
    autoconfig: bool = False,
    max_queue_delay_us: int = 0,
    instances: int = 1,
    native: bool | None = None,
    gpus: Sequence[int] = (),
) -> ModelConfig:
    """The DALI preprocessing model: ``DALI_INPUT`` bytes -> ``DALI_OUTPUT`` FP32 ``[3, crop, crop]``.

    ``native`` (default: ``target == "triton"``) uses Triton's DALI backend, which reads
    ``1/model.dali`` or autoserializes ``1/dali.py``; with ``autoconfig`` the inputs and
    outputs are left out and the backend derives them from the pipeline (``ndim``/``dtype``
    of the external source, ``output_ndim``/``output_dtype``). Otherwise a Python-backend
    model hosts the same ``dali.py``. ``device`` sets the instance kind; the decoder that
    matches it is in ``preprocessing.json``. The native model is unbatched (``max_batch_size`` 0):
    a request ``[N, bytes]`` is N images, answered ``[N, 3, crop, crop]``.
    """
    check_target(target)
    native = target == "triton" if native is None else native
    parameters: dict[str, object] = {"num_threads": num_threads}
    config: dict[str, Any] = {"name": PREPROCESSING, "instance_group": _instances(device, instances, gpus)}
    encoded, preprocessed = contract.ENCODED.config(), contract.preprocessed(DALI_OUTPUT, crop).config()
    if native:
        # Unbatched: Triton's DALI backend answers every request of a batch with the batch's
        # error, and completes a batched model's config with dynamic_batching, so requests of
        # several classifier instances that ran as one DALI batch all failed for one bad image.
        # Unbatched, it runs one request at a time; each is a batch of up to max_batch_size
        # images already (the classifier's), its first dimension still counts the images, and
        # the pipeline's own batch size (preprocessing.json) bounds it.
        config.update(backend="dali", max_batch_size=0)
        encoded["dims"] = [-1, *encoded["dims"]]
        preprocessed["dims"] = [-1, *preprocessed["dims"]]
    else:
        config.update(backend="python", max_batch_size=max_batch_size)
        config["dynamic_batching"] = _dynamic_batching(max_queue_delay_us)
        encoded["allow_ragged_batch"] = True
        # Its input is the classifier's host bytes: nothing to gain from GPU inputs.
        parameters = _python_backend_parameters(parameters, gpu_inputs=False)
    config["parameters"] = _string_parameters(parameters)
    if not (autoconfig and native):
        config["input"], config["output"] = [encoded], [preprocessed]
    return _parse(config)


def network_config(
    *,
    target: str,
    runtime: str,
    max_batch_size: int,
    crop: int,
    num_classes: int,
    device: str = CPU,
    max_queue_delay_us: int = 0,
    parameters: Mapping[str, object] | None = None,
    instances: int = 1,
    native: bool | None = None,
    gpus: Sequence[int] = (),
    input_name: str = NETWORK_INPUT,
    output_name: str = NETWORK_OUTPUT,
    input_data_type: str = "TYPE_FP32",
    output_data_type: str = "TYPE_FP32",
) -> ModelConfig:
    """The network: ``INPUT`` FP32 ``[3, crop, crop]`` -> ``OUTPUT`` FP32 logits ``[num_classes]``.

    A ``--network`` file keeps its own tensor names and types (``input_name``,
    ``output_name``, ``input_data_type``, ``output_data_type``).
    ``runtime`` is one of :data:`RUNTIMES`: ``"tensorrt"`` (``model.plan``, GPU only),
    ``"onnxruntime"`` (``model.onnx``) or ``"torch-cuda"`` (``model.pt``, GPU only, Python-hosted).
    ``native`` (default: ``target == "triton"``) serves it on Triton's TensorRT or ONNX Runtime
    backend; otherwise a Python-backend model runs it.
    """
    check_target(target)
    check_runtime(runtime)
    check_runtime_device(runtime, device)
    native = target == "triton" if native is None else native
    config: dict[str, Any] = {
        "name": NETWORK,
        "max_batch_size": max_batch_size,
        "input": [{**contract.preprocessed(input_name, crop).config(), "data_type": input_data_type}],
        "output": [{**contract.logits(num_classes).config(), "name": output_name, "data_type": output_data_type}],
        "dynamic_batching": _dynamic_batching(max_queue_delay_us),
        "instance_group": _instances(device, instances, gpus),
    }
    if native and runtime == TORCH_CUDA:
        raise ConfigError("torch CUDA graphs (model.pt) run in a Python-backend model, not on a Triton backend")
    if native:
        if runtime == TENSORRT:
            config["platform"] = "tensorrt_plan"
            config["default_model_filename"] = PLAN_FILE
        else:
            config["platform"] = "onnxruntime_onnx"
            config["default_model_filename"] = ONNX_FILE
    else:
        config["backend"] = "python"
        # On a GPU the preprocessed batch arrives in GPU memory and stays there.
        parameters = _python_backend_parameters(parameters, gpu_inputs=device == GPU)
    config["parameters"] = _string_parameters(parameters)
    return _parse(config)


@dataclass(frozen=True)
class EnsembleStep:
    """One step of an ensemble: ``input_map``/``output_map`` go from the step model's tensor
    names to the ensemble's tensor names."""

    model_name: str
    input_map: Mapping[str, str]
    output_map: Mapping[str, str]
    model_version: int = -1


def tensor_spec(name: str, data_type: str, dims: Sequence[int]) -> dict[str, Any]:
    """An input or output of a config in JSON form: ``tensor_spec("IMAGE", "TYPE_UINT8", [-1])``."""
    return {"name": name, "data_type": data_type, "dims": list(dims)}


def ensemble_config(
    *,
    name: str,
    max_batch_size: int,
    inputs: Sequence[Mapping[str, Any]],
    outputs: Sequence[Mapping[str, Any]],
    steps: Sequence[EnsembleStep],
) -> ModelConfig:
    """A ``platform: "ensemble"`` model that chains ``steps`` (see :func:`tensor_spec`).

    Every step input must be an ensemble input or an earlier step's output, and every
    ensemble output must come from a step: Triton would refuse the model at load time, so
    a :class:`ConfigError` says it here first.
    """
    if not steps:
        raise ConfigError(f"ensemble {name!r} needs at least one step")
    available = {spec["name"] for spec in inputs}
    for step in steps:
        missing = sorted(set(step.input_map.values()) - available)
        if missing:
            raise ConfigError(f"ensemble {name!r}: step {step.model_name!r} reads {missing}, which nothing produces")
        available |= set(step.output_map.values())
    unproduced = sorted({spec["name"] for spec in outputs} - available)
    if unproduced:
        raise ConfigError(f"ensemble {name!r}: outputs {unproduced} are produced by no step")
    return _parse(
        {
            "name": name,
            "platform": "ensemble",
            "max_batch_size": max_batch_size,
            "input": [dict(spec) for spec in inputs],
            "output": [dict(spec) for spec in outputs],
            "ensemble_scheduling": {
                "step": [
                    {
                        "model_name": step.model_name,
                        "model_version": step.model_version,
                        "input_map": dict(step.input_map),
                        "output_map": dict(step.output_map),
                    }
                    for step in steps
                ]
            },
        }
    )


def add_classification_output(config: ModelConfig, *, num_classes: int, label_filename: str) -> ModelConfig:
    """Add ``PROBABILITIES`` (FP32 ``[num_classes]``) with its labels file to ``config``.

    Triton's classification extension reads it: a client that requests ``PROBABILITIES``
    with ``class_count=k`` gets ``"score:index:label"`` strings, built by the server from
    ``label_filename`` (a path relative to the model's directory).
    """
    output = config.output.add()
    json_format.ParseDict({**contract.probabilities(num_classes).config(), "label_filename": label_filename}, output)
    return config


def add_warmup(
    config: ModelConfig, *, inputs: Mapping[str, Mapping[str, Any]], batch_sizes: Sequence[int]
) -> ModelConfig:
    """Add one ``model_warmup`` sample per batch size, with ``inputs`` in the JSON form of
    ``ModelWarmup.Input`` (``{"DALI_INPUT": {"data_type": "TYPE_UINT8", "dims": [n],
    "input_data_file": "warmup.jpg"}}``; files are relative to the model's ``warmup/``).

    Triton runs the samples before the model reports ready, so a ready server has already
    allocated its batches and initialized its runtimes at those sizes. Only the sub-models
    can be warmed: a BLS request during the server's start fails with "Server not ready".
    """
    for batch_size in batch_sizes:
        add_warmup_sample(config, name=f"batch {batch_size}", batch_size=batch_size, inputs=inputs)
    return config


def add_warmup_sample(
    config: ModelConfig, *, name: str, batch_size: int, inputs: Mapping[str, Mapping[str, Any]]
) -> ModelConfig:
    """Add one ``model_warmup`` sample: ``batch_size`` requests of ``inputs`` (see :func:`add_warmup`).
    An unbatched model's request is one full-shape tensor, so it warms a batch with ``batch_size`` 1
    and the images in the input's first dimension."""
    sample = {"name": name, "batch_size": batch_size, "inputs": {k: dict(v) for k, v in inputs.items()}}
    json_format.ParseDict(sample, config.model_warmup.add())
    return config


def check_target(target: str) -> None:
    """Raise :class:`ConfigError` unless ``target`` is one of :data:`TARGETS`."""
    if target not in TARGETS:
        raise ConfigError(f"unknown target {target!r}: expected one of {', '.join(TARGETS)}")


def check_runtime(runtime: str) -> None:
    """Raise :class:`ConfigError` unless ``runtime`` is one of :data:`RUNTIMES`."""
    if runtime not in RUNTIMES:
        raise ConfigError(f"unknown network runtime {runtime!r}: expected one of {', '.join(RUNTIMES)}")


def check_runtime_device(runtime: str, device: str) -> None:
    """Raise :class:`ConfigError` for a network runtime that cannot run on ``device``."""
    check_device(device)
    if runtime == TENSORRT and device != GPU:
        raise ConfigError("a TensorRT engine runs only on a GPU: build with --device gpu, or serve ONNX on the CPU")
    if runtime == TORCH_CUDA and device != GPU:
        raise ConfigError("torch CUDA graphs run only on a GPU: build with --device gpu, or serve ONNX on the CPU")


def config_text(config: ModelConfig) -> str:
    """The ``config.pbtxt`` text of ``config``."""
    text = text_format.MessageToString(config)
    if config.max_batch_size == 0:
        # Text format leaves a zero out, and Triton's DALI backend learns that a model is
        # unbatched only from a max_batch_size line in config.pbtxt: without one, it serves it
        # as batched (and refuses the unbatched dims).
        text = "max_batch_size: 0\n" + text
    return text


def write_config(path: str | os.PathLike[str], config: ModelConfig) -> Path:
    """Write ``config`` as ``config.pbtxt`` text, atomically (a polling server never sees half)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(config_text(config))
    os.replace(tmp, path)
    return path


def read_config(path: str | os.PathLike[str]) -> ModelConfig:
    """Parse a ``config.pbtxt``; a :class:`ConfigError` names the file when it does not parse."""
    path = Path(path)
    try:
        return text_format.Parse(path.read_text(), ModelConfig())
    except (OSError, text_format.ParseError) as exc:
        raise ConfigError(f"{path}: {exc}") from exc


def device_of(config: ModelConfig) -> str:
    """The device a config was written for, from its instance kind (``cpu`` without instances)."""
    kinds = {model_config_pb2.ModelInstanceGroup.Kind.Name(group.kind) for group in config.instance_group}
    return GPU if "KIND_GPU" in kinds else CPU


def instance_count(config: ModelConfig) -> int:
    """Instances a config asks for (per GPU for ``KIND_GPU``); a group without a count has one."""
    return sum(max(group.count, 1) for group in config.instance_group) or 1


def parameters_of(config: ModelConfig) -> dict[str, str]:
    """The ``parameters`` of a config as a plain ``{key: string_value}`` dict."""
    return {key: value.string_value for key, value in config.parameters.items()}
