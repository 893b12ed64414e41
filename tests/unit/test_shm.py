"""Specification of ``bls_pipeline.build.shm``: the ``/dev/shm`` a repository needs."""

from __future__ import annotations

import pytest

from bls_pipeline.build import model_config as mc
from bls_pipeline.build.repository import RepositorySpec
from bls_pipeline.build.shm import MIB, python_backend_shm_bytes

DEFAULT_REGION = 64 * MIB
IMAGE = 4 * MIB
# max batch 64, 224x224 crops, 1000 classes
IMAGES, DALI, LOGITS = 64 * IMAGE, 64 * 3 * 224 * 224 * 4, 64 * 1000 * 4


def _spec(target: str, **overrides: object) -> RepositorySpec:
    return RepositorySpec(**{"target": target, "max_batch_size": 64, "num_classes": 1000, "max_image_bytes": IMAGE, **overrides})


def test_triton_target_counts_only_the_classifier_stub():
    exact = DEFAULT_REGION + 2 * IMAGES + 2 * DALI + 6 * LOGITS

    size = python_backend_shm_bytes(_spec("triton").configs(), shm_default_byte_size=DEFAULT_REGION, round_to=1)

    assert size == exact


def test_local_target_adds_the_python_hosted_preprocessing_and_network():
    triton = python_backend_shm_bytes(_spec("triton").configs(), shm_default_byte_size=DEFAULT_REGION, round_to=1)

    local = python_backend_shm_bytes(_spec("local").configs(), shm_default_byte_size=DEFAULT_REGION, round_to=1)

    assert local - triton == 2 * DEFAULT_REGION + (IMAGES + DALI) + (DALI + LOGITS)


def test_every_instance_of_a_python_model_has_its_own_region():
    configs = _spec("triton").configs()
    one = python_backend_shm_bytes(configs, shm_default_byte_size=DEFAULT_REGION, round_to=1)
    configs[mc.CLASSIFIER].instance_group[0].count = 3

    assert python_backend_shm_bytes(configs, shm_default_byte_size=DEFAULT_REGION, round_to=1) == 3 * one


@pytest.mark.parametrize(("max_image_bytes", "mib"), [(IMAGE, 704), (None, 2240)])
def test_sizes_round_up_to_64_mib(max_image_bytes, mib):
    spec = _spec("triton", max_image_bytes=max_image_bytes)

    assert python_backend_shm_bytes(spec.configs(), shm_default_byte_size=DEFAULT_REGION) == mib * MIB
