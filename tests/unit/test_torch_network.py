"""The GPU torch runtime: batch buckets (pure logic) and the weights round trip, on the CPU.

The CUDA-graph path needs a GPU: tests/gpu/ runs it on the H100 and skips elsewhere.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bls_pipeline.builder.export import save_torch_weights
from bls_pipeline.networks import architectures
from bls_pipeline.runtime.torch_network import TorchCudaNetwork, batch_buckets, bucket_for


@pytest.mark.parametrize(
    ("max_batch", "expected"),
    [(1, [1]), (2, [1, 2]), (8, [1, 2, 4, 8]), (48, [1, 2, 4, 8, 16, 32, 48]), (64, [1, 2, 4, 8, 16, 32, 64])],
)
def test_buckets_are_powers_of_two_capped_by_the_max_batch(max_batch, expected):
    assert batch_buckets(max_batch) == expected


@pytest.mark.parametrize(("count", "bucket"), [(1, 1), (3, 4), (4, 4), (33, 48), (48, 48)])
def test_a_batch_runs_in_the_smallest_bucket_that_holds_it(count, bucket):
    assert bucket_for(count, batch_buckets(48)) == bucket


@pytest.mark.parametrize("count", [0, 49])
def test_a_batch_outside_the_buckets_is_refused(count):
    with pytest.raises(ValueError, match="does not fit"):
        bucket_for(count, batch_buckets(48))


def test_saved_weights_rebuild_the_same_network(tmp_path):
    torch.manual_seed(0)
    model = architectures.dle_efficientnet_b0(num_classes=10).eval()
    path = save_torch_weights(model, tmp_path / "model.pt", arch="efficientnet-b0", image_size=64, fp16=False)
    saved = torch.load(path, weights_only=True)
    assert (saved["arch"], saved["image_size"]) == ("efficientnet-b0", 64)
    assert set(saved["state_dict"]) == set(model.state_dict())

    network = TorchCudaNetwork.from_file(path, max_batch_size=4, device="cpu", fp16=False)
    images = np.random.default_rng(0).standard_normal((3, 3, 64, 64)).astype(np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(images)).numpy()
    logits = network(images)
    assert logits.dtype == np.float32 and logits.shape == (3, 10)
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4)


def test_a_file_without_arch_is_refused(tmp_path):
    torch.save({"state_dict": {}}, tmp_path / "model.pt")
    with pytest.raises(ValueError, match="no arch"):
        TorchCudaNetwork.from_file(tmp_path / "model.pt", max_batch_size=4, device="cpu")


@pytest.mark.parametrize("content", [b"not an ONNX model\x00\xff" * 1000, b""], ids=["garbage", "empty"])
def test_a_corrupt_file_is_refused_naming_it(tmp_path, content):
    path = tmp_path / "model.pt"
    path.write_bytes(content)
    with pytest.raises(ValueError) as raised:
        TorchCudaNetwork.from_file(path, max_batch_size=4, device="cpu")
    assert str(raised.value).startswith(f"{path} is not a readable torch network file (")
    assert "\n" not in str(raised.value)


def test_fp16_weights_are_half_the_size(tmp_path):
    model = architectures.dle_efficientnet_b0(num_classes=10)
    full = (
        save_torch_weights(model, tmp_path / "fp32.pt", arch="efficientnet-b0", image_size=224, fp16=False)
        .stat()
        .st_size
    )
    half = save_torch_weights(model, tmp_path / "fp16.pt", arch="efficientnet-b0", image_size=224).stat().st_size
    assert half < 0.6 * full
