"""The network on a CUDA GPU with PyTorch: FP16, channels_last, one CUDA graph per batch bucket.

The pip-installed Triton has no TensorRT backend and no TensorRT builder is installable here,
so on a GPU the ``efficientnet-b0`` model of a ``--target local`` repository hosts this
runtime in a Python-backend model. Why each choice (measured on an H100, see
``../shared/gpu/README.md`` and docs/performance.md):

- FP16 with channels_last is what the tensor cores want for depthwise-separable convolutions.
- A batch of EfficientNet at inference is hundreds of small kernels: launching them one by one
  costs more than running them, so each batch size is captured once as a CUDA graph and
  replayed. Graphs have static shapes, hence *buckets*: a batch of 37 runs in the 64 graph,
  padded with whatever the static buffer holds, and only the first 37 rows are returned.

The weights are the build's ``model.pt`` (a state dict with the architecture's name and input
size, loaded with ``weights_only``): the module is rebuilt from this package's code, so no
pickled code is ever loaded and the file does not depend on the torch version that wrote it.

Example::

    network = TorchCudaNetwork.from_file(version_dir / "model.pt", max_batch_size=64)
    logits = network(images)   # images: numpy [N,3,H,W] or a CUDA tensor; logits: numpy fp32
"""

from __future__ import annotations

import bisect
import logging
import os
import pickle
from collections.abc import Sequence
from typing import Any

import numpy as np

LOGGER = logging.getLogger(__name__)


def batch_buckets(max_batch_size: int) -> list[int]:
    """Powers of two up to ``max_batch_size``, and ``max_batch_size`` itself.

    >>> batch_buckets(48)
    [1, 2, 4, 8, 16, 32, 48]
    """
    if max_batch_size < 1:
        raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
    buckets, size = [], 1
    while size < max_batch_size:
        buckets.append(size)
        size *= 2
    return buckets + [max_batch_size]


def bucket_for(count: int, buckets: Sequence[int]) -> int:
    """The smallest bucket that holds ``count`` images; a larger batch is an error."""
    index = bisect.bisect_left(buckets, count)
    if count < 1 or index == len(buckets):
        raise ValueError(f"batch of {count} images does not fit the buckets {list(buckets)}")
    return buckets[index]


class TorchCudaNetwork:
    """An ``nn.Module`` replayed from CUDA graphs, one per batch bucket, in FP16 channels_last."""

    runtime = "torch-cuda"

    def __init__(
        self,
        module: Any,
        *,
        image_size: int,
        max_batch_size: int,
        device: str = "cuda:0",
        fp16: bool = True,
        cuda_graphs: bool = True,
    ) -> None:
        import torch

        self._torch = torch
        self.device = torch.device(device)
        self.dtype = torch.float16 if fp16 else torch.float32
        self.buckets = batch_buckets(max_batch_size)
        self._module = module.eval().to(self.device, dtype=self.dtype, memory_format=torch.channels_last)
        self._image_shape = (3, image_size, image_size)
        self._graphs: dict[int, tuple[Any, Any, Any]] = {}
        self._use_graphs = cuda_graphs and self.device.type == "cuda"
        if self._use_graphs:
            self._stream = torch.cuda.Stream(self.device)
            for bucket in self.buckets:
                self._capture(bucket)
        LOGGER.info(
            "torch network on %s (%s, channels_last, CUDA graphs for batches %s)",
            self.device,
            "FP16" if fp16 else "FP32",
            self.buckets if self._use_graphs else "off",
        )

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], *, max_batch_size: int, **kwargs: Any) -> TorchCudaNetwork:
        """Rebuild the network of the build's ``model.pt`` and capture its graphs.

        The file names its architecture and input size (see ``export.save_torch_weights``);
        it is read with ``weights_only=True`` and the module is rebuilt from this package's code.
        """
        import torch

        from bls_pipeline.networks.checkpoints import model_from_checkpoint

        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError) as exc:
            # torch's text names no file and runs over many lines: a failed server start must
            # say which file is corrupt.
            raise ValueError(f"{path} is not a readable torch network file ({type(exc).__name__})") from exc
        try:
            arch, image_size = str(saved["arch"]), int(saved["image_size"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path} is not a network file of this package's build (no arch/image_size)") from exc
        return cls(
            model_from_checkpoint(saved, arch, path), image_size=image_size, max_batch_size=max_batch_size, **kwargs
        )

    def _capture(self, bucket: int) -> None:
        torch = self._torch
        static_in = torch.zeros((bucket, *self._image_shape), device=self.device, dtype=self.dtype)
        static_in = static_in.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), torch.cuda.stream(self._stream):
            # cuDNN picks its kernels on the first runs; capture only after they are chosen.
            for _ in range(3):
                self._module(static_in)
            self._stream.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=self._stream):
                static_out = self._module(static_in)
        torch.cuda.current_stream(self.device).wait_stream(self._stream)
        self._graphs[bucket] = (graph, static_in, static_out)

    def logits(self, images: Any) -> Any:
        """Logits of a batch as a tensor on this network's device (FP32, ``[N, classes]``).

        ``images`` is anything ``torch.as_tensor`` or DLPack takes: a numpy array, a CPU or
        CUDA tensor, a DLPack capsule provider; it is cast and copied into the graph's input.
        """
        torch = self._torch
        batch = images if isinstance(images, torch.Tensor) else _as_torch(torch, images)
        count = int(batch.shape[0])
        with torch.inference_mode():
            if not self._use_graphs:
                batch = batch.to(self.device, dtype=self.dtype).contiguous(memory_format=torch.channels_last)
                return self._module(batch).float()
            graph, static_in, static_out = self._graphs[bucket_for(count, self.buckets)]
            static_in[:count].copy_(batch, non_blocking=True)
            graph.replay()
            # A copy: the next replay overwrites static_out while the caller may still read it.
            return static_out[:count].to(torch.float32, copy=True)

    def __call__(self, images: Any) -> np.ndarray:
        """Logits of a batch on the host: float32 numpy ``[N, classes]``."""
        return self.logits(images).cpu().numpy()


def _as_torch(torch: Any, images: Any) -> Any:
    if hasattr(images, "__dlpack__"):
        return torch.from_dlpack(images)
    return torch.as_tensor(np.ascontiguousarray(images))
