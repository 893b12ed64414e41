"""Run the exported network in this process: TensorRT when installed, else ONNX Runtime.

The ``efficientnet-b0`` model of a ``--target local`` repository hosts one of these; the tests'
in-process reference and the benchmark use the same class, so "same runtime" is literal.

Example::

    network = load_network(repo / "efficientnet-b0" / "1")
    logits = network(images)   # float32 [N, num_classes]
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Mapping, Protocol

import numpy as np

LOGGER = logging.getLogger(__name__)

ONNX_FILE = "model.onnx"
PLAN_FILE = "model.plan"


class Network(Protocol):
    """Anything that maps a float32 ``[N, 3, H, W]`` batch to float32 logits ``[N, C]``."""

    runtime: str

    def __call__(self, images: np.ndarray) -> np.ndarray: ...


class OnnxRuntimeNetwork:
    """An ONNX model on ONNX Runtime's CPU (or CUDA, when that provider is installed)."""

    runtime = "onnxruntime"

    def __init__(self, path: str | os.PathLike[str], *, intra_op_threads: int = 0, allow_spinning: bool = True) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        # 0 lets ONNX Runtime use one thread per physical core.
        options.intra_op_num_threads = intra_op_threads
        if not allow_spinning:
            # Idle pool threads otherwise busy-wait for the next run: in a server that shares
            # its cores with DALI and the Python stubs, that burns the cores they need.
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        providers = [
            provider
            for provider in ("CUDAExecutionProvider", "CPUExecutionProvider")
            if provider in ort.get_available_providers()
        ]
        self._session = ort.InferenceSession(os.fspath(path), options, providers=providers)
        self._input = self._session.get_inputs()[0].name
        self._output = self._session.get_outputs()[0].name
        LOGGER.info("ONNX Runtime network %s on %s", path, self._session.get_providers()[0])

    def __call__(self, images: np.ndarray) -> np.ndarray:
        (logits,) = self._session.run([self._output], {self._input: images})
        return logits


class TensorRTNetwork:
    """A serialized TensorRT engine (``model.plan``), run with the TensorRT 10 tensor API."""

    runtime = "tensorrt"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        import tensorrt as trt
        import torch

        self._torch = torch
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self._engine = runtime.deserialize_cuda_engine(Path(path).read_bytes())
        if self._engine is None:
            raise RuntimeError(f"TensorRT could not deserialize {path}")
        self._context = self._engine.create_execution_context()
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        self._input = next(n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
        self._output = next(n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT)
        LOGGER.info("TensorRT network %s", path)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        torch = self._torch
        batch = torch.from_numpy(np.ascontiguousarray(images)).cuda()
        self._context.set_input_shape(self._input, tuple(batch.shape))
        out_shape = tuple(self._context.get_tensor_shape(self._output))
        logits = torch.empty(out_shape, dtype=torch.float32, device="cuda")
        self._context.set_tensor_address(self._input, batch.data_ptr())
        self._context.set_tensor_address(self._output, logits.data_ptr())
        stream = torch.cuda.current_stream()
        if not self._context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed")
        stream.synchronize()
        return logits.cpu().numpy()


def tensorrt_importable() -> bool:
    """Whether the TensorRT Python runtime can be imported here."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return False
    return True


def network_options(parameters: Mapping[str, str]) -> dict[str, Any]:
    """The :func:`load_network` keywords that a network model's config ``parameters`` set.

    ``intra_op_threads`` (default 0, one per core) and ``allow_spinning`` (default on, as in
    ONNX Runtime; ``"0"`` turns it off).
    """
    return {
        "intra_op_threads": int(parameters.get("intra_op_threads", 0)),
        "allow_spinning": parameters.get("allow_spinning", "1") != "0",
    }


def load_network(
    version_dir: str | os.PathLike[str], *, intra_op_threads: int = 0, allow_spinning: bool = True
) -> Network:
    """The network of a model version directory: ``model.plan`` on TensorRT if it exists and
    TensorRT is importable, else ``model.onnx`` on ONNX Runtime (``intra_op_threads`` and
    ``allow_spinning`` apply to ONNX Runtime only)."""
    version_dir = Path(version_dir)
    plan, onnx_path = version_dir / PLAN_FILE, version_dir / ONNX_FILE
    if plan.is_file() and tensorrt_importable():
        return TensorRTNetwork(plan)
    if not onnx_path.is_file():
        raise FileNotFoundError(f"no network file: expected {onnx_path} (or {plan} with TensorRT installed)")
    if plan.is_file():
        LOGGER.warning("%s exists but TensorRT is not importable: using %s", plan, onnx_path)
    return OnnxRuntimeNetwork(onnx_path, intra_op_threads=intra_op_threads, allow_spinning=allow_spinning)
