"""Shared fixtures: real photographs, built ``--target local`` repositories (on Triton's own
DALI and ONNX Runtime backends, and on Python-backend models), a real server."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

# The tests' one image encoder: encode(array or PIL image, "PNG", **save_options) -> bytes.
from bls_pipeline.devtools.soak import encode_image as encode  # noqa: F401

PHOTOS = {"chelsea": 285, "coffee": 967, "rocket": 657}


@pytest.fixture(scope="session")
def photos() -> dict[str, np.ndarray]:
    """skimage's real photographs (different sizes) by name."""
    import skimage.data

    return {name: getattr(skimage.data, name)() for name in PHOTOS}


def require_native_backends() -> None:
    """Skip (fail under ``CI=true``) when Triton's native backends are not built here."""
    from bls_pipeline.devtools.backends import native_backends_dir

    if native_backends_dir() is None:
        reason = "Triton's DALI and ONNX Runtime backends are not built for this environment (python tools/build_backends.py)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}; CI=true: the native-hosting tests must run")
        pytest.skip(reason)


def _build(tmp_path_factory: pytest.TempPathFactory, hosting: str) -> Path:
    from bls_pipeline.build.pipeline import BuildOptions, build_repository

    output = tmp_path_factory.mktemp(f"repository-{hosting}") / "model_repository"
    build_repository(BuildOptions(output=output, target="local", device="cpu", max_batch_size=16, hosting=hosting))
    return output


@pytest.fixture(scope="session")
def native_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A local CPU repository on Triton's own DALI and ONNX Runtime backends (the container's layout)."""
    require_native_backends()
    return _build(tmp_path_factory, "native")


@pytest.fixture(scope="session")
def python_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A local CPU repository with DALI and the network in Python-backend models (the fallback)."""
    return _build(tmp_path_factory, "python")


@pytest.fixture(scope="session", params=["native", "python"])
def built_repository(request: pytest.FixtureRequest) -> Path:
    """Each hosting's repository in turn, built from the shipped EfficientNet-Lite0 weights:
    every test that uses it (or ``triton_server``) runs on both."""
    return request.getfixturevalue(f"{request.param}_repository")


@pytest.fixture(scope="session")
def triton_server(built_repository: Path, tmp_path_factory: pytest.TempPathFactory):
    """A real ``tritonserver`` on 127.0.0.1 (free ports), serving ``built_repository``."""
    from bls_pipeline.devtools.server import LocalTritonServer, ServerOptions

    options = ServerOptions(
        model_repository=built_repository,
        http_port=0,
        grpc_port=0,
        metrics_port=0,
        log_path=tmp_path_factory.mktemp("server") / "tritonserver.log",
    )
    with LocalTritonServer(options) as server:
        yield server


@pytest.fixture()
def client(triton_server):
    """A client of the session's server."""
    from bls_pipeline.devtools.client import ClassifierClient

    with ClassifierClient(triton_server.url) as client:
        yield client


# Real training-script pipelines (tests/fixtures/pipelines), and the tutorial's arguments.
PIPELINE_FIXTURES = Path(__file__).resolve().parent / "fixtures" / "pipelines"
TUTORIAL_SCRIPT = PIPELINE_FIXTURES / "train_effnet.py"
TUTORIAL_ARGS = ["image_size=256", "image_crop=224", "interpolation=types.INTERP_LINEAR", "output_layout='CHW'"]


def run_tutorial_pipeline_with_its_reader(photos: list[Path], data_dir: Path, decoder_device: str = "cpu") -> np.ndarray:
    """The tutorial's ``validation_pipe`` run as its training script runs it: its file reader
    on ``data_dir/cls/N.ext``, the photographs in order. Independent of the conversion code:
    unmodified with ``decoder_device="mixed"`` (needs a GPU); with ``"cpu"`` only its decoder
    moves to the CPU. Returns ``[N, 3, 224, 224]`` on the host."""
    import importlib.util

    from nvidia.dali import fn, types

    (data_dir / "cls").mkdir(parents=True)
    for index, photo in enumerate(photos):
        (data_dir / "cls" / f"{index}{photo.suffix}").write_bytes(photo.read_bytes())
    spec = importlib.util.spec_from_file_location("train_effnet_reference", TUTORIAL_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    on_gpu = decoder_device == "mixed"
    decode = fn.decoders.image
    if not on_gpu:
        fn.decoders.image = lambda *inputs, **kwargs: decode(*inputs, **{**kwargs, "device": "cpu"})
    try:
        pipe = module.validation_pipe(
            data_dir=str(data_dir), interpolation=types.INTERP_LINEAR, image_size=256, image_crop=224,
            output_layout="CHW", batch_size=len(photos), num_threads=1, device_id=0 if on_gpu else None,
        )
        pipe.build()
        images, _labels = pipe.run()
    finally:
        fn.decoders.image = decode
    return np.array(images.as_cpu().as_tensor() if on_gpu else images.as_tensor())
