"""On a GPU: the Python-hosted DALI model answers in GPU memory, the classifier hands that
batch to the network without a host copy, and the photographs are classified correctly.

Runs only where a CUDA GPU and a GPU network runtime are; elsewhere it skips and says why.
"""

from __future__ import annotations

import pytest

from bls_pipeline.build.pipeline import BuildOptions, build_repository
from bls_pipeline.devtools.client import ClassifierClient
from bls_pipeline.runtime.device import detect_device
from bls_pipeline.runtime.network import gpu_runtime_missing
from tests.conftest import PHOTOS, encode
from tests.e2e._support import start_server

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def gpu_repository(tmp_path_factory: pytest.TempPathFactory):
    device, reason = detect_device()
    if device != "gpu":
        pytest.skip(f"no CUDA GPU here ({reason}): this test runs on a GPU machine")
    missing = gpu_runtime_missing()
    if missing:
        pytest.skip(missing)
    output = tmp_path_factory.mktemp("gpu") / "model_repository"
    build_repository(BuildOptions(output=output, target="local", device="gpu", max_batch_size=16))
    return output


def test_a_python_hosted_dali_model_returning_a_gpu_tensor_is_classified_correctly_through_the_bls(
    gpu_repository, tmp_path, photos
):
    log_path = tmp_path / "tritonserver.log"
    images = [encode(photos[name], "JPEG", quality=90) for name in PHOTOS]
    server = start_server(gpu_repository, log_path)
    try:
        with ClassifierClient(server.url) as client:
            predictions = client.classify(images, top_k=1)
            one_by_one = [client.classify([image], top_k=1)[0] for image in images]
    finally:
        server.stop()

    assert [p.class_ids[0] for p in predictions] == list(PHOTOS.values())
    assert [p.class_ids[0] for p in one_by_one] == list(PHOTOS.values())
    log = log_path.read_text()
    assert "preprocessing: DALI mixed decoder, outputs in GPU 0 memory" in log
