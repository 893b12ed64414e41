"""The GPU serving knobs of a repository: hardware-decoder share and instance counts."""

from __future__ import annotations

import pytest

from bls_pipeline.builder import model_config as mc
from bls_pipeline.builder.repository import RepositorySpec
from bls_pipeline.errors import ConfigError


def test_instance_counts_reach_the_preprocessing_and_network_configs():
    spec = RepositorySpec(
        target="triton",
        device="gpu",
        max_batch_size=64,
        num_classes=1000,
        preprocessing_instances=2,
        network_instances=3,
        classifier_instances=4,
    )
    configs = spec.configs()
    assert [(g.kind, g.count) for g in configs[mc.PREPROCESSING].instance_group] == [
        (mc.model_config_pb2.ModelInstanceGroup.KIND_GPU, 2)
    ]
    assert [g.count for g in configs[mc.NETWORK].instance_group] == [3]
    assert [g.count for g in configs[mc.CLASSIFIER].instance_group] == [4]


def test_the_hardware_decoder_share_is_written_for_dali():
    spec = RepositorySpec(target="local", device="gpu", max_batch_size=8, num_classes=10, hw_decoder_load=1.0)
    assert spec.dali_settings()["hw_decoder_load"] == 1.0
    assert spec.dali_settings()["decoder_device"] == "mixed"


@pytest.mark.parametrize("load", [-0.1, 1.5])
def test_a_share_outside_0_to_1_is_refused(load):
    with pytest.raises(ConfigError, match="hw_decoder_load"):
        RepositorySpec(target="local", device="gpu", max_batch_size=8, num_classes=10, hw_decoder_load=load)


def test_zero_instances_are_refused():
    with pytest.raises(ConfigError, match="instance count"):
        RepositorySpec(target="local", device="cpu", max_batch_size=8, num_classes=10, network_instances=0).configs()


@pytest.mark.parametrize(
    ("device", "given", "expected"),
    [
        (
            "cpu",
            {},
            {
                "dali_threads": 2,
                "hw_decoder_load": 0.65,
                "preprocessing_instances": 1,
                "classifier_instances": 1,
                "max_queue_size": 8,
                "queue_timeout_ms": 2000,
            },
        ),
        (
            "gpu",
            {},
            {
                "dali_threads": 8,
                "hw_decoder_load": 0.65,
                "preprocessing_instances": 2,
                "classifier_instances": 8,
                "max_queue_size": 512,
                "queue_timeout_ms": 1000,
            },
        ),
        (
            "gpu",
            {"dali_threads": 12, "hw_decoder_load": 1.0, "preprocessing_instances": 1, "max_queue_size": 0},
            {
                "dali_threads": 12,
                "hw_decoder_load": 1.0,
                "preprocessing_instances": 1,
                "classifier_instances": 8,
                "max_queue_size": 0,
                "queue_timeout_ms": 1000,
            },
        ),
    ],
)
def test_unset_knobs_take_the_devices_measured_defaults(tmp_path, device, given, expected):
    from bls_pipeline.builder.spec import BuildOptions

    assert BuildOptions(output=tmp_path, **given).tuned(device) == expected


def test_gpus_place_every_models_instances_on_those_gpus():
    spec = RepositorySpec(
        target="local", device="gpu", max_batch_size=8, num_classes=10, gpus=(0, 1), network_instances=2
    )
    for config in spec.configs().values():
        (group,) = config.instance_group
        assert list(group.gpus) == [0, 1]
    assert spec.configs()[mc.NETWORK].instance_group[0].count == 2  # per GPU


def test_without_gpus_triton_places_instances_on_every_visible_gpu():
    spec = RepositorySpec(target="local", device="gpu", max_batch_size=8, num_classes=10)
    assert all(not group.gpus for config in spec.configs().values() for group in config.instance_group)


def test_gpus_need_the_gpu_device():
    with pytest.raises(ConfigError, match="needs --device gpu"):
        RepositorySpec(target="local", device="cpu", max_batch_size=8, num_classes=10, gpus=(0,)).configs()


@pytest.mark.parametrize("text", ["0,x", "0,0", "-1"])
def test_build_repo_refuses_a_bad_gpu_list(text, capsys):
    from bls_pipeline.cli.build_repo import main

    with pytest.raises(SystemExit) as raised:
        main(["--gpus", text])
    assert raised.value.code == 2
    assert "--gpus" in capsys.readouterr().err
