"""The one CPU-or-GPU setting of a repository, and how to find a default for it.

``tools/build_repo.py --device cpu|gpu`` picks it; :class:`bls_pipeline.builder.repository.RepositorySpec`
carries it into every config (instance kinds), into ``preprocessing.json`` (the DALI decoder)
and, through the instance kind Triton hands to each model, into the adapters. Nothing else
decides where the models run.

This module is standard library only: the build imports it before torch, and the Triton-side
adapters import it in the NVIDIA Triton container.

Example::

    device, reason = detect_device()      # ("gpu", "1 CUDA device visible") on a GPU machine
    instance_kind(device)                 # "KIND_GPU"
    decoder_device(device)                # "mixed"
"""

from __future__ import annotations

import ctypes

from bls_pipeline.errors import ConfigError

CPU, GPU = "cpu", "gpu"
DEVICES = (CPU, GPU)

_INSTANCE_KINDS = {CPU: "KIND_CPU", GPU: "KIND_GPU"}
# DALI's decoder placement: "mixed" decodes on the GPU (nvJPEG) from host bytes.
_DECODERS = {CPU: "cpu", GPU: "mixed"}


def check_device(device: str) -> str:
    """``device`` itself when it is one of :data:`DEVICES`; else :class:`ConfigError`."""
    if device not in DEVICES:
        raise ConfigError(f"unknown device {device!r}: expected one of {', '.join(DEVICES)}")
    return device


def instance_kind(device: str) -> str:
    """The Triton ``instance_group`` kind of every model on ``device``."""
    return _INSTANCE_KINDS[check_device(device)]


def decoder_device(device: str) -> str:
    """DALI's ``fn.decoders.image`` device on ``device``: ``cpu`` or ``mixed``."""
    return _DECODERS[check_device(device)]


def device_of_instance_kind(kind: str) -> str:
    """The device of a Python-backend model instance from ``args["model_instance_kind"]``.

    Triton passes ``"GPU"`` or ``"CPU"`` (the kind the config was written with: the device).
    """
    return GPU if kind.upper() == "GPU" else CPU


def visible_gpu_count() -> int:
    """How many CUDA devices the driver shows (``CUDA_VISIBLE_DEVICES`` honoured); 0 without one."""
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return 0
    count = ctypes.c_int(0)
    if cuda.cuInit(0) != 0 or cuda.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return 0
    return count.value


def detect_device() -> tuple[str, str]:
    """The default device for a build on this machine, and why.

    ``gpu`` when the CUDA driver reports at least one visible device, else ``cpu``. Asks the
    driver (``libcuda``) directly: no torch import, no subprocess, and ``CUDA_VISIBLE_DEVICES``
    is honoured as everywhere else.
    """
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return CPU, "no CUDA driver (libcuda.so.1) on this machine"
    status = cuda.cuInit(0)
    if status != 0:
        return CPU, f"the CUDA driver found no usable device (cuInit error {status})"
    count = ctypes.c_int(0)
    status = cuda.cuDeviceGetCount(ctypes.byref(count))
    if status != 0 or count.value < 1:
        return CPU, "the CUDA driver reports no visible device"
    return GPU, f"{count.value} CUDA device{'s' if count.value > 1 else ''} visible"
