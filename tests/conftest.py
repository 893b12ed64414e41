"""Shared fixtures: real photographs, a built ``--target local`` repository, a real server."""

from __future__ import annotations

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


@pytest.fixture(scope="session")
def built_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ``--target local`` CPU repository built from the shipped EfficientNet-Lite0 weights."""
    from bls_pipeline.build.pipeline import BuildOptions, build_repository

    output = tmp_path_factory.mktemp("repository") / "model_repository"
    build_repository(BuildOptions(output=output, target="local", device="cpu", max_batch_size=16))
    return output


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
