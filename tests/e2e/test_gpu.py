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


def test_a_dali_pipeline_build_at_crop_256_on_the_gpu_builds_verifies_and_serves(tmp_path):
    """``--dali-pipeline`` with a crop other than 224 on a GPU: the mixed decoder's conversion
    is verified here, and the network (ONNX, TensorRT or model.pt) takes 256 like the pipeline."""
    import contextlib
    import io

    import torch

    from bls_pipeline.builder import model_config as mc
    from bls_pipeline.builder.repository import read_build_spec
    from bls_pipeline.cli.build_repo import main
    from bls_pipeline.layout import TORCH_WEIGHTS_FILE, version_dir
    from tests.conftest import TUTORIAL_SCRIPT, require_gpu

    require_gpu()
    output = tmp_path / "model_repository"
    crop_256 = ["image_size=292", "image_crop=256", "interpolation=types.INTERP_LINEAR", "output_layout='CHW'"]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        status = main(
            ["--dali-pipeline", f"{TUTORIAL_SCRIPT}:validation_pipe", *(f"--pipeline-arg={a}" for a in crop_256),
             "--device", "gpu", "--max-batch-size", "8", "--output", str(output)]
        )  # fmt: skip
    assert status == 0, printed.getvalue()
    assert "decoder: mixed" in printed.getvalue() and "output float32 [3, 256, 256]" in printed.getvalue()
    spec = read_build_spec(output)
    assert spec.crop == 256 and spec.device == "gpu"
    assert list(mc.read_config(output / mc.NETWORK / "config.pbtxt").input[0].dims) == [3, 256, 256]
    weights = version_dir(output, mc.NETWORK) / TORCH_WEIGHTS_FILE
    if weights.is_file():
        assert torch.load(weights, weights_only=True)["image_size"] == 256

    server = start_server(output, tmp_path / "tritonserver.log")
    try:
        with ClassifierClient(server.url) as client:
            predictions = client.classify(
                [
                    (Path(__file__).resolve().parents[2] / "samples" / f"{name}.jpg").read_bytes()
                    for name in ("chelsea", "coffee")
                ],
                top_k=5,
            )
    finally:
        server.stop()
    assert [PHOTOS[name] in p.class_ids for name, p in zip(("chelsea", "coffee"), predictions)] == [True, True]
