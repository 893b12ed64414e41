"""A training script's DALI pipeline, converted by ``tools/build_repo.py --dali-pipeline``
and served through the real ``tritonserver``: the served preprocessing equals the tutorial's
``validation_pipe`` run with its own reader on the same photographs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bls_pipeline.builder import model_config as mc
from bls_pipeline.builder.user_pipeline import sample_photos
from bls_pipeline.client import ClassifierClient, host_port
from tests.conftest import (
    PHOTOS,
    TUTORIAL_ARGS,
    TUTORIAL_SCRIPT,
    require_native_backends,
    run_tutorial_pipeline_with_its_reader,
)
from tests.e2e._support import start_server

pytestmark = pytest.mark.e2e


# Both hostings of the same model.dali: the local target's Python-backend model, and Triton's
# own DALI backend (the container's; here built by tools/build_backends.py).
# With --dali-autoconfig the DALI backend derives the preprocessing config from model.dali.
# The DALI backend's cases skip where it is not built (fail under CI=true: tests.conftest).
HOSTINGS = [
    pytest.param(("local", ["--hosting", "python"]), id="python-backend"),
    pytest.param(("triton", []), id="dali-backend"),
    pytest.param(("triton", ["--dali-autoconfig"]), id="dali-backend-autoconfig"),
]


@pytest.fixture(scope="module", params=HOSTINGS)
def built(request, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    """The repository that the CLI builds from the tutorial's pipeline, what it printed, its target."""
    import contextlib
    import io

    from bls_pipeline.cli.build_repo import main

    target, flags = request.param
    if target == "triton":
        require_native_backends()
    output = tmp_path_factory.mktemp(f"user-pipeline-{target}") / "model_repository"
    arguments = [f"--pipeline-arg={argument}" for argument in TUTORIAL_ARGS]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        status = main(
            [
                "--dali-pipeline",
                f"{TUTORIAL_SCRIPT}:validation_pipe",
                *arguments,
                "--device",
                "cpu",
                "--target",
                target,
                *flags,
                "--max-batch-size",
                "8",
                "--output",
                str(output),
            ]
        )
    assert status == 0, printed.getvalue()
    return output, printed.getvalue(), target


@pytest.fixture(scope="module")
def server(built, tmp_path_factory: pytest.TempPathFactory):
    repository, _, _ = built
    # The launcher stages Triton's DALI backend itself when the repository needs it.
    server = start_server(repository, tmp_path_factory.mktemp("server") / "tritonserver.log")
    try:
        yield server
    finally:
        server.stop()


def test_the_build_says_it_runs_the_script_and_what_it_verified(built) -> None:
    _, printed, _ = built
    assert "(this runs the code of your training script)" in printed
    assert (
        "fn.readers.file -> fn.external_source(name='DALI_INPUT'); outputs dropped (labels, metadata): 1; decoder: cpu"
        in printed
    )
    assert "reader-only arguments, no value needed: data_dir" in printed
    assert (
        f"verified on {len(sample_photos())} sample photographs: output float32 [3, 224, 224], max |converted - original| = 0"
        in printed
    )
    assert (built[0] / mc.PREPROCESSING / "1" / "model.dali").is_file()
    backend = mc.read_config(built[0] / mc.PREPROCESSING / "config.pbtxt").backend
    assert backend == {"local": "python", "triton": "dali"}[built[2]]


def test_served_preprocessing_equals_the_original_validation_pipeline(server, tmp_path: Path) -> None:
    import tritonclient.http as httpclient

    photos = sample_photos()
    expected = run_tutorial_pipeline_with_its_reader(photos, tmp_path / "val")
    client = httpclient.InferenceServerClient(host_port(server.url))
    try:
        for photo, reference in zip(photos, expected):
            data = np.fromfile(photo, np.uint8)[None, :]
            tensor = httpclient.InferInput(mc.DALI_INPUT, list(data.shape), "UINT8")
            tensor.set_data_from_numpy(data)
            served = client.infer(mc.PREPROCESSING, [tensor]).as_numpy(mc.DALI_OUTPUT)
            np.testing.assert_array_equal(served[0], reference, err_msg=photo.name)
    finally:
        client.close()


def test_the_classifier_serves_the_converted_pipeline(server) -> None:
    coffee = Path(sample_photos()[0]).with_name("coffee.jpg").read_bytes()
    with ClassifierClient(server.url) as client:
        (prediction,) = client.classify([coffee], top_k=3)
    assert prediction.class_ids[0] == PHOTOS["coffee"]
