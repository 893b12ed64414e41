"""Run the exported network in this process, on the repository's device.

The ``efficientnet-b0`` model of a ``--target local`` repository hosts one of these; the tests'
in-process reference and the benchmark use the same class, so "same runtime" is literal.
``device`` (the repository's one setting, see :mod:`bls_pipeline.runtime.device`) decides
where it runs: ``cpu`` is ONNX Runtime's CPU provider whatever else is installed; ``gpu`` is
TensorRT when the engine and its runtime exist, else ONNX Runtime's CUDA provider. On a GPU
the input may be a CUDA tensor (torch, from DLPack) and stays there; only the logits come
back to the host.

Example::

    network = load_network(repo / "efficientnet-b0" / "1", device="cpu")
    logits = network(images)   # float32 [N, num_classes], numpy
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from bls_pipeline.layout import ONNX_FILE, PLAN_FILE, TORCH_WEIGHTS_FILE
from bls_pipeline.runtime.device import CPU, GPU, check_device

LOGGER = logging.getLogger(__name__)


class Network(Protocol):
    """Maps a float32 ``[N, 3, H, W]`` batch (numpy, or a CUDA tensor on a GPU) to host logits ``[N, C]``."""

    runtime: str

    def __call__(self, images: Any) -> np.ndarray: ...


class OnnxRuntimeNetwork:
    """An ONNX model on ONNX Runtime, on the CPU provider or, for ``device="gpu"``, the CUDA one."""

    runtime = "onnxruntime"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        device: str = CPU,
        gpu_id: int = 0,
        intra_op_threads: int = 0,
        allow_spinning: bool = True,
    ) -> None:
        import onnxruntime as ort

        self._device, self._gpu_id = check_device(device), gpu_id
        if device == GPU and "CUDAExecutionProvider" not in ort.get_available_providers():
            raise RuntimeError(
                "the repository's device is gpu but this ONNX Runtime has no CUDAExecutionProvider "
                "(install onnxruntime-gpu, or rebuild the repository with --device cpu)"
            )

        options = ort.SessionOptions()
        # 0 lets ONNX Runtime use one thread per physical core.
        options.intra_op_num_threads = intra_op_threads
        if not allow_spinning:
            # Idle pool threads otherwise busy-wait for the next run: in a server that shares
            # its cores with DALI and the Python stubs, that burns the cores they need.
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        providers: list[Any] = (
            [("CUDAExecutionProvider", {"device_id": gpu_id})] if device == GPU else ["CPUExecutionProvider"]
        )
        self._session = ort.InferenceSession(os.fspath(path), options, providers=providers)
        self._input = self._session.get_inputs()[0].name
        self._output = self._session.get_outputs()[0].name
        LOGGER.info("ONNX Runtime network %s on %s", path, self._session.get_providers()[0])

    def __call__(self, images: Any) -> np.ndarray:
        if isinstance(images, np.ndarray):
            (logits,) = self._session.run([self._output], {self._input: images})
            return logits
        # A CUDA tensor (torch): bind its memory as the input, so that it is not copied to
        # the host and back; only the logits are.
        images = images.contiguous()
        binding = self._session.io_binding()
        binding.bind_input(self._input, "cuda", self._gpu_id, np.float32, list(images.shape), images.data_ptr())
        binding.bind_output(self._output, "cpu")
        self._session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0]


class TensorRTNetwork:
    """A serialized TensorRT engine (``model.plan``), run with the TensorRT 10 tensor API."""

    runtime = "tensorrt"

    def __init__(self, path: str | os.PathLike[str], *, gpu_id: int = 0) -> None:
        import tensorrt as trt
        import torch

        self._torch, self._gpu = torch, torch.device("cuda", gpu_id)
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self._engine = runtime.deserialize_cuda_engine(Path(path).read_bytes())
        if self._engine is None:
            raise RuntimeError(f"TensorRT could not deserialize {path}")
        self._context = self._engine.create_execution_context()
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        self._input = next(n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
        self._output = next(n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT)
        LOGGER.info("TensorRT network %s", path)

    def __call__(self, images: Any) -> np.ndarray:
        torch = self._torch
        batch = images if torch.is_tensor(images) else torch.from_numpy(np.ascontiguousarray(images))
        batch = batch.to(self._gpu).contiguous()
        self._context.set_input_shape(self._input, tuple(batch.shape))
        out_shape = tuple(self._context.get_tensor_shape(self._output))
        logits = torch.empty(out_shape, dtype=torch.float32, device=self._gpu)
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


def gpu_runtime_missing() -> str | None:
    """Why the network cannot run on a GPU here, or ``None`` when a GPU runtime is installed."""
    if tensorrt_importable():
        return None
    try:
        import torch

        if torch.cuda.is_available():
            return None
    except ImportError:
        pass
    try:
        import onnxruntime as ort
    except ImportError:
        return "no GPU network runtime: neither TensorRT, torch with CUDA nor ONNX Runtime is importable"
    if "CUDAExecutionProvider" in ort.get_available_providers():
        return None
    return (
        "no GPU network runtime: no TensorRT, torch sees no CUDA device and ONNX Runtime has no CUDAExecutionProvider"
    )


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
    version_dir: str | os.PathLike[str],
    *,
    device: str = CPU,
    gpu_id: int = 0,
    intra_op_threads: int = 0,
    allow_spinning: bool = True,
    max_batch_size: int = 64,
) -> Network:
    """The network of a model version directory, on ``device``.

    ``cpu``: ``model.onnx`` on ONNX Runtime's CPU provider (``intra_op_threads`` and
    ``allow_spinning`` apply). ``gpu``: ``model.plan`` on TensorRT when it exists and TensorRT
    is importable, else the build's ``model.pt`` on torch CUDA (FP16, one CUDA graph per batch
    bucket up to ``max_batch_size``: measured fastest where TensorRT is missing, see docs/performance.md),
    else ``model.onnx`` on ONNX Runtime's CUDA provider (an error when that provider is missing:
    a GPU repository is never served on the CPU by accident).
    """
    version_dir = Path(version_dir)
    plan, onnx_path = version_dir / PLAN_FILE, version_dir / ONNX_FILE
    if check_device(device) == GPU:
        # The seam for more GPU runtimes (e.g. torch CUDA graphs): each takes a CUDA tensor.
        if plan.is_file() and tensorrt_importable():
            return TensorRTNetwork(plan, gpu_id=gpu_id)
        if plan.is_file():
            LOGGER.warning("%s exists but TensorRT is not importable: using the next GPU runtime", plan)
        torch_weights = version_dir / TORCH_WEIGHTS_FILE
        if torch_weights.is_file():
            from bls_pipeline.runtime.torch_network import TorchCudaNetwork

            return TorchCudaNetwork.from_file(torch_weights, max_batch_size=max_batch_size, device=f"cuda:{gpu_id}")
    if not onnx_path.is_file():
        raise FileNotFoundError(f"no network file: expected {onnx_path} (or {plan} with TensorRT installed)")
    return OnnxRuntimeNetwork(
        onnx_path, device=device, gpu_id=gpu_id, intra_op_threads=intra_op_threads, allow_spinning=allow_spinning
    )
