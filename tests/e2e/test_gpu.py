"""On a GPU: the Python-hosted DALI model answers in GPU memory, the classifier hands that
batch to the network without a host copy, and the photographs are classified correctly.

Runs only where a CUDA GPU and a GPU network runtime are; elsewhere it skips and says why.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bls_pipeline.client import ClassifierClient
from tests.conftest import DECODER_PROBABILITY_TOLERANCE, PHOTOS, encode
from tests.e2e._support import start_server

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def gpu_repository(gpu_python_repository: Path) -> Path:
    """The Python-hosted DALI model on the GPU (skips where no GPU is; see tests/conftest.py)."""
    return gpu_python_repository


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


def _in_process_probabilities(repository: Path, decoder: str, images: list[bytes]) -> np.ndarray:
    """Softmax of the served network on the repository's DALI pipeline with ``decoder``."""
    import json
    import shutil
    import tempfile

    from bls_pipeline.request.postprocess import softmax
    from bls_pipeline.runtime.dali import DaliPreprocessor
    from bls_pipeline.runtime.network import load_network

    with tempfile.TemporaryDirectory() as scratch:
        version = Path(scratch) / "1"
        shutil.copytree(repository / "preprocessing" / "1", version)
        settings = json.loads((version / "preprocessing.json").read_text())
        (version / "preprocessing.json").write_text(json.dumps({**settings, "decoder_device": decoder}))
        runner = DaliPreprocessor.from_file(version / "dali.py", max_batch_size=len(images))
        batch = runner([np.frombuffer(image, np.uint8) for image in images])
    network = load_network(repository / "efficientnet-b0" / "1", device="gpu", max_batch_size=len(images))
    return softmax(network(batch))


def test_the_mixed_decoder_gives_the_classes_of_the_cpu_decoder(gpu_repository, photos):
    from bls_pipeline.devtools.bench.images import benchmark_images

    # PNGs too: the mixed decoder hands them to nvImageCodec's CPU (OpenCV) extension.
    images = [encode(photos[name], "JPEG", quality=90) for name in PHOTOS] + [i.data for i in benchmark_images()]
    images += [encode(photos[name], "PNG") for name in PHOTOS]
    on_gpu = _in_process_probabilities(gpu_repository, "mixed", images)
    on_cpu = _in_process_probabilities(gpu_repository, "cpu", images)
    assert (on_gpu.argmax(axis=1) == on_cpu.argmax(axis=1)).all()
    assert np.abs(on_gpu - on_cpu).max() <= DECODER_PROBABILITY_TOLERANCE


def test_cuda_graphs_give_the_logits_of_the_eager_network(gpu_repository):
    import torch

    from bls_pipeline.networks.checkpoints import load_checkpoint
    from bls_pipeline.runtime.torch_network import TorchCudaNetwork

    weights = gpu_repository / "efficientnet-b0" / "1" / "model.pt"
    network = TorchCudaNetwork.from_file(weights, max_batch_size=16)
    eager = load_checkpoint(weights, torch.load(weights, weights_only=True)["arch"]).eval()
    images = torch.randn(5, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = eager(images).numpy()
    logits = network(images.cuda())
    assert (logits.argmax(axis=1) == expected.argmax(axis=1)).all()
    # FP16 against FP32: logits of order 10 agree to about 1e-2.
    assert np.abs(logits - expected).max() < 0.1
