"""Shared fixtures: real photographs, built ``--target local`` repositories (on Triton's own
DALI and ONNX Runtime backends, and on Python-backend models), a real server.

``built_repository`` (and so ``triton_server`` and ``client``) takes four hostings in turn:
``native`` and ``python`` on the CPU, and ``gpu-native`` (Triton's DALI backend ``KIND_GPU``,
the network in a Python-backend model on torch CUDA graphs or TensorRT) and ``gpu-python``
(the Python-hosted DALI ``mixed`` decoder). The GPU ones run only in the suites marked
``gpu_suite`` (bad input, isolation, faults), and only where a CUDA GPU and a GPU network
runtime are; elsewhere, CI included, they skip and say why. On a GPU machine::

    # builds --device gpu repositories here (needs the shipped weights' package) ...
    pytest -rs tests/e2e/test_bad_input.py tests/e2e/test_isolation.py tests/e2e/test_faults.py
    # ... or serves one built elsewhere (tools/build_repo.py --device gpu, any hosting or
    # max batch size), re-hosted both ways
    BLS_TEST_GPU_REPOSITORY=/path/to/model_repository pytest -rs tests/e2e/test_bad_input.py ...

With ``BLS_TEST_GPU_REPOSITORY`` set, the CPU hostings skip (a GPU machine that cannot build
runs the GPU variants only; the development machine and CI run the CPU ones). ``gpu-native``
also needs Triton's native backends built GPU-enabled (``tools/build_backends.py``).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

# The tests' one image encoder: encode(array or PIL image, "PNG", **save_options) -> bytes.
from bls_pipeline.devtools.soak import encode_image as encode  # noqa: F401

PHOTOS = {"chelsea": 285, "coffee": 967, "rocket": 657}


@pytest.fixture(scope="session")
def photos() -> dict[str, np.ndarray]:
    """skimage's real photographs (different sizes) by name."""
    import skimage.data

    return {name: getattr(skimage.data, name)() for name in PHOTOS}


def require_native_backends() -> None:
    """Skip (fail under ``CI=true``) when Triton's native backends are not built here."""
    from bls_pipeline.backends import native_backends_dir

    if native_backends_dir() is None:
        reason = "Triton's DALI and ONNX Runtime backends are not built for this environment (python tools/build_backends.py)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}; CI=true: the native-hosting tests must run")
        pytest.skip(reason)


def _build(tmp_path_factory: pytest.TempPathFactory, hosting: str, device: str = "cpu") -> Path:
    from bls_pipeline.builder.pipeline import build_repository
    from bls_pipeline.builder.spec import BuildOptions

    if device == "cpu" and os.environ.get(PREBUILT_GPU_ENV):
        pytest.skip(f"{PREBUILT_GPU_ENV} is set: a GPU run on a prebuilt repository; the CPU hostings run elsewhere")

    output = tmp_path_factory.mktemp(f"repository-{device}-{hosting}") / "model_repository"
    build_repository(BuildOptions(output=output, target="local", device=device, max_batch_size=16, hosting=hosting))
    return output


@pytest.fixture(scope="session")
def native_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A local CPU repository on Triton's own DALI and ONNX Runtime backends (the container's layout)."""
    require_native_backends()
    return _build(tmp_path_factory, "native")


@pytest.fixture(scope="session")
def python_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A local CPU repository with DALI and the network in Python-backend models (the fallback)."""
    return _build(tmp_path_factory, "python")


# --- GPU repositories ----------------------------------------------------------------------------

# A GPU repository built elsewhere (`build_repo.py --device gpu`), for a GPU machine that
# cannot install the shipped weights' package; otherwise the GPU fixtures build their own.
PREBUILT_GPU_ENV = "BLS_TEST_GPU_REPOSITORY"
# Tolerance of the mixed (nvJPEG) decoder against the CPU decoder, and of the GPU path's
# other rounding (hardware or CUDA decoder by batch, FP16 network per batch size): measured on
# an H100, max probability difference 0.026 over 11 JPEG photographs; classes agree exactly.
DECODER_PROBABILITY_TOLERANCE = 0.05


