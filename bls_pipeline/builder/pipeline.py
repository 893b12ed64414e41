"""From a ``torch.save`` checkpoint to a ready model repository (``tools/build_repo.py``).

Steps, each reported through ``progress``: load the checkpoint (``weights_only=True``),
export ONNX with a dynamic batch axis, check it against torch, build a TensorRT engine where
TensorRT is available, then write the repository for the target.

Example::

    report = build_repository(BuildOptions(output=Path("build/model_repository")))
    print(report.runtime, report.onnx_max_abs_diff)
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from bls_pipeline.errors import ConfigError
from bls_pipeline.layout import ONNX_FILE, PLAN_FILE, TORCH_WEIGHTS_FILE
from bls_pipeline.networks.preprocessing import PreprocessingSettings
from bls_pipeline.builder.user_pipeline import ConvertedPipeline, PipelineSource, convert_for_repository
from bls_pipeline.runtime.device import CPU, GPU, check_device, detect_device
from bls_pipeline.builder.hosting import AUTO, ModelHosting, choose_hosting
from bls_pipeline.builder.repository import (
    RepositorySpec,
    prepare_output,
    preprocessing_defaults,
    write_repository,
)

LOGGER = logging.getLogger(__name__)

DEFAULT_ARCH = "efficientnet-lite0"


# Serving defaults per device, chosen by measurement on an H100 (docs/performance.md). The mixed
# decoder's CPU side (Huffman decoding of what the hardware decoder does not take) needs more
# than 2 threads (in process, batch 128: 2,165 images/s with 2, 13,770 with 8); the
# classifier's Python work limits one instance to about 1,300 images/s (8 instances: 3,688).
DEVICE_DEFAULTS = {
    CPU: {"dali_threads": 2, "hw_decoder_load": 0.65, "preprocessing_instances": 1, "classifier_instances": 1},
    # Measured on an H100 (docs/performance.md): two DALI instances overlap one batch's host work with
    # the other's GPU work (6,432 vs 5,344 images/s at 32 images per request; 4,121 vs 3,841
    # one image per request); 12 classifier instances were slower than 8.
    GPU: {"dali_threads": 8, "hw_decoder_load": 0.65, "preprocessing_instances": 2, "classifier_instances": 8},
}


@dataclass
class BuildOptions:
    """What ``tools/build_repo.py`` takes; ``None`` means "the default for the architecture"."""

    output: Path
    checkpoint: Path | None = None
    arch: str = DEFAULT_ARCH
    labels: Path | None = None
    target: str = "local"
    # None: detect_device() (gpu when a CUDA device is visible here, else cpu).
    device: str | None = None
    max_batch_size: int = 64
    fp16: bool = True
    force: bool = False
    preprocessing: PreprocessingSettings | None = None
    dali_autoconfig: bool = False
    # None: the device's default (DEVICE_DEFAULTS), measured on each device.
    dali_threads: int | None = None
    hw_decoder_load: float | None = None
    preprocessing_instances: int | None = None
    network_instances: int = 1
    classifier_instances: int | None = None
    gpus: tuple[int, ...] = ()
    network_threads: int = 0
    max_image_bytes: int | None = None
    max_image_pixels: int | None = None
    max_request_bytes: int | None = None
    queue_delay_us: int = 0
    # The user's DALI validation pipeline, served instead of the built-in preprocessing.
    dali_pipeline: PipelineSource | None = None
    # auto: Triton's own DALI / ONNX Runtime backends where tools/build_backends.py built them
    # (local target), else Python-backend models; native or python to insist (builder.hosting).
    hosting: str = AUTO


@dataclass
class BuildReport:
    """What was built, for the CLI to print."""

    output: Path
    num_classes: int
    device: str
    device_reason: str
    runtime: str
    onnx_max_abs_diff: float
    tensorrt_note: str
    preprocessing: PreprocessingSettings
    hosting: dict[str, ModelHosting]
    user_pipeline: ConvertedPipeline | None = None


def serving_tuning(options: BuildOptions, device: str) -> dict[str, int | float]:
    """The serving knobs of ``options``, each left unset taking ``device``'s default."""
    return {key: default if getattr(options, key) is None else getattr(options, key) for key, default in DEVICE_DEFAULTS[device].items()}


