"""Exporting the network: ONNX with a dynamic batch axis, checked against torch, and a
TensorRT engine built from that ONNX file where TensorRT is available.

The tensor names are the contract's (:mod:`bls_pipeline.contract`): input ``INPUT`` float32
``[B, 3, H, W]``, output ``OUTPUT`` float32 ``[B, num_classes]`` (logits).

Example::

    onnx_path = export_onnx(model, repo / "efficientnet-b0" / "1" / "model.onnx")
    verify_onnx(model, onnx_path)
    if tensorrt_available() is None:
        build_tensorrt_engine(onnx_path, plan_path, fp16=True, max_batch_size=64)
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from bls_pipeline.contract import NETWORK_INPUT as INPUT_NAME
from bls_pipeline.contract import NETWORK_OUTPUT as OUTPUT_NAME
from bls_pipeline.errors import ExportError

LOGGER = logging.getLogger(__name__)

DEFAULT_OPSET = 17
DEFAULT_WORKSPACE_BYTES = 1 << 30


@contextmanager
def _atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path`` and move it into place only on success.

    A Triton server polling the repository must never see a half-written model file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_torch_weights(model: nn.Module, path: str | Path, *, arch: str, image_size: int, fp16: bool = True) -> Path:
    """Write the network for the GPU torch runtime (``runtime.torch_network``).

    ``{"arch", "image_size", "state_dict"}``: tensors, strings and numbers only, FP16 by
    default (the runtime computes in FP16: half the file, nothing lost), so the server loads it
    with ``weights_only=True`` and rebuilds the architecture from code: no pickled module, and
    no TorchScript tied to the torch version that wrote it.
    """
    path = Path(path)
    state = {
        key: (value.half() if fp16 and value.is_floating_point() else value).detach().cpu().contiguous()
        for key, value in model.state_dict().items()
    }
    with _atomic_path(path) as tmp:
        torch.save({"arch": arch, "image_size": int(image_size), "state_dict": state}, tmp)
    return path


def export_onnx(model: nn.Module, path: str | Path, *, image_size: int = 224, opset: int = DEFAULT_OPSET) -> Path:
    """Export ``model`` to ONNX at ``path`` with a dynamic batch axis; return ``path``.

    Uses the TorchScript-based exporter (``dynamo=False``): the newer exporter needs
    ``onnxscript``, which is not a dependency of this project.
    """
    import onnx

    path = Path(path)
    model.eval()
    # A batch of 2 keeps the tracer from specialising anything on a batch of 1.
    example = torch.randn(2, 3, image_size, image_size)
    LOGGER.info("exporting ONNX (opset %d, input %dx%d) to %s", opset, image_size, image_size, path)
    with _atomic_path(path) as tmp:
        try:
            with warnings.catch_warnings(), torch.no_grad():
                # Expected noise: the legacy exporter announces its own deprecation, and notes
                # slices it leaves unfolded (the graph stays correct, as verify_onnx checks).
                warnings.filterwarnings("ignore", category=DeprecationWarning)
                warnings.filterwarnings("ignore", message="Constant folding - Only steps=1")
                torch.onnx.export(
                    model,
                    (example,),
                    str(tmp),
                    input_names=[INPUT_NAME],
                    output_names=[OUTPUT_NAME],
                    dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                    opset_version=opset,
                    do_constant_folding=True,
                    dynamo=False,
                )
            onnx.checker.check_model(str(tmp))
        except (RuntimeError, ValueError, onnx.checker.ValidationError) as exc:
            raise ExportError(f"ONNX export of {type(model).__name__} failed: {exc}") from exc
    LOGGER.info("wrote %s (%.1f MB)", path, path.stat().st_size / 1e6)
    return path


def verify_onnx(
    model: nn.Module,
    onnx_path: str | Path,
    *,
    image_size: int = 224,
    batch_sizes: Sequence[int] = (1, 3),
    atol: float = 1e-4,
) -> float:
    """Compare ONNX Runtime with torch on random inputs; return the largest absolute difference.

    Several batch sizes check that the batch axis really is dynamic. Raises
    :class:`ExportError` when an output shape differs or the difference exceeds ``atol``.
    """
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    model.eval()
    generator = torch.Generator().manual_seed(0)
    worst = 0.0
    for batch in batch_sizes:
        images = torch.randn(batch, 3, image_size, image_size, generator=generator)
        with torch.no_grad():
            expected = model(images).numpy()
        (actual,) = session.run([OUTPUT_NAME], {INPUT_NAME: images.numpy()})
        if actual.shape != expected.shape:
            raise ExportError(
                f"{onnx_path}: output shape {actual.shape} != torch's {expected.shape} at batch size {batch}"
            )
        diff = float(np.max(np.abs(actual - expected)))
        LOGGER.info("ONNX Runtime vs torch at batch size %d: max abs diff %.2e", batch, diff)
        worst = max(worst, diff)
    if worst > atol:
        raise ExportError(f"{onnx_path}: ONNX Runtime differs from torch by {worst:.2e} > {atol:.0e}")
    return worst


def _tensorrt_module() -> Any | None:
    try:
        import tensorrt
    except ImportError:
        return None
    return tensorrt


def tensorrt_available() -> str | None:
    """``None`` if a TensorRT engine can be built here, else the reason it cannot."""
    if _tensorrt_module() is not None or shutil.which("trtexec") is not None:
        return None
    return "TensorRT Python package not importable and no trtexec on PATH"


def _profile_shapes(max_batch_size: int, image_size: int) -> dict[str, tuple[int, ...]]:
    optimal = max(1, max_batch_size // 2)
    return {
        name: (batch, 3, image_size, image_size)
        for name, batch in (("min", 1), ("opt", optimal), ("max", max_batch_size))
    }


def _build_with_python_api(
    trt: Any, onnx_path: Path, fp16: bool, shapes: dict[str, tuple[int, ...]], workspace: int
) -> bytes:
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    major = int(trt.__version__.split(".")[0])
    # TensorRT 10 networks are always explicit-batch; 8.x still needs the flag.
    flags = 0 if major >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"TensorRT cannot parse {onnx_path}: {errors or 'no parser error given'}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace)
    if fp16:
        fp16_flag = getattr(trt.BuilderFlag, "FP16", None)
        if fp16_flag is None:
            # TensorRT 11 removed weak typing: FP16 would need a mixed-precision ONNX file.
            LOGGER.warning("TensorRT %s has no FP16 builder flag: building FP32", major)
        else:
            config.set_flag(fp16_flag)
    profile = builder.create_optimization_profile()
    profile.set_shape(INPUT_NAME, shapes["min"], shapes["opt"], shapes["max"])
    config.add_optimization_profile(profile)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError(f"TensorRT failed to build an engine from {onnx_path} (see its log above)")
    return bytes(serialized)


def _build_with_trtexec(
    trtexec: str,
    onnx_path: Path,
    plan_path: Path,
    fp16: bool,
    shapes: dict[str, tuple[int, ...]],
    workspace: int,
) -> None:
    def shape_arg(shape: tuple[int, ...]) -> str:
        return f"{INPUT_NAME}:{'x'.join(map(str, shape))}"

    command = [
        trtexec,
        f"--onnx={onnx_path}",
        f"--saveEngine={plan_path}",
        f"--minShapes={shape_arg(shapes['min'])}",
        f"--optShapes={shape_arg(shapes['opt'])}",
        f"--maxShapes={shape_arg(shapes['max'])}",
        f"--memPoolSize=workspace:{workspace // (1 << 20)}M",
    ]
    if fp16:
        command.append("--fp16")
    LOGGER.info("running %s", " ".join(command))
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-20:])
        raise ExportError(f"trtexec failed with exit code {result.returncode}:\n{tail}")


def build_tensorrt_engine(
    onnx_path: str | Path,
    plan_path: str | Path,
    *,
    fp16: bool,
    max_batch_size: int,
    image_size: int = 224,
    workspace_bytes: int = DEFAULT_WORKSPACE_BYTES,
) -> Path:
    """Build a TensorRT engine (``model.plan``) from ``onnx_path``; return ``plan_path``.

    One optimization profile covers batch sizes 1 to ``max_batch_size`` (optimised for half
    of it). Uses the TensorRT Python API when importable, else ``trtexec``; raises
    :class:`ExportError` with the parser's or trtexec's errors on failure.
    """
    if max_batch_size < 1:
        raise ExportError(f"max_batch_size must be at least 1, got {max_batch_size}")
    onnx_path, plan_path = Path(onnx_path), Path(plan_path)
    shapes = _profile_shapes(max_batch_size, image_size)
    trt = _tensorrt_module()
    trtexec = shutil.which("trtexec")
    reason = tensorrt_available()
    if reason is not None:
        raise ExportError(f"cannot build a TensorRT engine: {reason}")

    precision = "FP16" if fp16 else "FP32"
    with _atomic_path(plan_path) as tmp:
        if trt is not None:
            LOGGER.info(
                "building %s TensorRT %s engine, batch 1..%d, from %s (takes minutes)",
                precision,
                trt.__version__,
                max_batch_size,
                onnx_path,
            )
            tmp.write_bytes(_build_with_python_api(trt, onnx_path, fp16, shapes, workspace_bytes))
        elif trtexec is not None:
            LOGGER.info(
                "building %s TensorRT engine with trtexec, batch 1..%d, from %s (takes minutes)",
                precision,
                max_batch_size,
                onnx_path,
            )
            _build_with_trtexec(trtexec, onnx_path, tmp, fp16, shapes, workspace_bytes)
        if tmp.stat().st_size == 0:
            raise ExportError(f"TensorRT wrote an empty engine for {onnx_path}")
    LOGGER.info("wrote %s (%.1f MB)", plan_path, plan_path.stat().st_size / 1e6)
    return plan_path
