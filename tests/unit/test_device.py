"""Specification of ``bls_pipeline.runtime.device`` and of the runtimes that follow the device."""

from __future__ import annotations

import ctypes
from pathlib import Path

import pytest

from bls_pipeline.errors import ConfigError
from bls_pipeline.runtime import device as dev


@pytest.mark.parametrize(
    ("device", "kind", "decoder"),
    [("cpu", "KIND_CPU", "cpu"), ("gpu", "KIND_GPU", "mixed")],
)
def test_a_device_names_its_instance_kind_and_dali_decoder(device, kind, decoder):
    assert dev.instance_kind(device) == kind
    assert dev.decoder_device(device) == decoder
    assert dev.device_of_instance_kind(kind.removeprefix("KIND_")) == device


def test_an_unknown_device_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown device 'cuda': expected one of cpu, gpu"):
        dev.instance_kind("cuda")


class FakeDriver:
    """libcuda's two entry points that detect_device calls."""

    def __init__(self, init_status: int, count: int) -> None:
        self.init_status, self.count = init_status, count

    def cuInit(self, flags: int) -> int:  # noqa: N802 (the driver's name)
        return self.init_status

    def cuDeviceGetCount(self, pointer) -> int:  # noqa: N802
        pointer._obj.value = self.count
        return 0


def _no_driver(name: str):
    raise OSError(f"{name}: cannot open shared object file")


@pytest.mark.parametrize(
    ("driver", "expected"),
    [
        (_no_driver, ("cpu", "no CUDA driver (libcuda.so.1) on this machine")),
        (lambda name: FakeDriver(100, 0), ("cpu", "the CUDA driver found no usable device (cuInit error 100)")),
        (lambda name: FakeDriver(0, 0), ("cpu", "the CUDA driver reports no visible device")),
        (lambda name: FakeDriver(0, 1), ("gpu", "1 CUDA device visible")),
        (lambda name: FakeDriver(0, 8), ("gpu", "8 CUDA devices visible")),
    ],
)
def test_the_default_device_is_gpu_only_when_the_driver_shows_a_device(monkeypatch, driver, expected):
    monkeypatch.setattr(ctypes, "CDLL", driver)

    assert dev.detect_device() == expected


def test_the_cpu_device_runs_onnx_runtime_on_the_cpu_provider_alone(python_repository: Path):
    from bls_pipeline.runtime.network import load_network

    network = load_network(python_repository / "efficientnet-b0" / "1", device="cpu")

    assert network._session.get_providers() == ["CPUExecutionProvider"]


def test_the_gpu_device_never_falls_back_to_the_cpu(python_repository: Path):
    import onnxruntime as ort

    from bls_pipeline.runtime.network import load_network

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this ONNX Runtime has CUDA: the refusal is for a machine without it")
    with pytest.raises(RuntimeError, match="device is gpu but this ONNX Runtime has no CUDAExecutionProvider"):
        load_network(python_repository / "efficientnet-b0" / "1", device="gpu")


def test_the_dali_runner_decodes_where_preprocessing_json_says(tmp_path: Path):
    pytest.importorskip("nvidia.dali")
    import json
    import shutil

    from bls_pipeline.runtime.dali import PACKAGED_PIPELINE, DaliPreprocessor

    shutil.copyfile(PACKAGED_PIPELINE, tmp_path / "dali.py")
    (tmp_path / "preprocessing.json").write_text(json.dumps({"decoder_device": "cpu"}))

    runner = DaliPreprocessor.from_file(tmp_path / "dali.py", max_batch_size=2)

    assert not runner.on_device
    with pytest.raises(RuntimeError, match="needs a mixed"):
        runner.on_gpu([])
