"""The server's memory pools are sized from the repository it serves."""

from __future__ import annotations

from pathlib import Path

from bls_pipeline.build import model_config as mc
from bls_pipeline.build.repository import RepositorySpec
from bls_pipeline.devtools.sizing import MIB, MIN_CUDA_POOL_BYTES, MIN_SHM_BYTES, ServerSizing

IMAGE_BYTES = 3 * 224 * 224 * 4


def _repository(tmp_path: Path, **spec) -> Path:
    for name, config in RepositorySpec(num_classes=1000, **spec).configs().items():
        (tmp_path / name).mkdir()
        mc.write_config(tmp_path / name / "config.pbtxt", config)
    return tmp_path


def test_a_cpu_repository_gets_no_cuda_pool(tmp_path):
    sizing = ServerSizing.from_repository(_repository(tmp_path, target="local", device="cpu", max_batch_size=16))
    assert sizing.cuda_pool_bytes == 0 and sizing.gpus == ()
    assert sizing.shm_default_bytes == MIN_SHM_BYTES
    assert not any(arg.startswith("--cuda-memory-pool") for arg in sizing.server_args())


def test_a_gpu_repository_pools_every_instance_twice_a_full_batch(tmp_path):
    repository = _repository(
        tmp_path, target="local", device="gpu", max_batch_size=128, preprocessing_instances=2, network_instances=2
    )
    sizing = ServerSizing.from_repository(repository)
    batch = 128 * IMAGE_BYTES
    assert sizing.batch_bytes == batch
    # 4 instances hold an input and an output batch each.
    assert sizing.cuda_pool_bytes >= 2 * batch * 4 > MIN_CUDA_POOL_BYTES
    assert sizing.cuda_pool_bytes % MIB == 0
    assert f"--cuda-memory-pool-byte-size=0:{sizing.cuda_pool_bytes}" in sizing.server_args()
    # A batch crosses the Python backend's shared memory in one piece.
    assert sizing.shm_default_bytes >= batch


def test_a_repository_of_other_models_keeps_the_defaults(tmp_path):
    (tmp_path / "some_model").mkdir()
    assert ServerSizing.from_repository(tmp_path) is None
    assert ServerSizing.defaults().server_args() == [
        f"--backend-config=python,shm-default-byte-size={MIN_SHM_BYTES}",
        f"--backend-config=python,shm-growth-byte-size={MIN_SHM_BYTES}",
    ]