def build_repository(options: BuildOptions, progress: Callable[[str], None] = LOGGER.info) -> BuildReport:
    """Build the repository described by ``options``; see the module docstring."""
    from bls_pipeline.networks.checkpoints import default_checkpoint_path, load_checkpoint
    from bls_pipeline.builder.export import (
        build_tensorrt_engine,
        export_onnx,
        save_torch_weights,
        tensorrt_available,
        verify_onnx,
    )
    from bls_pipeline.request.postprocess import load_labels

    checkpoint = Path(options.checkpoint) if options.checkpoint else default_checkpoint_path()
    preprocessing = options.preprocessing or preprocessing_defaults(options.arch)
    labels = load_labels(options.labels)
    if options.device is None:
        device, device_reason = detect_device()
        device_reason = f"detected: {device_reason}"
    else:
        device, device_reason = check_device(options.device), "--device given"
    progress(f"device: {device} ({device_reason})")
    tuning = serving_tuning(options, device)
    converted = None
    if options.dali_pipeline is not None:
        converted = convert_for_repository(
            options.dali_pipeline,
            device=device,
            max_batch_size=options.max_batch_size,
            num_threads=tuning["dali_threads"],
            progress=progress,
        )
    # The network's input size: the user pipeline's output, else the built-in crop.
    crop = converted.crop if converted else preprocessing.crop
    progress(f"[1/5] loading {checkpoint} as {options.arch} (weights only)")
    model = load_checkpoint(checkpoint, options.arch)
    num_classes = _count_classes(model, crop)
    if len(labels) != num_classes:
        raise ConfigError(
            f"the checkpoint has {num_classes} classes but the labels have {len(labels)}: pass --labels FILE"
        )
    prepare_output(options.output, force=options.force)

    with tempfile.TemporaryDirectory(prefix="build-repo-", dir=options.output) as scratch:
        onnx_path = Path(scratch) / ONNX_FILE
        progress(f"[2/5] exporting ONNX (dynamic batch, {crop}x{crop})")
        export_onnx(model, onnx_path, image_size=crop)
        progress("[3/5] checking ONNX Runtime against torch")
        diff = verify_onnx(model, onnx_path, image_size=crop)
        progress(f"      max |onnx - torch| = {diff:.2e}")
        network_files = [onnx_path]
        reason = tensorrt_available() if device == GPU else "TensorRT runs only on a GPU and the device is cpu"
        if reason is None:
            plan = Path(scratch) / PLAN_FILE
            progress(f"[4/5] building a TensorRT engine ({'FP16' if options.fp16 else 'FP32'}, max batch {options.max_batch_size})")
            build_tensorrt_engine(
                onnx_path, plan, fp16=options.fp16, max_batch_size=options.max_batch_size, image_size=crop
            )
            network_files.append(plan)
            runtime, tensorrt_note = "tensorrt", f"TensorRT engine built ({'FP16' if options.fp16 else 'FP32'})"
        else:
            runtime, tensorrt_note = "onnxruntime", f"no TensorRT engine: {reason}; serving ONNX with ONNX Runtime"
            if device == GPU and options.target == "local":
                # The pip-installed server has no TensorRT backend and no TensorRT builder is
                # installable here: its GPU network runs on torch CUDA graphs (runtime.torch_network).
                network_files.append(
                    save_torch_weights(model, Path(scratch) / TORCH_WEIGHTS_FILE, arch=options.arch, image_size=preprocessing.crop)
                )
                runtime, tensorrt_note = "torch-cuda", f"no TensorRT engine: {reason}; serving FP16 torch CUDA graphs (model.pt)"
            progress(f"[4/5] {tensorrt_note}")
        hosting = choose_hosting(
            target=options.target,
            device=device,
            runtime=runtime,
            requested=options.hosting,
            backends_built=options.target == "local" and _native_backends_built(),
        )
        for model, choice in hosting.items():
            progress(f"      {choice.describe(model)}")
        spec = RepositorySpec(
            target=options.target,
            native_models=frozenset(model for model, choice in hosting.items() if choice.native),
            device=device,
            max_batch_size=options.max_batch_size,
            num_classes=num_classes,
            # The config's runtime: a Python-backend network picks torch itself from model.pt.
            runtime="onnxruntime" if runtime == "torch-cuda" else runtime,
            preprocessing=preprocessing,
            dali_threads=tuning["dali_threads"],
            hw_decoder_load=tuning["hw_decoder_load"],
            preprocessing_instances=tuning["preprocessing_instances"],
            network_instances=options.network_instances,
            classifier_instances=tuning["classifier_instances"],
            gpus=tuple(options.gpus),
            dali_autoconfig=options.dali_autoconfig,
            network_threads=options.network_threads,
            max_image_bytes=options.max_image_bytes,
            max_image_pixels=options.max_image_pixels,
            max_request_bytes=options.max_request_bytes,
            queue_delay_us=options.queue_delay_us,
            user_pipeline=converted,
        )
        progress(f"[5/5] writing the {options.target} repository for {device} to {options.output}")
        write_repository(options.output, spec, labels=labels, network_files=network_files)
    return BuildReport(
        output=options.output,
        num_classes=num_classes,
        device=device,
        device_reason=device_reason,
        runtime=runtime,
        onnx_max_abs_diff=diff,
        tensorrt_note=tensorrt_note,
        hosting=hosting,
        preprocessing=preprocessing,
        user_pipeline=converted,
    )


def _count_classes(model, crop: int) -> int:
    import torch

    with torch.no_grad():
        return int(model(torch.zeros(1, 3, crop, crop)).shape[-1])


def _native_backends_built() -> bool:
    # Imported here: the repository build does not otherwise depend on the developer tools.
    from bls_pipeline.backends import native_backends_dir

    return native_backends_dir() is not None
