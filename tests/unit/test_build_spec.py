"""Specification of ``bls_pipeline.builder.spec`` and of the spec a build writes: every knob
defined once and made a flag from, resolved per device, written as ``bls_build.json`` and
read back, and one crop handed to every writer."""

from __future__ import annotations

import argparse
import dataclasses

import onnx
import pytest
import torch

from bls_pipeline.builder import model_config as mc
from bls_pipeline.builder.pipeline import network_runtime, plan_repository, write_network_files
from bls_pipeline.builder.repository import RepositorySpec, read_build_spec, write_build_spec
from bls_pipeline.builder.spec import KNOBS, TUNED, BuildOptions, add_build_arguments, flag_of, options_from_args
from bls_pipeline.builder.user_pipeline import PipelineSource, convert_pipeline
from bls_pipeline.errors import ConfigError
from bls_pipeline.layout import ONNX_FILE, TORCH_WEIGHTS_FILE
from bls_pipeline.networks import architectures
from tests.conftest import TUTORIAL_SCRIPT

# The tutorial's validation pipeline at a crop other than the built-in 224.
CROP_256 = ["image_size=292", "image_crop=256", "interpolation=types.INTERP_LINEAR", "output_layout='CHW'"]


def parse(argv: list[str]) -> BuildOptions:
    parser = argparse.ArgumentParser()
    add_build_arguments(parser)
    return options_from_args(parser.parse_args(argv))


def test_every_knob_is_a_flag_with_its_help_and_the_parsed_defaults_are_the_fields_defaults():
    parser = argparse.ArgumentParser()
    add_build_arguments(parser)
    text = parser.format_help()

    for name, knob in KNOBS.items():
        assert knob.metadata["help"], name
        assert flag_of(name) in text, name
    assert parse([]) == BuildOptions()


def test_a_per_device_default_is_named_in_the_help_and_resolved_for_the_device():
    parser = argparse.ArgumentParser()
    add_build_arguments(parser)
    text = " ".join(parser.format_help().split())

    assert "(default: 2 on cpu, 8 on gpu)" in text
    assert set(TUNED) == {
        "dali_threads", "hw_decoder_load", "preprocessing_instances", "classifier_instances", "max_queue_size",
        "queue_timeout_ms",
    }  # fmt: skip
    assert parse(["--dali-threads", "5"]).tuned("gpu") == {
        "dali_threads": 5, "hw_decoder_load": 0.65, "preprocessing_instances": 2, "classifier_instances": 8,
        "max_queue_size": 512, "queue_timeout_ms": 1000,
    }  # fmt: skip


def test_lists_of_the_command_line_become_tuples():
    options = parse(["--mean", "1", "2", "3", "--gpus", "0,1", "--dali-pipeline", "t.py:f", "--pipeline-arg", "a=1"])

    assert options.mean == (1.0, 2.0, 3.0) and options.gpus == (0, 1) and options.pipeline_args == ("a=1",)
    assert (
        options.usage_error()
        == "--mean cannot be combined with --dali-pipeline: the pipeline decides the preprocessing"
    )


@pytest.mark.parametrize(
    ("device", "target", "reason", "runtime"),
    [
        ("gpu", "local", None, mc.TENSORRT),
        ("gpu", "local", "tensorrt is not installed", mc.TORCH_CUDA),
        ("gpu", "triton", "tensorrt is not installed", mc.ONNXRUNTIME),
        ("cpu", "local", "TensorRT runs only on a GPU", mc.ONNXRUNTIME),
    ],
)
def test_the_runtime_is_one_explicit_value(device, target, reason, runtime):
    assert network_runtime(device, target, reason)[0] == runtime


def test_torch_cuda_graphs_run_in_a_python_model_on_a_gpu():
    spec = RepositorySpec(target="local", device="gpu", runtime=mc.TORCH_CUDA, max_batch_size=8, num_classes=10)
    assert spec.configs()[mc.NETWORK].backend == "python"
    with pytest.raises(ConfigError, match="only on a GPU"):
        RepositorySpec(target="local", device="cpu", runtime=mc.TORCH_CUDA, max_batch_size=8, num_classes=10)
    with pytest.raises(ConfigError, match="Python-backend model"):
        RepositorySpec(target="triton", device="gpu", runtime=mc.TORCH_CUDA, max_batch_size=8, num_classes=10).configs()


def test_the_spec_round_trips_through_bls_build_json(tmp_path):
    converted = convert_pipeline(
        PipelineSource.parse(f"{TUTORIAL_SCRIPT}:validation_pipe", CROP_256),
        decoder_device="cpu",
        max_batch_size=4,
        num_threads=1,
    )
    spec = plan_repository(
        parse(["--gpus", "0", "--max-image-bytes", "1000"]),
        device="gpu",
        runtime=mc.TORCH_CUDA,
        num_classes=10,
        converted=dataclasses.replace(converted, decoder_device="mixed"),
        native_models=frozenset({mc.PREPROCESSING}),
    )
    (tmp_path / mc.PREPROCESSING / "1").mkdir(parents=True)
    (tmp_path / mc.PREPROCESSING / "1" / "model.dali").write_bytes(converted.serialized)
    write_build_spec(tmp_path, spec)

    assert read_build_spec(tmp_path) == spec
    assert read_build_spec(tmp_path / "absent") is None


def test_a_dali_pipeline_build_at_crop_256_for_the_gpu_hands_256_to_every_writer(tmp_path):
    options = parse(
        [
            "--device",
            "gpu",
            "--dali-pipeline",
            f"{TUTORIAL_SCRIPT}:validation_pipe",
            *sum((["--pipeline-arg", a] for a in CROP_256), []),
        ]
    )
    # The real conversion, on the CPU decoder (the mixed one needs a GPU to verify): the
    # pipeline's output decides the crop; the GPU build's conversion differs only in its decoder.
    converted = convert_pipeline(
        PipelineSource.parse(options.dali_pipeline, options.pipeline_args),
        decoder_device="cpu",
        max_batch_size=4,
        num_threads=1,
    )
    assert converted.output_shape == (3, 256, 256)
    # The pip-installed server's GPU build without TensorRT: model.onnx and model.pt.
    spec = plan_repository(
        options,
        device="gpu",
        runtime=network_runtime("gpu", options.target, "tensorrt is not installed")[0],
        num_classes=10,
        converted=dataclasses.replace(converted, decoder_device="mixed"),
    )
    assert spec.runtime == mc.TORCH_CUDA and spec.crop == 256
    assert spec.preprocessing.crop == 224  # the built-in preprocessing's, which the pipeline replaces

    configs = spec.configs()
    assert list(configs[mc.NETWORK].input[0].dims) == [3, 256, 256]
    assert list(configs[mc.PREPROCESSING].output[0].dims) == [3, 256, 256]
    (warmup,) = {tuple(sample.inputs[mc.NETWORK_INPUT].dims) for sample in configs[mc.NETWORK].model_warmup}
    assert warmup == (3, 256, 256)

    model = architectures.dle_efficientnet_b0(num_classes=10).eval()
    files, diff = write_network_files(
        model, spec, tmp_path, arch="efficientnet-b0", fp16=True, progress=lambda line: None
    )
    assert [path.name for path in files] == [ONNX_FILE, TORCH_WEIGHTS_FILE]
    dims = [dim.dim_value for dim in onnx.load(tmp_path / ONNX_FILE).graph.input[0].type.tensor_type.shape.dim[1:]]
    assert dims == [3, 256, 256]
    assert diff < 1e-3
    assert torch.load(tmp_path / TORCH_WEIGHTS_FILE, weights_only=True)["image_size"] == 256
