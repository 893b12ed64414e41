"""From a ``torch.save`` checkpoint to a ready model repository (``tools/build_repo.py``).

Steps, each reported through ``progress``: load the checkpoint (``weights_only=True``),
export ONNX with a dynamic batch axis, check it against torch, build a TensorRT engine where
TensorRT is available, then write the repository for the target.

The knobs are :class:`~bls_pipeline.builder.spec.BuildOptions`; :func:`plan_repository`
resolves them for the device into the :class:`~bls_pipeline.builder.repository.RepositorySpec`
that every writer (the ONNX export and check, the TensorRT engine, ``model.pt``, the configs)
takes its values from, and that the repository keeps as ``bls_build.json``.

Example::

    report = build_repository(BuildOptions(output=Path("build/model_repository")))
    print(report.spec.runtime, report.spec.crop, report.onnx_max_abs_diff)
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING

from bls_pipeline import contract
from bls_pipeline.builder.hosting import ModelHosting, choose_hosting
from bls_pipeline.builder.model_config import ONNXRUNTIME, TENSORRT, TORCH_CUDA
from bls_pipeline.builder.network_file import NetworkFile, check_fit, read_network_file
from bls_pipeline.builder.repository import RepositorySpec, prepare_output, write_repository
from bls_pipeline.builder.spec import BuildOptions
from bls_pipeline.builder.user_pipeline import ConvertedPipeline, PipelineSource, convert_for_repository
from bls_pipeline.errors import ConfigError
from bls_pipeline.layout import ONNX_FILE, PLAN_FILE, TORCH_WEIGHTS_FILE
from bls_pipeline.request.submodels import SubModels
from bls_pipeline.runtime.device import GPU, check_device, detect_device

if TYPE_CHECKING:
    from torch import nn

LOGGER = logging.getLogger(__name__)


@dataclass
class BuildReport:
    """What was built, for the CLI to print: the spec written into the repository, and how."""

    output: Path
    spec: RepositorySpec
    device_reason: str
    onnx_max_abs_diff: float
    tensorrt_note: str
    hosting: dict[str, ModelHosting]
    # A --network file: its description, and the classes the written repository's
    # preprocessing and that network gave the sample photographs (or why they could not run).
    network_file: str = ""
    network_check: list[str] | None = None


def plan_repository(
    options: BuildOptions,
    *,
    device: str,
    runtime: str,
    num_classes: int,
    converted: ConvertedPipeline | None,
    native_models: frozenset[str] = frozenset(),
) -> RepositorySpec:
    """The spec of the repository that ``options`` ask for on ``device``: every knob once, the
    unset ones at the device's defaults; the crop is the preprocessing's output (the user
    pipeline's, else the built-in crop), and every writer takes it from here."""
    tuned = options.tuned(device)
    knobs = {
        f.name: tuned.get(f.name, getattr(options, f.name)) for f in fields(RepositorySpec) if hasattr(options, f.name)
    }
    resolved = {
        "device": device,
        "runtime": runtime,
        "num_classes": num_classes,
        "preprocessing": options.preprocessing(),
        "user_pipeline": converted,
        "native_models": native_models,
    }
    return RepositorySpec(**{**knobs, **resolved})


def resolve_device(requested: str | None) -> tuple[str, str]:
    """The build's device and why: ``requested`` (``--device``), else the one detected here."""
    if requested is None:
        device, reason = detect_device()
        return device, f"detected: {reason}"
    return check_device(requested), "--device given"


def network_runtime(device: str, target: str, tensorrt_reason: str | None) -> tuple[str, str]:
    """The network's runtime on ``device`` for ``target``, and the build's note on it."""
    if tensorrt_reason is None:
        return TENSORRT, "TensorRT engine built"
    if device == GPU and target == "local":
        # The pip-installed server has no TensorRT backend and no TensorRT builder is
        # installable here: its GPU network runs on torch CUDA graphs (runtime.torch_network).
        return TORCH_CUDA, f"no TensorRT engine: {tensorrt_reason}; serving FP16 torch CUDA graphs (model.pt)"
    return ONNXRUNTIME, f"no TensorRT engine: {tensorrt_reason}; serving ONNX with ONNX Runtime"


def write_network_files(
    model: nn.Module, spec: RepositorySpec, directory: Path, *, arch: str, fp16: bool, progress: Callable[[str], None]
) -> tuple[list[Path], float]:
    """Export, check and convert the network for ``spec.crop`` into ``directory``: the files for
    ``spec.runtime`` (``model.onnx`` always), and the ONNX-vs-torch max abs difference."""
    from bls_pipeline.builder.export import build_tensorrt_engine, export_onnx, save_torch_weights, verify_onnx

    crop = spec.crop
    onnx_path = directory / ONNX_FILE
    progress(f"[2/5] exporting ONNX (dynamic batch, {crop}x{crop})")
    export_onnx(model, onnx_path, image_size=crop)
    progress("[3/5] checking ONNX Runtime against torch")
    diff = verify_onnx(model, onnx_path, image_size=crop)
    progress(f"      max |onnx - torch| = {diff:.2e}")
    files = [onnx_path]
    if spec.runtime == TENSORRT:
        plan = directory / PLAN_FILE
        progress(f"[4/5] building a TensorRT engine ({'FP16' if fp16 else 'FP32'}, max batch {spec.max_batch_size})")
        build_tensorrt_engine(onnx_path, plan, fp16=fp16, max_batch_size=spec.max_batch_size, image_size=crop)
        files.append(plan)
    elif spec.runtime == TORCH_CUDA:
        files.append(save_torch_weights(model, directory / TORCH_WEIGHTS_FILE, arch=arch, image_size=crop))
    return files, diff


def build_repository(options: BuildOptions, progress: Callable[[str], None] = LOGGER.info) -> BuildReport:
    """Build the repository described by ``options``; see the module docstring."""
    from bls_pipeline.builder.export import tensorrt_available
    from bls_pipeline.networks.checkpoints import default_checkpoint_path, load_checkpoint
    from bls_pipeline.request.postprocess import load_labels

    labels = load_labels(options.labels)
    device, device_reason = resolve_device(options.device)
    progress(f"device: {device} ({device_reason})")
    converted = None
    if options.dali_pipeline is not None:
        converted = convert_for_repository(
            PipelineSource.parse(options.dali_pipeline, options.pipeline_args),
            device=device,
            max_batch_size=options.max_batch_size,
            num_threads=options.tuned(device)["dali_threads"],
            progress=progress,
        )
    network_file, model = None, None
    if options.network is not None:
        network_file = read_given_network(Path(options.network), device)
        progress(f"[1/5] your network: {network_file.describe()}")
        runtime = TENSORRT if network_file.kind == TENSORRT else ONNXRUNTIME
        tensorrt_note = f"no export: serving {network_file.path.name} as it is ({network_file.served_name})"
    else:
        checkpoint = Path(options.checkpoint) if options.checkpoint else default_checkpoint_path()
        progress(f"[1/5] loading {checkpoint} as {options.arch} (weights only)")
        model = load_checkpoint(checkpoint, options.arch)
        reason = tensorrt_available() if device == GPU else "TensorRT runs only on a GPU and the device is cpu"
        runtime, tensorrt_note = network_runtime(device, options.target, reason)
        if runtime == TENSORRT:
            tensorrt_note += f" ({'FP16' if options.fp16 else 'FP32'})"
    hosting = choose_hosting(
        target=options.target,
        device=device,
        runtime=runtime,
        requested=options.hosting,
        backends_built=options.target == "local" and _native_backends_built(),
    )
    spec = plan_repository(
        options,
        device=device,
        runtime=runtime,
        num_classes=0,
        converted=converted,
        native_models=frozenset(model for model, choice in hosting.items() if choice.native),
    )
    if network_file is not None:
        check_fit(
            contract.preprocessed(contract.DALI_OUTPUT, spec.crop),
            network_file.input,
            preprocessing="the preprocessing",
            network=network_file.path.name,
        )
        spec = dataclasses.replace(
            spec,
            num_classes=network_file.num_classes,
            submodels=network_file.submodels(),
            network_output_dtype=network_file.output.data_type,
        )
    else:
        spec = dataclasses.replace(spec, num_classes=_count_classes(model, spec.crop))
    if len(labels) != spec.num_classes:
        source = "the network" if network_file else "the checkpoint"
        raise ConfigError(
            f"{source} has {spec.num_classes} classes but the labels have {len(labels)}: pass --labels FILE"
        )
    prepare_output(options.output, force=options.force)

    with tempfile.TemporaryDirectory(prefix="build-repo-", dir=options.output) as scratch:
        if network_file is not None:
            served = Path(scratch) / network_file.served_name
            shutil.copyfile(network_file.path, served)
            network_files, diff = [served], 0.0
            progress(f"[2-4/5] {tensorrt_note}")
        else:
            network_files, diff = write_network_files(
                model, spec, Path(scratch), arch=options.arch, fp16=options.fp16, progress=progress
            )
            if runtime != TENSORRT:
                progress(f"[4/5] {tensorrt_note}")
        for name, choice in hosting.items():
            progress(f"      {choice.describe(name)}")
        progress(f"[5/5] writing the {options.target} repository for {device} to {options.output}")
        write_repository(options.output, spec, labels=labels, network_files=network_files)
    network_check = None
    if network_file is not None:
        network_check = check_served_network(options.output, spec.submodels, device=device, labels=labels)
        progress("      the written preprocessing and your network on the sample photographs:")
        for line in network_check:
            progress(f"        {line}")
    return BuildReport(
        output=options.output,
        spec=spec,
        device_reason=device_reason,
        onnx_max_abs_diff=diff,
        tensorrt_note=tensorrt_note,
        hosting=hosting,
        network_file=network_file.describe() if network_file else "",
        network_check=network_check,
    )


def read_given_network(path: Path, device: str) -> NetworkFile:
    """The ``--network`` file, refused in one line where it cannot serve as the network."""
    network = read_network_file(path)
    if network.kind == TENSORRT and device != GPU:
        raise ConfigError(f"{network.path.name} is a TensorRT plan: it runs only on a GPU (--device gpu)")
    if network.batch > 0:
        raise ConfigError(
            f"{network.path.name} has a fixed batch of {network.batch} ({network.input.name}); "
            "the classifier batches images: export it with a dynamic batch axis"
        )
    return network


def check_served_network(repository: Path, wiring: SubModels, *, device: str, labels: Sequence[str]) -> list[str]:
    """The built repository's preprocessing and network, in process, on the sample photographs:
    the classes they give, or why they cannot run here (a TensorRT plan without TensorRT)."""
    import numpy as np

    from bls_pipeline.builder.user_pipeline import sample_photos
    from bls_pipeline.runtime.dali import DaliPreprocessor
    from bls_pipeline.runtime.network import gpu_runtime_missing, load_network

    if device == GPU and (detect_device()[0] != GPU or gpu_runtime_missing()):
        return [f"not run here: the repository is for --device gpu ({detect_device()[1]}); serve it on the GPU machine"]
    preprocess = DaliPreprocessor.from_version_dir(
        repository / contract.PREPROCESSING / "1", on_device=device == GPU, max_batch_size=16
    )
    try:
        network = load_network(repository / contract.NETWORK / "1", device=device)
    except FileNotFoundError as exc:
        return [f"not run here: {exc}"]
    photos = sample_photos()
    images = preprocess([np.fromfile(photo, np.uint8) for photo in photos])
    classes = network(images.astype(np.float16) if wiring.casts_to_fp16 else images).argmax(axis=1)
    return [f"{photo.name}: class {index} ({labels[index]})" for photo, index in zip(photos, classes)]


def _count_classes(model, crop: int) -> int:
    import torch

    with torch.no_grad():
        return int(model(torch.zeros(1, 3, crop, crop)).shape[-1])


def _native_backends_built() -> bool:
    # Imported here: the backends' lookup reads the installed packages' versions.
    from bls_pipeline.backends import native_backends_dir

    return native_backends_dir() is not None
