"""The tutorial's repository as users have it, adopted by ``tools/build_repo.py --from-repository``
and served through the real ``tritonserver`` on both hostings: the ensemble and the classifier
give the same classes on the sample photographs. And a network file with tensor names of its
own, served through ``--network``."""

from __future__ import annotations

import contextlib
import hashlib
import io
from pathlib import Path

import numpy as np
import pytest

from bls_pipeline.builder import model_config as mc
from bls_pipeline.builder.user_pipeline import sample_photos
from bls_pipeline.client import ClassifierClient, host_port
from tests.conftest import PHOTOS, require_native_backends
from tests.e2e._support import start_server
from tests.fixtures.tutorial_repository import (
    DECODE_LINE,
    ENSEMBLE,
    export_network,
    rename_tensors,
    write_tutorial_repository,
)

pytestmark = pytest.mark.e2e

# Triton's own DALI and ONNX Runtime backends (skip where not built; fail under CI=true), and
# the Python-hosted fallback.
HOSTINGS = ["native", "python"]


def _build(arguments: list[str]) -> tuple[int, str, str]:
    from tools.build_repo import main

    printed, errors = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(errors):
        status = main(arguments)
    return status, printed.getvalue(), errors.getvalue()


def _digest(directory: Path) -> dict[str, str]:
    return {
        str(path.relative_to(directory)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


def _served_classes(repository: Path, log_path: Path) -> list[int]:
    """The classifier's top class of each sample photograph, from a server started on ``repository``."""
    server = start_server(repository, log_path)
    try:
        with ClassifierClient(server.url) as client:
            predictions = client.classify([photo.read_bytes() for photo in sample_photos()], top_k=1)
    finally:
        server.stop()
    return [prediction.class_ids[0] for prediction in predictions]


@pytest.fixture(scope="module")
def network_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped network exported to ONNX with the tensor names of its own (``images__0``, ``logits__0``)."""
    return export_network(tmp_path_factory.mktemp("network") / "effnet.onnx")


@pytest.fixture(scope="module")
def tutorial(network_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tutorial_repository(tmp_path_factory.mktemp("tutorial") / "model_repository", network=network_file)


@pytest.fixture(scope="module", params=HOSTINGS)
def adopted(request, tutorial: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    """The adopted repository, what the build printed, and its hosting."""
    if request.param == "native":
        require_native_backends()
    before = _digest(tutorial)
    output = tmp_path_factory.mktemp(f"adopted-{request.param}") / "model_repository"
    status, printed, errors = _build(
        ["--from-repository", str(tutorial), "--output", str(output), "--device", "cpu", "--hosting", request.param]
    )
    assert status == 0, printed + errors
    assert _digest(tutorial) == before, "the user's repository was changed"
    return output, printed, request.param


@pytest.fixture(scope="module")
def server(adopted, tmp_path_factory: pytest.TempPathFactory):
    server = start_server(adopted[0], tmp_path_factory.mktemp("server") / "tritonserver.log")
    try:
        yield server
    finally:
        server.stop()


def test_the_build_prints_what_it_found_wrote_and_verified(adopted) -> None:
    repository, printed, hosting = adopted
    assert f"({'ensemble ' + ENSEMBLE})" in printed
    assert (
        "preprocessing (dali): DALI_INPUT UINT8 [-1] -> DALI_OUTPUT FP32 [3, 224, 224], max batch 32 (from config.pbtxt)"
        in printed
    )
    assert (
        "efficientnet-b0 (onnx): images__0 FP32 [3, 224, 224] -> logits__0 FP32 [1000], max batch 32 (from config.pbtxt)"
        in printed
    )
    assert "classifier: new, max batch 64 (split into 32 for the sub-models)" in printed
    assert f"verified in process (cpu) on {len(sample_photos())} sample photographs" in printed
    assert "model.dali written beside your dali.py (cpu decoder for --device cpu)" in printed
    backend = mc.read_config(repository / mc.PREPROCESSING / "config.pbtxt").backend
    assert backend == {"native": "dali", "python": "python"}[hosting]


def _ensemble_class(url: str, photo: Path) -> int:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(host_port(url))
    try:
        data = np.fromfile(photo, np.uint8)[None, :]
        tensor = httpclient.InferInput("INPUT", list(data.shape), "UINT8")
        tensor.set_data_from_numpy(data)
        return int(client.infer(ENSEMBLE, [tensor]).as_numpy("OUTPUT")[0].argmax())
    finally:
        client.close()


def test_the_ensemble_and_the_classifier_give_the_same_classes(server) -> None:
    photos = sample_photos()
    with ClassifierClient(server.url) as client:
        predictions = client.classify([photo.read_bytes() for photo in photos], top_k=1)
    by_classifier = [prediction.class_ids[0] for prediction in predictions]
    by_ensemble = [_ensemble_class(server.url, photo) for photo in photos]
    assert by_classifier == by_ensemble
    assert by_classifier == [PHOTOS[photo.stem] for photo in photos]


def test_a_request_larger_than_the_models_max_batch_is_split_by_the_classifier(server) -> None:
    photos = sample_photos()
    images = [photos[index % len(photos)].read_bytes() for index in range(40)]  # the models take 32
    with ClassifierClient(server.url) as client:
        predictions = client.classify(images, top_k=1)
    assert [prediction.class_ids[0] for prediction in predictions] == [
        PHOTOS[photos[index % len(photos)].stem] for index in range(40)
    ]


def test_the_tutorials_printed_pipeline_is_refused_naming_the_file_line_and_name(network_file, tmp_path: Path) -> None:
    printed_as_is = write_tutorial_repository(tmp_path / "as_printed", network=network_file, as_printed=True)
    status, _, errors = _build(
        ["--from-repository", str(printed_as_is), "--output", str(tmp_path / "out"), "--device", "cpu"]
    )
    dali_py = printed_as_is / "preprocessing" / "1" / "dali.py"
    assert status != 0
    assert errors.strip() == (
        f"build_repo: error: {dali_py}:{DECODE_LINE}: inference_pipe uses the name 'jpegs', which is not defined "
        "(did you mean 'jpeg', bound on line 9?)"
    )
    assert "Traceback" not in errors


@pytest.mark.parametrize("hosting", HOSTINGS)
def test_a_network_file_with_names_of_its_own_is_served(hosting, network_file, tmp_path: Path) -> None:
    if hosting == "native":
        require_native_backends()
    output = tmp_path / "model_repository"
    status, printed, errors = _build(
        [
            "--network",
            str(network_file),
            "--output",
            str(output),
            "--device",
            "cpu",
            "--hosting",
            hosting,
            "--max-batch-size",
            "8",
        ]
    )
    assert status == 0, printed + errors
    assert "effnet.onnx (onnx, dynamic batch): images__0 FP32 [3, 224, 224] -> logits__0 FP32 [1000]" in printed
    network = mc.read_config(output / mc.NETWORK / "config.pbtxt")
    assert [network.input[0].name, network.output[0].name] == ["images__0", "logits__0"]
    assert _served_classes(output, tmp_path / "tritonserver.log") == [PHOTOS[photo.stem] for photo in sample_photos()]


def test_a_network_that_does_not_fit_the_preprocessing_is_refused_in_one_line(network_file, tmp_path: Path) -> None:
    status, _, errors = _build(
        [
            "--network",
            str(network_file),
            "--crop",
            "192",
            "--resize-shorter",
            "220",
            "--output",
            str(tmp_path / "out"),
            "--device",
            "cpu",
        ]
    )
    assert status != 0
    assert errors.strip() == (
        "build_repo: error: the preprocessing gives DALI_OUTPUT FP32 [3, 192, 192] but effnet.onnx takes "
        "images__0 FP32 [3, 224, 224]: the shapes differ"
    )


def test_a_network_with_fp16_inputs_gets_the_preprocessed_batch_cast_by_the_classifier(
    network_file, tmp_path: Path
) -> None:
    require_native_backends()
    fp16 = rename_tensors(network_file, tmp_path / "effnet_fp16.onnx", fp16_input=True)
    tutorial = write_tutorial_repository(tmp_path / "tutorial", network=fp16, fp16_input=True)
    output = tmp_path / "adopted"
    arguments = ["--from-repository", str(tutorial), "--output", str(output), "--device", "cpu"]
    status, _, errors = _build(arguments)
    assert (
        status != 0
        and "which Triton refuses at load (an ensemble does not cast; the classifier does): pass --no-keep-ensemble"
        in errors
    )
    status, printed, errors = _build([*arguments, "--no-keep-ensemble"])
    assert status == 0, printed + errors
    assert f"{ENSEMBLE}: left out (--no-keep-ensemble)" in printed and not (output / ENSEMBLE).exists()
    assert "efficientnet-b0: images__0 FP16 [3, 224, 224] -> logits__0 (max batch 32)" in printed
    assert _served_classes(output, tmp_path / "tritonserver.log") == [PHOTOS[photo.stem] for photo in sample_photos()]


def test_an_unbatched_dali_model_is_adopted_and_serves_as_it_is(network_file, tmp_path: Path) -> None:
    """``max_batch_size: 0``, as this project builds the DALI model for Triton's DALI backend:
    the classifier sends it whole batches, up to its pipeline's batch size, in the first dimension."""
    require_native_backends()
    tutorial = write_tutorial_repository(tmp_path / "tutorial", network=network_file)
    config = tutorial / mc.PREPROCESSING / "config.pbtxt"
    text = (
        config.read_text()
        .replace("max_batch_size: 32", "max_batch_size: 0")
        .replace("dims: [ -1 ]", "dims: [ -1, -1 ]")
    )
    config.write_text(text.replace("dims: [ 3, 224, 224 ]", "dims: [ -1, 3, 224, 224 ]"))
    output = tmp_path / "adopted"

    status, printed, errors = _build(
        ["--from-repository", str(tutorial), "--output", str(output), "--device", "cpu", "--hosting", "native"]
    )

    assert status == 0, printed + errors
    assert "max batch 32 (from config.pbtxt; max batch from dali.py)" in printed
    assert mc.read_config(output / mc.PREPROCESSING / "config.pbtxt").max_batch_size == 0
    photos = sample_photos()
    server = start_server(output, tmp_path / "tritonserver.log")
    try:
        with ClassifierClient(server.url) as client:
            # More than the pipeline's batch of 32: the classifier splits it.
            predictions = client.classify([photos[i % len(photos)].read_bytes() for i in range(40)], top_k=1)
        assert [p.class_ids[0] for p in predictions] == [PHOTOS[photos[i % len(photos)].stem] for i in range(40)]
        assert [_ensemble_class(server.url, photo) for photo in photos] == [PHOTOS[photo.stem] for photo in photos]
    finally:
        server.stop()