def require_gpu() -> None:
    """Skip, CI included (CI has no GPU), where no CUDA GPU or no GPU network runtime is here."""
    from bls_pipeline.runtime.device import detect_device
    from bls_pipeline.runtime.network import gpu_runtime_missing

    device, reason = detect_device()
    if device != "gpu":
        pytest.skip(f"no CUDA GPU here ({reason}): the GPU variants run on a GPU machine")
    missing = gpu_runtime_missing()
    if missing:
        pytest.skip(missing)


def rehost(built: Path, output: Path, hosting: str) -> Path:
    """``built`` (any hosting) as a plain repository (``classifier``, ``preprocessing``, the
    network) of ``hosting``, written into ``output``: the benchmark's repository of it holds
    both hostings, the native one under suffixed names, renamed back here."""
    import tempfile

    from bls_pipeline.builder import model_config as mc
    from bls_pipeline.devtools.bench.repository import NATIVE_SUFFIX, write_bench_repository

    with tempfile.TemporaryDirectory() as scratch:
        bench = Path(scratch) / "bench"
        write_bench_repository(built, bench, native=hosting == "native")
        suffix = NATIVE_SUFFIX if hosting == "native" else ""
        for model in (mc.CLASSIFIER, mc.PREPROCESSING, mc.NETWORK):
            # Copies, not links: the bench repository links the built files, and tests corrupt theirs.
            shutil.copytree(bench / f"{model}{suffix}", output / model, ignore=shutil.ignore_patterns("__pycache__"))
            config = mc.read_config(output / model / "config.pbtxt")
            config.name = model
            if model == mc.CLASSIFIER:
                config.parameters["preprocessing_model"].string_value = mc.PREPROCESSING
                config.parameters["network_model"].string_value = mc.NETWORK
            mc.write_config(output / model / "config.pbtxt", config)
    return output


def _gpu_repository(tmp_path_factory: pytest.TempPathFactory, hosting: str) -> Path:
    require_gpu()
    if hosting == "native":
        require_native_backends()
    prebuilt = os.environ.get(PREBUILT_GPU_ENV)
    if not prebuilt:
        return _build(tmp_path_factory, hosting, device="gpu")
    return rehost(Path(prebuilt), tmp_path_factory.mktemp(f"repository-gpu-{hosting}") / "model_repository", hosting)


@pytest.fixture(scope="session")
def gpu_native_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A local ``--device gpu`` repository with ``preprocessing`` on Triton's DALI backend (KIND_GPU)."""
    return _gpu_repository(tmp_path_factory, "native")


@pytest.fixture(scope="session")
def gpu_python_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A local ``--device gpu`` repository with the DALI ``mixed`` decoder in a Python-backend model."""
    return _gpu_repository(tmp_path_factory, "python")


CPU_HOSTINGS = ("native", "python")
GPU_HOSTINGS = ("gpu-native", "gpu-python")


def repository_fixture(hosting: str) -> str:
    """The fixture name of a hosting of :data:`CPU_HOSTINGS` or :data:`GPU_HOSTINGS`."""
    return f"{hosting.replace('-', '_')}_repository"


@pytest.fixture(scope="session", params=[*CPU_HOSTINGS, *GPU_HOSTINGS])
def built_repository(request: pytest.FixtureRequest) -> Path:
    """Each hosting's repository in turn, built from the shipped EfficientNet-Lite0 weights:
    every test that uses it (or ``triton_server``) runs on each (the GPU ones: see the module
    docstring). Pytest groups the tests by hosting and finalizes one before the next, so only
    one session server runs at a time."""
    return request.getfixturevalue(repository_fixture(request.param))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Skip the GPU hostings of the suites not marked ``gpu_suite``: their expectations are
    the CPU's (e.g. in-process references on ONNX Runtime, stub counts)."""
    skip = pytest.mark.skip(reason="GPU hosting: this suite is not marked gpu_suite (its expectations are the CPU's)")
    for item in items:
        callspec = getattr(item, "callspec", None)
        if (
            callspec
            and callspec.params.get("built_repository") in GPU_HOSTINGS
            and not item.get_closest_marker("gpu_suite")
        ):
            item.add_marker(skip)


