"""Which server component hosts each sub-model: Triton's own backend or a Python-backend model.

The NVIDIA Triton container has Triton's DALI, ONNX Runtime and TensorRT backends. The
pip-installed server has only the Python backend, until ``tools/build_backends.py`` builds
Triton's DALI and ONNX Runtime backends for it; then the local repository is the container's
layout too (``backend: "dali"``, ``platform: "onnxruntime_onnx"``), and the Python-hosted
models remain as the fallback where the backends cannot be built.

Example::

    choose_hosting(target="local", device="cpu", runtime="onnxruntime", requested="auto",
                   backends_built=True)[PREPROCESSING].native   # True
"""

from __future__ import annotations

from dataclasses import dataclass

from bls_pipeline.builder.model_config import NETWORK, PREPROCESSING, check_target
from bls_pipeline.errors import ConfigError
from bls_pipeline.runtime.device import GPU

AUTO, NATIVE, PYTHON = "auto", "native", "python"
HOSTINGS = (AUTO, NATIVE, PYTHON)
BUILD_HINT = "python tools/build_backends.py builds them"


@dataclass(frozen=True)
class ModelHosting:
    """How one sub-model is hosted, and why (printed by the build)."""

    native: bool
    reason: str

    def describe(self, model: str) -> str:
        """One line for the build output."""
        return f"{model}: {'Triton backend' if self.native else 'Python backend'} ({self.reason})"


def choose_hosting(
    *, target: str, device: str, runtime: str, requested: str, backends_built: bool
) -> dict[str, ModelHosting]:
    """The hosting of ``preprocessing`` and the network, by model name.

    ``requested`` is ``auto`` (native where the backends are built), ``native`` (an error if
    they are not) or ``python`` (the Python-hosted fallback); only the local target chooses.
    """
    check_target(target)
    if requested not in HOSTINGS:
        raise ConfigError(f"unknown hosting {requested!r}: expected one of {', '.join(HOSTINGS)}")
    if target == "triton":
        container = "the NVIDIA Triton container has this backend"
        return {PREPROCESSING: ModelHosting(True, container), NETWORK: ModelHosting(True, container)}
    if requested == PYTHON:
        return {
            PREPROCESSING: ModelHosting(False, "--hosting python"),
            NETWORK: ModelHosting(False, "--hosting python"),
        }
    if not backends_built:
        if requested == NATIVE:
            raise ConfigError(
                f"--hosting native: Triton's DALI and ONNX Runtime backends are not built here ({BUILD_HINT})"
            )
        fallback = ModelHosting(False, f"Triton's DALI and ONNX Runtime backends are not built here; {BUILD_HINT}")
        return {PREPROCESSING: fallback, NETWORK: fallback}
    preprocessing = ModelHosting(True, "Triton's DALI backend, built by tools/build_backends.py")
    if runtime == "torch-cuda":
        network = ModelHosting(False, "FP16 torch CUDA graphs (model.pt) run in a Python-backend model")
    elif runtime != "onnxruntime":
        network = ModelHosting(False, "a TensorRT engine: the pip-installed server has no TensorRT backend")
    elif device == GPU:
        # The native backend's CUDA provider needs onnxruntime-gpu and cuDNN on the server's
        # library path: not verified yet, so the GPU keeps the measured Python-hosted runtimes.
        network = ModelHosting(False, "on a GPU the network keeps the Python-hosted runtime")
    else:
        network = ModelHosting(True, "Triton's ONNX Runtime backend, built by tools/build_backends.py")
    return {PREPROCESSING: preprocessing, NETWORK: network}
