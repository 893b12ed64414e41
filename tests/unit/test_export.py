"""Specification of ``bls_pipeline.builder.export``: ONNX with a dynamic batch axis, checked against
torch, and the TensorRT engine build where TensorRT exists."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from bls_pipeline.builder import export
from bls_pipeline.builder.export import (
    INPUT_NAME,
    OUTPUT_NAME,
    build_tensorrt_engine,
    export_onnx,
    tensorrt_available,
    verify_onnx,
)
from bls_pipeline.errors import ExportError
from bls_pipeline.networks.checkpoints import ARCHITECTURES, default_checkpoint_path, load_checkpoint


@pytest.fixture(scope="module")
def lite0() -> nn.Module:
    return load_checkpoint(default_checkpoint_path(), "efficientnet-lite0")


@pytest.fixture(scope="module")
def lite0_onnx(lite0: nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_onnx(lite0, tmp_path_factory.mktemp("onnx") / "model.onnx")


def _dims(value_info: onnx.ValueInfoProto) -> list[str | int]:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def test_onnx_has_the_contracted_names_types_and_dynamic_batch(lite0_onnx: Path) -> None:
    graph = onnx.load(str(lite0_onnx)).graph

    assert [i.name for i in graph.input] == [INPUT_NAME]
    assert [o.name for o in graph.output] == [OUTPUT_NAME]
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert _dims(graph.input[0]) == ["batch", 3, 224, 224]
    assert _dims(graph.output[0]) == ["batch", 1000]


def test_lite0_onnx_matches_torch_at_several_batch_sizes(lite0: nn.Module, lite0_onnx: Path) -> None:
    assert verify_onnx(lite0, lite0_onnx, batch_sizes=(1, 3)) < 1e-4


@pytest.mark.parametrize("arch", ["efficientnet-b0", "torchvision-efficientnet_b0"])
def test_b0_layouts_export_and_match_torch(arch: str, tmp_path: Path) -> None:
    model = ARCHITECTURES[arch].builder(10).eval()
    path = export_onnx(model, tmp_path / "model.onnx", image_size=64)

    assert verify_onnx(model, path, image_size=64, batch_sizes=(1, 2)) < 1e-4


def test_verify_reports_an_onnx_file_that_disagrees_with_torch(lite0_onnx: Path) -> None:
    other = ARCHITECTURES["efficientnet-lite0"].builder(1000).eval()

    with pytest.raises(ExportError, match="differs from torch"):
        verify_onnx(other, lite0_onnx, batch_sizes=(1,))


class _Broken(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("cannot trace this")


def test_failed_export_leaves_nothing_behind(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="ONNX export of _Broken failed"):
        export_onnx(_Broken(), tmp_path / "model.onnx", image_size=32)

    assert list(tmp_path.iterdir()) == []


def test_without_tensorrt_the_engine_build_says_why(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(export, "_tensorrt_module", lambda: None)
    monkeypatch.setattr(export.shutil, "which", lambda name: None)

    reason = tensorrt_available()
    assert reason == "TensorRT Python package not importable and no trtexec on PATH"
    with pytest.raises(ExportError, match=f"cannot build a TensorRT engine: {reason}"):
        build_tensorrt_engine(tmp_path / "m.onnx", tmp_path / "model.plan", fp16=False, max_batch_size=4)
    assert not (tmp_path / "model.plan").exists()


def test_profile_covers_one_to_max_batch_optimised_for_half() -> None:
    shapes = export._profile_shapes(max_batch_size=8, image_size=224)
    assert shapes == {"min": (1, 3, 224, 224), "opt": (4, 3, 224, 224), "max": (8, 3, 224, 224)}


def test_tensorrt_engine_runs_like_torch(lite0: nn.Module, lite0_onnx: Path, tmp_path: Path) -> None:
    trt = pytest.importorskip(
        "tensorrt", reason="TensorRT is not installed here; the engine build runs on a GPU machine"
    )
    plan = build_tensorrt_engine(lite0_onnx, tmp_path / "model.plan", fp16=False, max_batch_size=4)

    engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(plan.read_bytes())
    names = {engine.get_tensor_name(i) for i in range(engine.num_io_tensors)}
    assert names == {INPUT_NAME, OUTPUT_NAME}
    assert tuple(engine.get_tensor_profile_shape(INPUT_NAME, 0)[2]) == (4, 3, 224, 224)
    if not torch.cuda.is_available():
        pytest.skip("engine built; running it needs torch with CUDA")

    images = torch.randn(3, 3, 224, 224)
    with torch.no_grad():
        expected = lite0(images).numpy()
    device_in = images.cuda()
    device_out = torch.empty(3, 1000, device="cuda")
    context = engine.create_execution_context()
    context.set_input_shape(INPUT_NAME, tuple(device_in.shape))
    context.set_tensor_address(INPUT_NAME, device_in.data_ptr())
    context.set_tensor_address(OUTPUT_NAME, device_out.data_ptr())
    stream = torch.cuda.current_stream()
    assert context.execute_async_v3(stream.cuda_stream)
    stream.synchronize()
    # FP32 engines use TF32 and different kernels; logits agree to well under a class margin.
    assert np.abs(device_out.cpu().numpy() - expected).max() < 5e-2


@pytest.mark.skipif(shutil.which("trtexec") is None, reason="trtexec is not on PATH")
def test_trtexec_builds_an_engine(lite0_onnx: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(export, "_tensorrt_module", lambda: None)

    plan = build_tensorrt_engine(lite0_onnx, tmp_path / "model.plan", fp16=True, max_batch_size=4)

    assert plan.stat().st_size > 0
