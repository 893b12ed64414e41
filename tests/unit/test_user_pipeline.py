"""Specification of ``bls_pipeline.builder.user_pipeline``: a training script's DALI pipeline,
converted into the served preprocessing, refused where it cannot be served, and verified.

The pipelines are real ones in ``tests/fixtures/pipelines/`` (written the way training code
writes them, including the tutorial's ``validation_pipe``); every conversion runs real DALI on
the photographs of ``samples/``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bls_pipeline.builder import model_config as mc
from bls_pipeline.builder.repository import RepositorySpec, write_repository
from bls_pipeline.builder.user_pipeline import (
    PipelineSource,
    UserPipelineError,
    convert_pipeline,
    parse_pipeline_arg,
    sample_photos,
)
from bls_pipeline.errors import ConfigError
from bls_pipeline.layout import SERIALIZED_FILE
from bls_pipeline.runtime.dali import DaliPreprocessor
from bls_pipeline.runtime.device import decoder_device, detect_device
from tests.conftest import PIPELINE_FIXTURES as FIXTURES
from tests.conftest import TUTORIAL_ARGS, run_tutorial_pipeline_with_its_reader
from tests.conftest import TUTORIAL_SCRIPT as TRAIN

MORE = FIXTURES / "more_pipelines.py"


def convert(path: Path, function: str, arguments: list[str] = (), **options):
    return convert_pipeline(
        PipelineSource.parse(f"{path}:{function}", arguments),
        decoder_device=options.pop("decoder_device", "cpu"),
        max_batch_size=options.pop("max_batch_size", 4),
        num_threads=1,
        **options,
    )


@pytest.mark.parametrize(
    ("path", "function", "arguments", "reader", "shape", "dropped", "placeholders"),
    [
        pytest.param(
            TRAIN,
            "validation_pipe",
            TUTORIAL_ARGS,
            "fn.readers.file",
            (3, 224, 224),
            (1,),
            ("data_dir",),
            id="tutorial",
        ),
        pytest.param(
            MORE, "file_list_pipe", [], "fn.readers.file", (3, 224, 224), (1,), ("file_list",), id="file-list-one-hot"
        ),
        pytest.param(MORE, "fixed_size_pipe", [], "fn.readers.file", (3, 224, 224), (), ("data_dir",), id="resize-x-y"),
        pytest.param(
            MORE,
            "graph_function",
            ["size=160"],
            "fn.readers.file",
            (3, 160, 160),
            (),
            ("data_dir",),
            id="plain-function",
        ),
        pytest.param(
            MORE,
            "webdataset_pipe",
            [],
            "fn.readers.webdataset",
            (3, 224, 224),
            (1,),
            ("tars", "indices"),
            id="webdataset",
        ),
        pytest.param(
            MORE, "coco_pipe", [], "fn.readers.coco", (3, 224, 224), (1, 2), ("root", "annotations"), id="coco"
        ),
        pytest.param(MORE, "mxnet_pipe", [], "fn.readers.mxnet", (3, 224, 224), (1,), ("rec", "idx"), id="mxnet"),
        pytest.param(
            FIXTURES / "project" / "train.py",
            "val_pipeline",
            [],
            "fn.readers.file",
            (3, 192, 192),
            (1,),
            ("data_dir",),
            id="imports-its-project",
        ),
        pytest.param(
            MORE, "conditional_pipe", [], "fn.readers.file", (3, 224, 224), (1,), ("data_dir",), id="conditionals"
        ),
        pytest.param(
            MORE,
            "tfrecord_pipe",
            [],
            "fn.readers.tfrecord",
            (3, 224, 224),
            (1,),
            ("tfrecord_files", "index_files"),
            id="tfrecord",
        ),
    ],
)
def test_a_validation_pipeline_converts_and_equals_the_original_on_the_photographs(
    path, function, arguments, reader, shape, dropped, placeholders
) -> None:
    converted = convert(path, function, arguments)

    assert converted.reader == reader
    assert converted.output_shape == shape and converted.crop == shape[1]
    assert converted.dropped_outputs == dropped
    assert converted.placeholders == placeholders
    assert converted.samples == len(sample_photos())
    assert converted.max_abs_diff == 0.0
    assert converted.decoder_device == "cpu"


@pytest.mark.parametrize(
    ("path", "function", "arguments", "message"),
    [
        pytest.param(
            TRAIN,
            "training_pipe",
            ["image_size=224", "interpolation=types.INTERP_LINEAR", "output_layout='CHW'"],
            "fn.random.coin_flip: cannot be served: it is random (augmentation); "
            "serve the validation pipeline, which must give the same output for the same image",
            id="random-flip",
        ),
        pytest.param(
            MORE,
            "random_crop_pipe",
            [],
            "fn.random_resized_crop: cannot be served: it is random (augmentation); "
            "serve the validation pipeline, which must give the same output for the same image",
            id="random-crop",
        ),
        pytest.param(
            MORE,
            "two_readers_pipe",
            [],
            "fn.readers.file: cannot be served: several image inputs (fn.readers.file and fn.readers.file); "
            "the served model takes one encoded image per sample",
            id="two-readers",
        ),
        pytest.param(
            MORE,
            "video_pipe",
            [],
            "fn.readers.video: cannot be served: videos are not images: write a dali.py by hand with "
            "fn.experimental.inputs.video or fn.external_source + fn.experimental.decoders.video "
            "(see DALI's 'from training to inference')",
            id="video",
        ),
        pytest.param(
            MORE,
            "fp16_hwc_pipe",
            [],
            "the pipeline outputs float16 HWC (224, 224, 3); the network takes float32 CHW: "
            "use dtype=types.FLOAT and output_layout='CHW' (crop_mirror_normalize)",
            id="fp16-hwc",
        ),
        pytest.param(
            MORE,
            "train_model",
            [],
            "train_model is not a DALI pipeline: it returned dict, not DALI outputs "
            "(decorate it with @pipeline_def, or return the outputs of fn.* operators)",
            id="not-a-pipeline",
        ),
        pytest.param(
            TRAIN,
            "validation_pipe",
            ["image_size=256", "image_crop=224", "output_layout='CHW'"],
            "validation_pipe needs a value for interpolation (not only a reader argument): "
            "pass --pipeline-arg interpolation=VALUE",
            id="missing-argument",
        ),
        pytest.param(
            TRAIN,
            "validation_pipe",
            [*TUTORIAL_ARGS, "batch=3"],
            "validation_pipe has no argument batch (it takes: data_dir, interpolation, image_size, image_crop, "
            "output_layout, rank, world_size)",
            id="unknown-argument",
        ),
        pytest.param(TRAIN, "no_such_pipe", [], f"{TRAIN} has no 'no_such_pipe'", id="no-such-function"),
        pytest.param(
            MORE,
            "label_dependent_pipe",
            [],
            "output 0 of the pipeline combines the images with the reader's labels or metadata "
            "(the served model gets no labels): return the images alone",
            id="images-mixed-with-labels",
        ),
        pytest.param(
            MORE,
            "extra_input_pipe",
            [],
            "fn.external_source (name 'SCALE'): cannot be served: several inputs (the reader and this one); "
            "the served model takes the encoded image alone",
            id="extra-external-source",
        ),
        pytest.param(
            MORE,
            "caffe_pipe",
            [],
            "fn.readers.caffe: cannot be served: its LMDB sample layout is not built here, so the conversion "
            "could not be verified; replace it by hand with fn.external_source(name='DALI_INPUT')",
            id="unverifiable-reader",
        ),
        pytest.param(
            MORE,
            "layout_argument_pipe",
            [],
            "layout_argument_pipe needs a value for layout (not only a reader argument): pass --pipeline-arg layout=VALUE",
            id="string-argument-not-for-the-reader",
        ),
        pytest.param(
            MORE,
            "aliased_reader_pipe",
            [],
            "aliased_reader_pipe: no fn.readers.* reader was called (call it as fn.readers.NAME), so there is no input to serve",
            id="aliased-reader",
        ),
        pytest.param(
            MORE,
            "IMAGENET_MEAN",
            [],
            f"{MORE}:IMAGENET_MEAN is not a DALI pipeline function: name the @pipeline_def function "
            "(or a plain function that returns fn.* outputs), got list",
            id="not-callable",
        ),
    ],
)
def test_what_cannot_be_served_is_refused_in_one_line_naming_the_operator(path, function, arguments, message) -> None:
    with pytest.raises(UserPipelineError) as caught:
        convert(path, function, arguments)

    assert str(caught.value) == message
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("image_size=256", ("image_size", 256)),
        ("mean=[0.5, 0.5, 0.5]", ("mean", [0.5, 0.5, 0.5])),
        ("output_layout='CHW'", ("output_layout", "CHW")),
        (" antialias = False ", ("antialias", False)),
    ],
)
def test_pipeline_args_are_python_literals(text, expected) -> None:
    assert parse_pipeline_arg(text) == expected


def test_pipeline_args_may_name_dali_types() -> None:
    from nvidia.dali import types

    assert parse_pipeline_arg("interpolation=types.INTERP_CUBIC") == ("interpolation", types.INTERP_CUBIC)
    assert parse_pipeline_arg("interpolation=INTERP_NN") == ("interpolation", types.INTERP_NN)
    assert parse_pipeline_arg("dtype=types.DALIDataType.FLOAT16") == ("dtype", types.DALIDataType.FLOAT16)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("image_size", "--pipeline-arg 'image_size': expected NAME=VALUE"),
        ("2x=1", "--pipeline-arg '2x=1': expected NAME=VALUE"),
        (
            "output_layout=CHW",
            "--pipeline-arg 'output_layout=CHW': 'CHW' is neither a Python literal nor a name from "
            "nvidia.dali.types (quote strings: output_layout=\"'CHW'\")",
        ),
        (
            "x=types",
            "--pipeline-arg 'x=types': 'types' is neither a Python literal nor a name from "
            "nvidia.dali.types (quote strings: x=\"'types'\")",
        ),
    ],
)
def test_bad_pipeline_args_are_refused(text, message) -> None:
    with pytest.raises(UserPipelineError) as caught:
        parse_pipeline_arg(text)
    assert str(caught.value) == message


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("train_effnet.py", "--dali-pipeline 'train_effnet.py': expected PATH.py:FUNCTION"),
        ("train.txt:pipe", "--dali-pipeline 'train.txt:pipe': expected PATH.py:FUNCTION"),
        ("missing.py:pipe", "--dali-pipeline: no such file missing.py"),
    ],
)
def test_the_pipeline_is_named_path_colon_function(spec, message) -> None:
    with pytest.raises(UserPipelineError) as caught:
        PipelineSource.parse(spec)
    assert str(caught.value) == message


def test_the_training_script_is_imported_not_edited() -> None:
    before = {path: path.read_bytes() for path in FIXTURES.iterdir() if path.is_file()}

    convert(TRAIN, "validation_pipe", TUTORIAL_ARGS)

    assert {path: path.read_bytes() for path in FIXTURES.iterdir() if path.is_file()} == before


def test_the_readers_and_decoders_of_dali_are_restored_after_a_conversion() -> None:
    from nvidia.dali import fn

    originals = (fn.readers.file, fn.readers.video, fn.decoders.image)
    with pytest.raises(UserPipelineError):
        convert(MORE, "random_crop_pipe")
    convert(TRAIN, "validation_pipe", TUTORIAL_ARGS)

    assert (fn.readers.file, fn.readers.video, fn.decoders.image) == originals


@pytest.fixture(scope="module")
def tutorial():
    return convert(TRAIN, "validation_pipe", TUTORIAL_ARGS, max_batch_size=8)


def test_the_served_graph_has_one_named_input_and_no_reader(tutorial) -> None:
    from nvidia.dali import types
    from nvidia.dali.pipeline import Pipeline

    pipe = Pipeline.deserialize(
        tutorial.serialized, batch_size=2, num_threads=1, device_id=None, prefetch_queue_depth=1
    )
    jpeg = np.fromfile(sample_photos()[0], np.uint8)
    pipe.feed_input(mc.DALI_INPUT, [jpeg, jpeg])
    (output,) = pipe.run()

    assert b"readers__File" not in tutorial.serialized and b"ExternalSource" in tutorial.serialized
    assert mc.DALI_OUTPUT.encode() in tutorial.serialized  # the output's name, for autoconfiguration
    assert np.array(output.as_tensor()).shape == (2, 3, 224, 224)
    # What the DALI backend's autoconfiguration reads (--dali-autoconfig).
    assert (pipe.output_dtype(), pipe.output_ndim()) == ([types.FLOAT], [3])


@pytest.mark.parametrize(
    "device",
    [
        "cpu",
        pytest.param(
            "gpu",
            marks=pytest.mark.skipif(
                detect_device()[0] != "gpu", reason="no CUDA device here: the mixed decoder runs on a GPU machine"
            ),
        ),
    ],
)
def test_the_served_model_equals_the_training_scripts_own_run(tmp_path: Path, device: str) -> None:
    photos = sample_photos()
    converted = convert(
        TRAIN, "validation_pipe", TUTORIAL_ARGS, decoder_device=decoder_device(device), max_batch_size=8
    )
    expected = run_tutorial_pipeline_with_its_reader(photos, tmp_path / "val", decoder_device(device))
    version = tmp_path / "preprocessing" / "1"
    version.mkdir(parents=True)
    (version / SERIALIZED_FILE).write_bytes(converted.serialized)

    runner = DaliPreprocessor.from_version_dir(version, max_batch_size=8, on_device=device == "gpu")
    served = runner([np.fromfile(photo, np.uint8) for photo in photos])

    assert converted.max_abs_diff == 0.0 and converted.decoder_device == decoder_device(device)
    np.testing.assert_array_equal(served, expected)


@pytest.mark.parametrize(("target", "autoconfig"), [("local", False), ("triton", False), ("triton", True)])
def test_the_repository_serves_model_dali_for_both_targets(tmp_path: Path, tutorial, target, autoconfig) -> None:
    spec = RepositorySpec(
        target=target, device="cpu", max_batch_size=8, num_classes=2, dali_autoconfig=autoconfig, user_pipeline=tutorial
    )
    write_repository(tmp_path, spec, labels=["a", "b"], network_files=[])
    version = tmp_path / mc.PREPROCESSING / "1"

    assert (version / SERIALIZED_FILE).read_bytes() == tutorial.serialized
    assert not (version / "dali.py").exists() and not (version / "preprocessing.json").exists()
    assert (version / "model.py").exists() == (target == "local")
    config = mc.read_config(tmp_path / mc.PREPROCESSING / "config.pbtxt")
    if not autoconfig:
        # Natively hosted, the model is unbatched: its first dimension counts the images.
        assert list(config.output[0].dims) == [-1, 3, 224, 224][(target == "local") :]
    network = mc.read_config(tmp_path / mc.NETWORK / "config.pbtxt")
    assert list(network.input[0].dims) == [3, 224, 224]

    runner = DaliPreprocessor.from_version_dir(version, max_batch_size=8, on_device=False)
    photos = [np.fromfile(path, np.uint8) for path in sample_photos()]
    images = runner(photos)
    assert images.shape == (len(photos), 3, 224, 224) and images.dtype == np.float32


def test_a_pipeline_converted_for_another_device_is_refused(tutorial) -> None:
    with pytest.raises(ConfigError, match="converted with a cpu decoder, the repository's device gpu needs mixed"):
        RepositorySpec(target="triton", device="gpu", max_batch_size=8, num_classes=2, user_pipeline=tutorial)


@pytest.mark.parametrize(
    ("arguments", "code", "message"),
    [
        (
            ["--dali-pipeline", f"{MORE}:random_crop_pipe", "--device", "cpu"],
            3,
            "build_repo: error: fn.random_resized_crop: cannot be served: it is random (augmentation); "
            "serve the validation pipeline, which must give the same output for the same image\n",
        ),
        (
            ["--dali-pipeline", f"{TRAIN}:validation_pipe", "--crop", "200"],
            2,
            "build_repo: error: --crop cannot be combined with --dali-pipeline: the pipeline decides the preprocessing\n",
        ),
        (["--pipeline-arg", "image_size=256"], 2, "build_repo: error: --pipeline-arg needs --dali-pipeline\n"),
    ],
)
def test_build_repo_refuses_in_one_line_and_writes_nothing(tmp_path: Path, capsys, arguments, code, message) -> None:
    from bls_pipeline.cli.build_repo import main

    output = tmp_path / "repository"
    # The exit-code convention: 2 for flags that do not go together, 3 for an unservable input.
    assert main([*arguments, "--output", str(output)]) == code
    assert capsys.readouterr().err == message
    assert not output.exists()


def test_tfrecord_records_carry_the_crc32c_of_the_format() -> None:
    from bls_pipeline.builder.reader_layouts import _crc32c

    assert _crc32c(b"123456789") == 0xE3069283  # the standard CRC-32C check value


def test_a_served_batch_smaller_than_the_samples_is_still_verified_on_all_of_them() -> None:
    converted = convert(TRAIN, "validation_pipe", TUTORIAL_ARGS, max_batch_size=1)

    assert converted.samples == len(sample_photos()) > 1 and converted.max_abs_diff == 0.0
