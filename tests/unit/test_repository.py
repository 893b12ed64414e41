"""Specification of ``bls_pipeline.builder.repository``: the configs and files of a model repository."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bls_pipeline.builder import model_config as mc
from bls_pipeline.builder.repository import (
    WARMUP_IMAGE,
    RepositorySpec,
    prepare_output,
    warmup_file,
    write_repository,
)
from bls_pipeline.builder.spec import preprocessing_defaults
from bls_pipeline.errors import ConfigError
from bls_pipeline.layout import (
    BUILD_SPEC_FILE,
    DALI_FILE,
    LABELS_FILE,
    MODEL_FILE,
    ORT_ALLOW_SPINNING,
    SETTINGS_FILE,
    WARMUP_DIR,
)
from bls_pipeline.networks.preprocessing import IMAGENET_MEAN, IMAGENET_STD, PreprocessingSettings
from bls_pipeline.request.orchestration import ClassifierSettings
from bls_pipeline.request.submodels import SubModels

SAMPLES = Path(__file__).resolve().parents[2] / "samples"
NUM_CLASSES = 5
LABELS = [f"class {index}" for index in range(NUM_CLASSES)]
# Not any architecture's defaults, so that a file showing them came from the spec.
SETTINGS = PreprocessingSettings(
    resize_shorter=160, crop=128, interpolation="cubic", mean=IMAGENET_MEAN, std=IMAGENET_STD
)
MODELS = (mc.CLASSIFIER, mc.PREPROCESSING, mc.NETWORK)

SPECS = [
    pytest.param(
        RepositorySpec(
            target=target,
            device=device,
            max_batch_size=8,
            num_classes=NUM_CLASSES,
            runtime=runtime,
            preprocessing=SETTINGS,
            dali_autoconfig=autoconfig,
            max_image_bytes=1 << 20,
            queue_delay_us=100,
        ),
        id=f"{target}-{device}-{runtime}{'-autoconfig' if autoconfig else ''}",
    )
    for target, device, runtime, autoconfig in [
        ("triton", "gpu", "tensorrt", False),
        ("triton", "gpu", "onnxruntime", False),
        ("triton", "cpu", "onnxruntime", False),
        ("triton", "gpu", "onnxruntime", True),
        ("triton", "cpu", "onnxruntime", True),
        ("local", "gpu", "onnxruntime", False),
        ("local", "cpu", "onnxruntime", False),
        ("local", "cpu", "onnxruntime", True),  # autoconfig only applies to the DALI backend
    ]
]


def _spec(target: str, **overrides: object) -> RepositorySpec:
    values: dict = {"target": target, "max_batch_size": 2, "num_classes": NUM_CLASSES, "preprocessing": SETTINGS}
    return RepositorySpec(**{**values, **overrides})


def _dims(tensors, name: str) -> list[int]:
    (tensor,) = [tensor for tensor in tensors if tensor.name == name]
    return list(tensor.dims)


# --- configs --------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", SPECS)
def test_every_config_round_trips_through_text_format(tmp_path: Path, spec: RepositorySpec) -> None:
    for name, config in spec.configs().items():
        path = mc.write_config(tmp_path / f"{name}.pbtxt", config)

        assert mc.read_config(path) == config
        assert config.name == name


def test_an_unbatched_config_says_so_in_its_text() -> None:
    # Triton's DALI backend reads max_batch_size from the text; text format leaves a zero out.
    unbatched = RepositorySpec(target="triton", max_batch_size=8, num_classes=2).configs()[mc.PREPROCESSING]
    batched = RepositorySpec(target="local", max_batch_size=8, num_classes=2).configs()[mc.PREPROCESSING]

    assert mc.config_text(unbatched).splitlines().count("max_batch_size: 0") == 1
    assert "max_batch_size: 8" in mc.config_text(batched) and "max_batch_size: 0" not in mc.config_text(batched)


@pytest.mark.parametrize("spec", SPECS)
def test_the_three_configs_agree_on_names_and_shapes(spec: RepositorySpec) -> None:
    configs = spec.configs()
    classifier, preprocessing, network = (configs[name] for name in MODELS)
    crop = spec.preprocessing.crop

    parameters = mc.parameters_of(classifier)
    assert parameters["preprocessing_model"] == preprocessing.name == mc.PREPROCESSING
    assert parameters["network_model"] == network.name == mc.NETWORK
    assert parameters["labels_file"] == LABELS_FILE
    assert parameters["max_image_bytes"] == str(1 << 20)
    assert classifier.max_batch_size == network.max_batch_size == spec.max_batch_size
    assert _dims(network.input, mc.NETWORK_INPUT) == [3, crop, crop]
    assert _dims(network.output, mc.NETWORK_OUTPUT) == [NUM_CLASSES]
    # Triton's DALI backend fails every request of a batch with its error: natively hosted,
    # the model is unbatched, and the images are its tensors' first dimension.
    unbatched = spec.native(mc.PREPROCESSING)
    assert preprocessing.max_batch_size == (0 if unbatched else spec.max_batch_size)
    assert preprocessing.HasField("dynamic_batching") is not unbatched
    images = [-1] if unbatched else []
    if preprocessing.output:
        assert _dims(preprocessing.output, mc.DALI_OUTPUT) == images + _dims(network.input, mc.NETWORK_INPUT)
        assert _dims(preprocessing.input, mc.DALI_INPUT) == [*images, -1]


@pytest.mark.parametrize("spec", SPECS)
def test_classifier_offers_the_full_probabilities_with_its_labels_file_for_class_count(spec: RepositorySpec) -> None:
    classifier = spec.configs()[mc.CLASSIFIER]

    (output,) = [output for output in classifier.output if output.name == mc.PROBABILITIES_OUTPUT]
    assert output.data_type == mc.model_config_pb2.TYPE_FP32
    assert list(output.dims) == [NUM_CLASSES]
    # Triton resolves it against the model's directory; the classifier reads the same file.
    assert output.label_filename == f"1/{mc.parameters_of(classifier)['labels_file']}"
    assert [o.name for o in classifier.output if o.label_filename] == [mc.PROBABILITIES_OUTPUT]


@pytest.mark.parametrize("spec", SPECS)
def test_sub_models_warm_up_at_the_max_batch_first_then_one_image_before_ready(spec: RepositorySpec) -> None:
    configs = spec.configs()
    crop = spec.preprocessing.crop

    # A BLS request fails while the server starts ("Server not ready"): the classifier cannot warm up.
    assert not configs[mc.CLASSIFIER].model_warmup
    for name, input_name in ((mc.PREPROCESSING, mc.DALI_INPUT), (mc.NETWORK, mc.NETWORK_INPUT)):
        samples = configs[name].model_warmup
        assert all(list(sample.inputs) == [input_name] for sample in samples)
    # The max batch first: the mixed decoder's hardware share is sized by the first batch.
    assert [sample.batch_size for sample in configs[mc.NETWORK].model_warmup] == [spec.max_batch_size, 1]
    images = [sample.inputs[mc.DALI_INPUT] for sample in configs[mc.PREPROCESSING].model_warmup]
    size = WARMUP_IMAGE.stat().st_size
    if spec.native(mc.PREPROCESSING):
        # Unbatched: one request of N copies of the photograph, from a file that holds them.
        assert [sample.batch_size for sample in configs[mc.PREPROCESSING].model_warmup] == [1, 1]
        assert [(i.input_data_file, list(i.dims)) for i in images] == [
            (warmup_file(spec.max_batch_size), [spec.max_batch_size, size]),
            (WARMUP_IMAGE.name, [1, size]),
        ]
    else:
        assert [sample.batch_size for sample in configs[mc.PREPROCESSING].model_warmup] == [spec.max_batch_size, 1]
        assert {(i.input_data_file, tuple(i.dims)) for i in images} == {(WARMUP_IMAGE.name, (size,))}
    zeros = configs[mc.NETWORK].model_warmup[0].inputs[mc.NETWORK_INPUT]
    assert zeros.zero_data and list(zeros.dims) == [3, crop, crop]


def test_warmup_image_is_a_real_jpeg_photograph() -> None:
    from bls_pipeline.request.image_header import check_image

    data = WARMUP_IMAGE.read_bytes()
    check_image(data, max_bytes=len(data), max_pixels=10**7)
    assert data[:3] == b"\xff\xd8\xff" and len(data) > 10_000


@pytest.mark.parametrize("spec", [spec for spec in SPECS if spec.values[0].target == "triton"])
def test_triton_target_serves_dali_and_the_network_natively(spec: RepositorySpec) -> None:
    configs = spec.configs()

    assert configs[mc.CLASSIFIER].backend == "python"
    assert configs[mc.PREPROCESSING].backend == "dali"
    assert configs[mc.NETWORK].backend == ""
    platform = {"tensorrt": "tensorrt_plan", "onnxruntime": "onnxruntime_onnx"}[spec.runtime]
    assert configs[mc.NETWORK].platform == platform
    if spec.dali_autoconfig:
        # The DALI backend derives them from the autoserialized pipeline.
        assert not configs[mc.PREPROCESSING].input
        assert not configs[mc.PREPROCESSING].output
    else:
        assert [tensor.name for tensor in configs[mc.PREPROCESSING].input] == [mc.DALI_INPUT]
        assert [tensor.name for tensor in configs[mc.PREPROCESSING].output] == [mc.DALI_OUTPUT]


@pytest.mark.parametrize("spec", [spec for spec in SPECS if spec.values[0].target == "local"])
def test_local_target_hosts_everything_in_the_python_backend(spec: RepositorySpec) -> None:
    configs = spec.configs()

    assert {config.backend for config in configs.values()} == {"python"}
    assert all(config.platform == "" for config in configs.values())
    assert [tensor.name for tensor in configs[mc.PREPROCESSING].input] == [mc.DALI_INPUT]


# --- the device -----------------------------------------------------------------------------

KINDS = {"cpu": "KIND_CPU", "gpu": "KIND_GPU"}
DECODERS = {"cpu": "cpu", "gpu": "mixed"}


@pytest.mark.parametrize("device", ["cpu", "gpu"])
@pytest.mark.parametrize("target", mc.TARGETS)
def test_the_device_alone_decides_every_instance_kind_decoder_and_input_placement(
    tmp_path: Path, target: str, device: str
) -> None:
    spec = _spec(target, device=device, runtime="onnxruntime")
    output = _write(tmp_path, spec)

    written = {name: mc.read_config(output / name / "config.pbtxt") for name in MODELS}
    assert written == spec.configs()  # round-tripped through config.pbtxt
    for name, config in written.items():
        assert [(group.kind, group.count) for group in config.instance_group] == [
            (mc.model_config_pb2.ModelInstanceGroup.Kind.Value(KINDS[device]), 1)
        ], name
        assert mc.device_of(config) == device
    # Every Python-backend model says where its inputs live; only the network on a GPU takes
    # them in GPU memory. Models on other backends carry no such parameter.
    expected_parameters = {
        # The classifier's wiring to its sub-models, every key written (the contract's defaults).
        mc.CLASSIFIER: {"labels_file": LABELS_FILE, **SubModels().parameters(), mc.FORCE_CPU_ONLY_INPUT_TENSORS: "yes"},
        mc.PREPROCESSING: {"num_threads": str(spec.dali_threads)},
        # Triton's ONNX Runtime backend as tools/build_backends.py builds it passes this through.
        mc.NETWORK: {ORT_ALLOW_SPINNING: "0"},
    }
    if target == "local":
        expected_parameters[mc.PREPROCESSING][mc.FORCE_CPU_ONLY_INPUT_TENSORS] = "yes"
        expected_parameters[mc.NETWORK] = {
            "intra_op_threads": "0",
            "allow_spinning": "0",
            mc.FORCE_CPU_ONLY_INPUT_TENSORS: "no" if device == "gpu" else "yes",
        }
    assert {name: mc.parameters_of(config) for name, config in written.items()} == expected_parameters
    backends = {name: config.backend or config.platform for name, config in written.items()}
    assert backends == (
        {mc.CLASSIFIER: "python", mc.PREPROCESSING: "dali", mc.NETWORK: "onnxruntime_onnx"}
        if target == "triton"
        else dict.fromkeys(MODELS, "python")
    )
    settings = json.loads((output / mc.PREPROCESSING / "1" / SETTINGS_FILE).read_text())
    assert settings["decoder_device"] == DECODERS[device]


def test_tensorrt_needs_the_gpu_device() -> None:
    with pytest.raises(ConfigError, match="TensorRT engine runs only on a GPU"):
        _spec("triton", device="cpu", runtime="tensorrt")
    with pytest.raises(ConfigError, match="unknown device 'tpu'"):
        _spec("local", device="tpu")


def test_preprocessing_defaults_come_from_the_architecture() -> None:
    from bls_pipeline.networks.checkpoints import get_arch

    assert preprocessing_defaults("efficientnet-lite0") is get_arch("efficientnet-lite0").preprocessing
    assert preprocessing_defaults("efficientnet_b0").interpolation == "cubic"
    with pytest.raises(ConfigError, match="unknown architecture"):
        preprocessing_defaults("resnet50")


# --- the output directory -------------------------------------------------------------------


def test_prepare_output_refuses_a_non_empty_directory_without_force(tmp_path: Path) -> None:
    output = tmp_path / "repo"
    output.mkdir()
    (output / "old.txt").write_text("keep me")

    with pytest.raises(ConfigError, match="not empty"):
        prepare_output(output, force=False)
    assert (output / "old.txt").read_text() == "keep me"

    prepare_output(output, force=True)
    assert output.is_dir() and not any(output.iterdir())


def test_prepare_output_creates_a_missing_directory_and_refuses_a_file(tmp_path: Path) -> None:
    prepare_output(tmp_path / "a" / "b", force=False)
    assert (tmp_path / "a" / "b").is_dir()

    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="not a directory"):
        prepare_output(tmp_path / "file", force=True)


# --- the written repository -----------------------------------------------------------------


def _write(tmp_path: Path, spec: RepositorySpec) -> Path:
    network_file = tmp_path / "scratch" / "model.onnx"
    network_file.parent.mkdir()
    network_file.write_bytes(b"")  # write_repository only moves it
    output = tmp_path / "repo"
    prepare_output(output, force=False)
    paths = write_repository(output, spec, labels=LABELS, network_files=[network_file])
    assert paths == {name: output / name / "config.pbtxt" for name in MODELS}
    assert not network_file.exists()
    return output


def _files(root: Path) -> set[str]:
    return {
        path.relative_to(root).as_posix()
        for path in root.rglob("*")
        if path.is_file() and "bls_pipeline/" not in path.relative_to(root).as_posix()
    }


@pytest.mark.parametrize("device", ["cpu", "gpu"])
@pytest.mark.parametrize("target", mc.TARGETS)
def test_write_repository_produces_the_files_of_the_target(tmp_path: Path, target: str, device: str) -> None:
    spec = _spec(target, device=device)
    output = _write(tmp_path, spec)

    expected = {
        BUILD_SPEC_FILE,
        f"{mc.CLASSIFIER}/config.pbtxt",
        f"{mc.CLASSIFIER}/1/{MODEL_FILE}",
        f"{mc.CLASSIFIER}/1/{LABELS_FILE}",
        f"{mc.PREPROCESSING}/config.pbtxt",
        f"{mc.PREPROCESSING}/1/{DALI_FILE}",
        f"{mc.PREPROCESSING}/1/{SETTINGS_FILE}",
        f"{mc.PREPROCESSING}/{WARMUP_DIR}/{WARMUP_IMAGE.name}",
        f"{mc.NETWORK}/config.pbtxt",
        f"{mc.NETWORK}/1/model.onnx",
    }
    if target == "local":
        expected |= {f"{mc.PREPROCESSING}/1/{MODEL_FILE}", f"{mc.NETWORK}/1/{MODEL_FILE}"}
    else:
        # The unbatched DALI model warms its max batch with one request of that many photographs.
        expected.add(f"{mc.PREPROCESSING}/{WARMUP_DIR}/{warmup_file(spec.max_batch_size)}")
        rows = (output / mc.PREPROCESSING / WARMUP_DIR / warmup_file(spec.max_batch_size)).read_bytes()
        assert rows == WARMUP_IMAGE.read_bytes() * spec.max_batch_size
    assert _files(output) == expected

    shipped = output / mc.CLASSIFIER / "1" / "bls_pipeline"
    if target == "triton":
        # The container has no bls_pipeline: the classifier's model.py imports this copy.
        assert (shipped / "__init__.py").is_file()
        assert (shipped / "request" / "orchestration.py").is_file()
        assert not list(shipped.rglob("__pycache__"))
    else:
        assert not shipped.exists()

    for name, config in spec.configs().items():
        assert mc.read_config(output / name / "config.pbtxt") == config
    labels = (output / mc.CLASSIFIER / "1" / LABELS_FILE).read_text().splitlines()
    assert labels == LABELS
    settings = json.loads((output / mc.PREPROCESSING / "1" / SETTINGS_FILE).read_text())
    assert PreprocessingSettings(**{key: settings[key] for key in SETTINGS.__dataclass_fields__}) == SETTINGS
    assert settings["decoder_device"] == DECODERS[device]
    assert settings["max_batch_size"] == spec.max_batch_size


def test_write_repository_refuses_labels_that_do_not_match_the_classes(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="4 labels for a network with 5 classes"):
        write_repository(tmp_path, _spec("local"), labels=LABELS[:4], network_files=[])
    assert not any(tmp_path.iterdir())


# --- the written dali.py --------------------------------------------------------------------


@pytest.fixture(scope="module", params=mc.TARGETS)
def written(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[RepositorySpec, Path]:
    pytest.importorskip("nvidia.dali")
    # The CPU device: these run the written pipeline here, where there may be no GPU.
    spec = _spec(request.param, device="cpu")
    return spec, _write(tmp_path_factory.mktemp(request.param), spec)


def test_written_dali_file_has_exactly_one_autoserialized_pipeline(written: tuple[RepositorySpec, Path]) -> None:
    from nvidia.dali._utils.autoserialize import _discover_autoserialize

    from bls_pipeline.runtime.dali import load_pipeline_module

    _, output = written
    module = load_pipeline_module(output / mc.PREPROCESSING / "1" / DALI_FILE)

    assert len(_discover_autoserialize(module, visited=[])) == 1


def test_written_dali_file_reads_the_settings_beside_it(written: tuple[RepositorySpec, Path]) -> None:
    from bls_pipeline.runtime.dali import load_pipeline_module

    spec, output = written
    module = load_pipeline_module(output / mc.PREPROCESSING / "1" / DALI_FILE)
    config = mc.read_config(output / mc.PREPROCESSING / "config.pbtxt")

    settings = module.load_settings()
    assert settings == {**module.DEFAULT_SETTINGS, **spec.dali_settings()}
    assert settings["crop"] == SETTINGS.crop and settings["interpolation"] == SETTINGS.interpolation
    assert module.INPUT_NAME == "DALI_INPUT" == config.input[0].name


def test_written_dali_pipeline_preprocesses_a_photograph(written: tuple[RepositorySpec, Path]) -> None:
    from bls_pipeline.runtime.dali import DaliPreprocessor

    _, output = written
    config = mc.read_config(output / mc.PREPROCESSING / "config.pbtxt")
    runner = DaliPreprocessor.from_file(output / mc.PREPROCESSING / "1" / DALI_FILE, max_batch_size=2)
    image = np.frombuffer((SAMPLES / "chelsea.jpg").read_bytes(), np.uint8)

    images = runner([image])

    assert images.dtype == np.float32
    # [3, crop, crop] per image; the natively hosted, unbatched model's dims start with the images.
    assert list(images.shape) == [1, *config.output[0].dims[-3:]] == [1, 3, SETTINGS.crop, SETTINGS.crop]
    assert np.isfinite(images).all()


def test_classifier_limits_reach_its_config_and_settings() -> None:
    spec = RepositorySpec(
        target="local",
        max_batch_size=8,
        num_classes=10,
        max_image_bytes=1000,
        max_image_pixels=2000,
        max_request_bytes=3000,
    )

    parameters = mc.parameters_of(spec.configs()[mc.CLASSIFIER])
    settings = ClassifierSettings.from_parameters(parameters, max_batch_size=8)

    assert (settings.max_image_bytes, settings.max_image_pixels, settings.request_byte_limit) == (1000, 2000, 3000)


def test_a_triton_cpu_repository_serializes_a_pipeline_that_runs_without_a_gpu(tmp_path: Path) -> None:
    """What the DALI backend does at load on a KIND_CPU instance: autoserialize, then run with no device."""
    pytest.importorskip("nvidia.dali")
    from nvidia.dali import Pipeline

    from bls_pipeline.runtime.dali import load_pipeline_module

    output = _write(tmp_path, _spec("triton", device="cpu"))
    module = load_pipeline_module(output / mc.PREPROCESSING / "1" / DALI_FILE)
    serialized = tmp_path / "model.dali"

    module.preprocessing().serialize(filename=str(serialized))
    # No device_id given: the serialized one must already be "none".
    pipe = Pipeline.deserialize(filename=str(serialized), prefetch_queue_depth=1)
    pipe.build()
    pipe.feed_input(module.INPUT_NAME, [np.frombuffer((SAMPLES / "chelsea.jpg").read_bytes(), np.uint8)])
    (images,) = pipe.run()

    assert images.as_tensor().shape() == [1, 3, SETTINGS.crop, SETTINGS.crop]