def device_of(repository: Path) -> str:
    """``cpu`` or ``gpu``: the device a built repository was built for (its network's instance kind)."""
    from bls_pipeline.builder import model_config as mc

    return mc.device_of(mc.read_config(repository / mc.NETWORK / "config.pbtxt"))


@pytest.fixture(scope="session")
def repository_device(built_repository: Path) -> str:
    """The device of ``built_repository``: ``cpu`` or ``gpu``."""
    return device_of(built_repository)


@pytest.fixture(scope="session")
def max_batch_size(built_repository: Path) -> int:
    """The classifier's ``max_batch_size`` in ``built_repository`` (16 here; a prebuilt GPU one may differ)."""
    from bls_pipeline.builder import model_config as mc

    return mc.read_config(built_repository / mc.CLASSIFIER / "config.pbtxt").max_batch_size


@pytest.fixture(scope="session")
def triton_server(built_repository: Path, tmp_path_factory: pytest.TempPathFactory):
    """A real ``tritonserver`` on 127.0.0.1 (free ports), serving ``built_repository``."""
    from bls_pipeline.server.launcher import LocalTritonServer, ServerOptions

    options = ServerOptions(
        model_repository=built_repository,
        http_port=0,
        grpc_port=0,
        metrics_port=0,
        log_path=tmp_path_factory.mktemp("server") / "tritonserver.log",
    )
    with LocalTritonServer(options) as server:
        yield server


@pytest.fixture()
def client(triton_server):
    """A client of the session's server."""
    from bls_pipeline.client import ClassifierClient

    with ClassifierClient(triton_server.url) as client:
        yield client


# Real training-script pipelines (tests/fixtures/pipelines), and the tutorial's arguments.
PIPELINE_FIXTURES = Path(__file__).resolve().parent / "fixtures" / "pipelines"
TUTORIAL_SCRIPT = PIPELINE_FIXTURES / "train_effnet.py"
TUTORIAL_ARGS = ["image_size=256", "image_crop=224", "interpolation=types.INTERP_LINEAR", "output_layout='CHW'"]


def run_tutorial_pipeline_with_its_reader(
    photos: list[Path], data_dir: Path, decoder_device: str = "cpu"
) -> np.ndarray:
    """The tutorial's ``validation_pipe`` run as its training script runs it: its file reader
    on ``data_dir/cls/N.ext``, the photographs in order. Independent of the conversion code:
    unmodified with ``decoder_device="mixed"`` (needs a GPU); with ``"cpu"`` only its decoder
    moves to the CPU. Returns ``[N, 3, 224, 224]`` on the host."""
    import importlib.util

    from nvidia.dali import fn, types

    (data_dir / "cls").mkdir(parents=True)
    for index, photo in enumerate(photos):
        (data_dir / "cls" / f"{index}{photo.suffix}").write_bytes(photo.read_bytes())
    spec = importlib.util.spec_from_file_location("train_effnet_reference", TUTORIAL_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    on_gpu = decoder_device == "mixed"
    decode = fn.decoders.image
    if not on_gpu:
        fn.decoders.image = lambda *inputs, **kwargs: decode(*inputs, **{**kwargs, "device": "cpu"})
    try:
        pipe = module.validation_pipe(
            data_dir=str(data_dir),
            interpolation=types.INTERP_LINEAR,
            image_size=256,
            image_crop=224,
            output_layout="CHW",
            batch_size=len(photos),
            num_threads=1,
            device_id=0 if on_gpu else None,
        )
        pipe.build()
        images, _labels = pipe.run()
    finally:
        fn.decoders.image = decode
    return np.array(images.as_cpu().as_tensor() if on_gpu else images.as_tensor())
