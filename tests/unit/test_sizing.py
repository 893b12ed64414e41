"""The server's memory pools are sized from the repository it serves."""

from __future__ import annotations

from pathlib import Path

import pytest

from bls_pipeline.builder import model_config as mc
from bls_pipeline.builder.repository import RepositorySpec, write_build_spec
from bls_pipeline.server.sizing import MIB, MIN_CUDA_POOL_BYTES, MIN_SHM_BYTES, ServerSizing, dev_shm_bytes

IMAGE_BYTES = 3 * 224 * 224 * 4


def _repository(tmp_path: Path, **spec) -> Path:
    built = RepositorySpec(num_classes=1000, **spec)
    for name, config in built.configs().items():
        (tmp_path / name).mkdir()
        mc.write_config(tmp_path / name / "config.pbtxt", config)
    write_build_spec(tmp_path, built)
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


# --- /dev/shm of the container ------------------------------------------------------------

SHM_IMAGE = 4 * MIB
# max batch 64, 224x224 crops, 1000 classes
SHM_IMAGES, SHM_DALI, SHM_LOGITS = 64 * SHM_IMAGE, 64 * IMAGE_BYTES, 64 * 1000 * 4


def _configs(target: str, **overrides: object) -> dict:
    values = {"target": target, "max_batch_size": 64, "num_classes": 1000, "max_image_bytes": SHM_IMAGE}
    return RepositorySpec(**{**values, **overrides}).configs()


def test_dev_shm_of_a_triton_repository_counts_only_the_classifier_stub():
    exact = MIN_SHM_BYTES + 2 * SHM_IMAGES + 2 * SHM_DALI + 6 * SHM_LOGITS

    assert dev_shm_bytes(_configs("triton"), shm_default_byte_size=MIN_SHM_BYTES, unit=1) == exact


def test_dev_shm_of_a_local_repository_adds_the_python_hosted_preprocessing_and_network():
    triton = dev_shm_bytes(_configs("triton"), shm_default_byte_size=MIN_SHM_BYTES, unit=1)

    local = dev_shm_bytes(_configs("local"), shm_default_byte_size=MIN_SHM_BYTES, unit=1)

    assert local - triton == 2 * MIN_SHM_BYTES + (SHM_IMAGES + SHM_DALI) + (SHM_DALI + SHM_LOGITS)


def test_every_instance_of_a_python_model_has_its_own_shm_region():
    configs = _configs("local", preprocessing_instances=3)
    one = dev_shm_bytes(_configs("local"), shm_default_byte_size=MIN_SHM_BYTES, unit=1)

    more = dev_shm_bytes(configs, shm_default_byte_size=MIN_SHM_BYTES, unit=1)

    assert more - one == 2 * (MIN_SHM_BYTES + SHM_IMAGES + SHM_DALI)


@pytest.mark.parametrize(("max_image_bytes", "mib"), [(SHM_IMAGE, 704), (None, 2240)])
def test_dev_shm_rounds_up_to_64_mib(max_image_bytes, mib):
    configs = _configs("triton", max_image_bytes=max_image_bytes)

    assert dev_shm_bytes(configs, shm_default_byte_size=MIN_SHM_BYTES) == mib * MIB


def test_every_gpu_the_configs_name_gets_its_own_pool(tmp_path):
    repository = _repository(tmp_path, target="local", device="gpu", max_batch_size=64, gpus=(1, 3))
    sizing = ServerSizing.from_repository(repository)
    assert sizing.gpus == (1, 3)
    pools = [arg for arg in sizing.server_args() if arg.startswith("--cuda-memory-pool-byte-size=")]
    assert pools == [f"--cuda-memory-pool-byte-size={gpu}:{sizing.cuda_pool_bytes}" for gpu in (1, 3)]


def test_an_adopted_repository_is_sized_from_the_models_its_classifier_calls(tmp_path):
    # An adopted repository has no bls_build.json: its classifier's wiring names the models.
    from bls_pipeline.builder.adopt import AdoptOptions, adopt_repository
    from tests.fixtures.tutorial_repository import export_network, write_tutorial_repository

    tutorial = write_tutorial_repository(tmp_path / "tutorial", network=export_network(tmp_path / "effnet.onnx"))
    adopted = tmp_path / "adopted"
    options = AdoptOptions(
        source=tutorial, output=adopted, target="local", device="gpu", hosting="native", max_batch_size=64
    )
    adopt_repository(options, progress=lambda line: None, backends_built=True)

    sizing = ServerSizing.from_repository(adopted, gpus=(0,))

    # The classifier splits its batches of 64 into the tutorial models' 32.
    assert sizing is not None and sizing.batch_bytes == 32 * IMAGE_BYTES
    assert sizing.gpus == (0,) and sizing.cuda_pool_bytes >= MIN_CUDA_POOL_BYTES

    # A config that does not parse is left for the server to report, naming the model.
    classifier_config = adopted / "classifier" / "config.pbtxt"
    text = classifier_config.read_text()
    classifier_config.write_text("this is not a model config\n")
    assert ServerSizing.from_repository(adopted) is None
    classifier_config.write_text(text)

    # Without the network's config there is nothing to size from.
    (adopted / "efficientnet-b0" / "config.pbtxt").unlink()
    assert ServerSizing.from_repository(adopted) is None
