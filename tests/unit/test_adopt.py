"""Reading a user's repository and network file: what the classifier is wired to, and what is refused."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bls_pipeline.builder.adopt import read_repository
from bls_pipeline.builder.network_file import check_fit, read_network_file
from bls_pipeline.builder.user_dali import load_user_pipeline
from bls_pipeline.contract import TensorSpec
from bls_pipeline.errors import ConfigError
from bls_pipeline.request.submodels import SubModels
from tests.fixtures.tutorial_repository import (
    DECODE_LINE,
    ENSEMBLE,
    ENSEMBLE_CONFIG,
    export_network,
    write_tutorial_repository,
)


@pytest.fixture(scope="module")
def network_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_network(tmp_path_factory.mktemp("network") / "effnet.onnx")


@pytest.fixture()
def tutorial(network_file: Path, tmp_path: Path) -> Path:
    return write_tutorial_repository(tmp_path / "model_repository", network=network_file)


# --- the classifier's wiring --------------------------------------------------------------------


def test_the_default_wiring_is_the_contract_and_round_trips_through_parameters():
    wiring = SubModels(network_input="input__0", network_input_dtype="TYPE_FP16", network_input_dims=(3, 224, 224))

    assert SubModels.from_parameters(SubModels().parameters()) == SubModels()
    assert SubModels.from_parameters(wiring.parameters()) == wiring
    assert SubModels.from_parameters({}).network_model == "efficientnet-b0"
    assert "network_input_dims" not in SubModels().parameters()


@pytest.mark.parametrize(
    "classifier, preprocessing, network, chunk", [(64, 0, 0, 64), (64, 32, 0, 32), (64, 32, 8, 8), (16, 32, 32, 16)]
)
def test_the_classifier_splits_its_batches_to_the_smallest_limit(classifier, preprocessing, network, chunk):
    wiring = SubModels(preprocessing_max_batch_size=preprocessing, network_max_batch_size=network)
    assert wiring.chunk_size(classifier) == chunk


@pytest.mark.parametrize(
    "parameters, message",
    [
        ({"network_input_dtype": "TYPE_INT8"}, "TYPE_FP32 or TYPE_FP16"),
        ({"network_max_batch_size": "-1"}, "network_max_batch_size must be 0"),
        ({"preprocessing_max_batch_size": "many"}, "not a number"),
        ({"network_input_dims": "224,224,3"}, r"must be \[3, H, W\]"),
    ],
)
def test_a_bad_wiring_parameter_is_refused_naming_it(parameters, message):
    with pytest.raises(ConfigError, match=message):
        SubModels.from_parameters(parameters)


# --- network files ------------------------------------------------------------------------------


def test_an_onnx_file_gives_its_own_tensor_names_types_and_dims(network_file):
    network = read_network_file(network_file)

    assert network.input == TensorSpec("images__0", "TYPE_FP32", (3, 224, 224))
    assert network.output == TensorSpec("logits__0", "TYPE_FP32", (1000,))
    assert (network.batch, network.num_classes, network.served_name) == (-1, 1000, "model.onnx")


def test_a_tensorrt_plan_without_tensorrt_is_refused_saying_so(tmp_path):
    from bls_pipeline.runtime.network import tensorrt_importable

    if tensorrt_importable():
        pytest.skip("TensorRT is installed here: the plan would be read")
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"not read")
    with pytest.raises(ConfigError, match="reading its tensors needs TensorRT, which is not installed here"):
        read_network_file(plan)


CHW = TensorSpec("DALI_OUTPUT", "TYPE_FP32", (3, 224, 224))


@pytest.mark.parametrize(
    "network, why",
    [
        (TensorSpec("input", "TYPE_FP32", (3, 224, 224)), None),
        (TensorSpec("input", "TYPE_FP16", (3, 224, 224)), None),  # an FP16 engine: the classifier casts
        (TensorSpec("input", "TYPE_FP32", (3, -1, -1)), None),
        (TensorSpec("input", "TYPE_FP32", (224, 224, 3)), "same sizes in another layout"),
        (TensorSpec("input", "TYPE_FP32", (3, 256, 256)), "the shapes differ"),
        (TensorSpec("input", "TYPE_INT8", (3, 224, 224)), "the classifier feeds FP32 as it is or cast to FP16"),
    ],
)
def test_a_preprocessing_output_that_does_not_fit_the_network_is_refused_in_one_line_naming_both(network, why):
    if why is None:
        check_fit(CHW, network, preprocessing="preprocessing", network="net.onnx")
        return
    with pytest.raises(ConfigError) as raised:
        check_fit(CHW, network, preprocessing="preprocessing", network="net.onnx")
    message = str(raised.value)
    assert "\n" not in message and why in message
    assert message.startswith(
        f"preprocessing gives DALI_OUTPUT FP32 [3, 224, 224] but net.onnx takes input {network.data_type[5:]}"
    )


# --- reading a repository -----------------------------------------------------------------------


def test_the_tutorials_repository_is_followed_through_its_ensemble(tutorial):
    found = read_repository(tutorial)

    assert found.ensemble == ENSEMBLE
    assert found.submodels() == SubModels(
        preprocessing_model="preprocessing",
        preprocessing_input="DALI_INPUT",
        preprocessing_output="DALI_OUTPUT",
        preprocessing_max_batch_size=32,
        network_model="efficientnet-b0",
        network_input="images__0",
        network_output="logits__0",
        network_input_dims=(3, 224, 224),
        network_max_batch_size=32,
    )


def _unbatched(tutorial: Path, output_dims: str = "[ -1, 3, 224, 224 ]") -> None:
    config = tutorial / "preprocessing" / "config.pbtxt"
    text = (
        config.read_text()
        .replace("max_batch_size: 32", "max_batch_size: 0")
        .replace("dims: [ -1 ]", "dims: [ -1, -1 ]")
    )
    config.write_text(text.replace("dims: [ 3, 224, 224 ]", f"dims: {output_dims}"))


def test_an_unbatched_dali_model_takes_the_batch_in_its_first_dimension(tutorial):
    # As this project builds it for Triton's DALI backend, which fails a whole batch for one bad image.
    _unbatched(tutorial)

    found = read_repository(tutorial)

    assert (found.preprocessing.input.dims, found.preprocessing.output.dims) == ((-1,), (3, 224, 224))
    # Its limit is the pipeline's batch size (the tutorial's pipeline_def(batch_size=32)).
    assert found.submodels().preprocessing_max_batch_size == 32
    assert found.preprocessing.describe().endswith("max batch 32 (from config.pbtxt; max batch from dali.py)")


def test_an_unbatched_dali_model_without_a_batch_dimension_is_refused(tutorial):
    _unbatched(tutorial, output_dims="[ 3, 224, 224 ]")
    config = tutorial / "preprocessing" / "config.pbtxt"
    config.write_text(config.read_text().replace("dims: [ -1, -1 ]", "dims: [ -1 ]"))

    with pytest.raises(ConfigError, match=r"^preprocessing: max_batch_size 0 with DALI_INPUT UINT8 \[-1\]"):
        read_repository(tutorial)


def test_without_configs_the_tensors_come_from_the_autoserialized_pipeline_and_the_onnx_file(tutorial):
    (tutorial / "preprocessing" / "config.pbtxt").unlink()
    (tutorial / "efficientnet-b0" / "config.pbtxt").unlink()

    found = read_repository(tutorial, device="cpu")

    assert (found.preprocessing.input.name, found.preprocessing.output.dims) == ("DALI_INPUT", (3, 224, 224))
    assert found.preprocessing.max_batch_size == 32  # the tutorial's pipeline_def(batch_size=32)
    assert "autoserialized pipeline" in found.preprocessing.source
    assert (found.network.input.name, found.network.max_batch_size) == ("images__0", 0)
    assert found.network.source == "model.onnx, the ONNX file"


def test_the_user_pipeline_keeps_the_users_graph_when_its_decoder_already_runs_on_the_device(tutorial):
    dali_py = tutorial / "preprocessing" / "1" / "dali.py"
    moved = load_user_pipeline(dali_py.parent, decoder_device="cpu")
    dali_py.write_text(dali_py.read_text().replace('device="mixed"', 'device="cpu"'))
    kept = load_user_pipeline(dali_py.parent, decoder_device="cpu")

    assert (moved.unchanged, kept.unchanged) == (False, True)
    assert moved.input_names == kept.input_names == ("DALI_INPUT",)


def test_the_tutorials_printed_pipeline_is_named_by_file_line_and_undefined_name(network_file, tmp_path):
    as_printed = write_tutorial_repository(tmp_path / "as_printed", network=network_file, as_printed=True)
    dali_py = as_printed / "preprocessing" / "1" / "dali.py"

    with pytest.raises(ConfigError) as raised:
        load_user_pipeline(dali_py.parent, decoder_device="cpu")

    assert str(raised.value) == (
        f"{dali_py}:{DECODE_LINE}: inference_pipe uses the name 'jpegs', which is not defined "
        "(did you mean 'jpeg', bound on line 9?)"
    )


def test_several_ensembles_need_one_named_and_an_unknown_name_is_refused(tutorial):
    (tutorial / "other_ensemble").mkdir()
    (tutorial / "other_ensemble" / "config.pbtxt").write_text(ENSEMBLE_CONFIG.replace(ENSEMBLE, "other_ensemble"))

    with pytest.raises(ConfigError, match="has 2 ensembles .* name one with --ensemble"):
        read_repository(tutorial)
    with pytest.raises(ConfigError, match="no ensemble of that name"):
        read_repository(tutorial, ensemble="nope")
    assert read_repository(tutorial, ensemble="other_ensemble").ensemble == "other_ensemble"


def test_without_an_ensemble_the_one_dali_model_and_the_one_network_are_taken(tutorial):
    shutil.rmtree(tutorial / ENSEMBLE)
    found = read_repository(tutorial)
    assert (found.ensemble, found.preprocessing.name, found.network.name) == (None, "preprocessing", "efficientnet-b0")


def test_a_repository_with_a_classifier_already_is_refused(tutorial):
    (tutorial / "classifier" / "1").mkdir(parents=True)
    with pytest.raises(ConfigError, match="already has a model named 'classifier'"):
        read_repository(tutorial)


def test_a_network_config_that_does_not_fit_the_dali_output_is_refused_naming_both(tutorial):
    config = tutorial / "efficientnet-b0" / "config.pbtxt"
    config.write_text(config.read_text().replace("dims: [ 3, 224, 224 ]", "dims: [ 224, 224, 3 ]"))
    with pytest.raises(
        ConfigError, match=r"^preprocessing gives DALI_OUTPUT FP32 \[3, 224, 224\] but efficientnet-b0 takes images__0"
    ):
        read_repository(tutorial)


def test_for_the_container_the_users_models_are_copied_byte_for_byte_beside_the_classifier(tutorial, tmp_path):
    from bls_pipeline.builder.adopt import AdoptOptions, adopt_repository
    from bls_pipeline.layout import SERIALIZED_FILE

    output = tmp_path / "adopted"
    lines: list[str] = []
    adopt_repository(AdoptOptions(source=tutorial, output=output, target="triton", device="cpu"), progress=lines.append)

    for path in tutorial.rglob("*"):
        if path.is_file():
            assert (output / path.relative_to(tutorial)).read_bytes() == path.read_bytes(), path
    # What the container's classifier imports goes beside it; the cpu decoder as model.dali.
    assert (output / "classifier" / "1" / "bls_pipeline" / "request" / "submodels.py").is_file()
    assert (output / "preprocessing" / "1" / SERIALIZED_FILE).is_file()
    assert any(line.startswith("  verified in process (cpu)") for line in lines)


def test_a_gpu_onnx_network_for_the_pip_server_is_flagged_where_onnx_runtime_has_no_cuda(tutorial, tmp_path):
    import onnxruntime

    from bls_pipeline.builder.adopt import AdoptOptions, adopt_repository

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has CUDA: the native backend loads a KIND_GPU network")
    lines: list[str] = []
    options = AdoptOptions(source=tutorial, output=tmp_path / "adopted", target="local", device="gpu", hosting="native")
    adopt_repository(options, progress=lines.append, backends_built=True)  # the warning is about their load

    warning = [line for line in "\n".join(lines).splitlines() if "no CUDA provider" in line]
    assert len(warning) == 1 and "KIND_CPU" in warning[0] and "--target triton" in warning[0]


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--from-repository", "r", "--checkpoint", "c.pth"], "--checkpoint cannot be combined with --from-repository"),
        (["--from-repository", "r", "--crop", "192"], "--crop cannot be combined with --from-repository"),
        (["--ensemble", "e"], "--ensemble and --no-keep-ensemble need --from-repository"),
        (["--no-keep-ensemble"], "--ensemble and --no-keep-ensemble need --from-repository"),
        (["--network", "n.onnx", "--checkpoint", "c.pth"], "--network and --checkpoint: give one network"),
    ],
)
def test_flags_that_do_not_go_with_what_you_have_are_refused(arguments, message):
    import argparse

    from bls_pipeline.builder.spec import add_build_arguments, options_from_args

    parser = argparse.ArgumentParser()
    add_build_arguments(parser)
    assert options_from_args(parser.parse_args(arguments)).usage_error().startswith(message)


def test_adopting_imports_the_users_dali_py_once(tutorial, tmp_path):
    # Importing dali.py runs the user's code: reading, copying and verifying share one import.
    from bls_pipeline.builder.adopt import AdoptOptions, adopt_repository

    dali_py = tutorial / "preprocessing" / "1" / "dali.py"
    imports = tmp_path / "imports.txt"
    counter = f"with open({str(imports)!r}, 'a') as imports:\n    imports.write('imported\\n')\n"
    dali_py.write_text(counter + dali_py.read_text())
    (tutorial / "preprocessing" / "config.pbtxt").unlink()  # read_repository then reads the pipeline too

    def adopt(output: str) -> None:
        options = AdoptOptions(source=tutorial, output=tmp_path / output, target="triton", device="cpu")
        adopt_repository(options, progress=lambda line: None)

    adopt("adopted")
    assert imports.read_text() == "imported\n"

    # An edited file is imported again.
    dali_py.write_text(dali_py.read_text() + "\n# edited\n")
    adopt("adopted-again")
    assert imports.read_text() == "imported\nimported\n"
