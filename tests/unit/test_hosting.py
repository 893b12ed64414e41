"""Specification of ``bls_pipeline.builder.hosting`` and of a local repository on Triton's own
backends: who hosts each sub-model, and the configs and files that follow from it."""

from __future__ import annotations

import pytest

from bls_pipeline.builder import model_config as mc
from bls_pipeline.builder.hosting import AUTO, NATIVE, PYTHON, choose_hosting
from bls_pipeline.builder.repository import RepositorySpec
from bls_pipeline.errors import ConfigError
from bls_pipeline.layout import ORT_ALLOW_SPINNING


def native_models(**kwargs) -> set[str]:
    return {model for model, choice in choose_hosting(**kwargs).items() if choice.native}


@pytest.mark.parametrize(
    ("target", "device", "runtime", "requested", "built", "expected"),
    [
        # The container has every backend, whatever was asked or built here.
        ("triton", "cpu", "onnxruntime", PYTHON, False, {mc.PREPROCESSING, mc.NETWORK}),
        ("triton", "gpu", "tensorrt", AUTO, False, {mc.PREPROCESSING, mc.NETWORK}),
        # Local: native where built...
        ("local", "cpu", "onnxruntime", AUTO, True, {mc.PREPROCESSING, mc.NETWORK}),
        ("local", "cpu", "onnxruntime", NATIVE, True, {mc.PREPROCESSING, mc.NETWORK}),
        # ...but no TensorRT backend here, and the GPU keeps its measured Python-hosted network.
        ("local", "gpu", "tensorrt", AUTO, True, {mc.PREPROCESSING}),
        ("local", "gpu", "onnxruntime", AUTO, True, {mc.PREPROCESSING}),
        # The fallback: not built, or asked for.
        ("local", "cpu", "onnxruntime", AUTO, False, set()),
        ("local", "cpu", "onnxruntime", PYTHON, True, set()),
    ],
)
def test_who_hosts_each_sub_model(target, device, runtime, requested, built, expected):
    assert (
        native_models(target=target, device=device, runtime=runtime, requested=requested, backends_built=built)
        == expected
    )


def test_the_fallback_says_why_and_how_to_build_the_backends():
    choice = choose_hosting(target="local", device="cpu", runtime="onnxruntime", requested=AUTO, backends_built=False)
    assert choice[mc.PREPROCESSING].describe(mc.PREPROCESSING) == (
        "preprocessing: Python backend (Triton's DALI and ONNX Runtime backends are not built here; "
        "python tools/build_backends.py builds them)"
    )


@pytest.mark.parametrize(
    ("requested", "message"), [(NATIVE, "--hosting native: .* not built"), ("remote", "unknown hosting 'remote'")]
)
def test_an_impossible_or_unknown_hosting_is_refused(requested, message):
    with pytest.raises(ConfigError, match=message):
        choose_hosting(target="local", device="cpu", runtime="onnxruntime", requested=requested, backends_built=False)


def local_spec(native: frozenset[str], **kwargs) -> RepositorySpec:
    return RepositorySpec(target="local", max_batch_size=8, num_classes=5, native_models=native, **kwargs)


def test_a_natively_hosted_local_repository_has_the_containers_configs():
    both = frozenset({mc.PREPROCESSING, mc.NETWORK})
    local = local_spec(both, network_threads=3).configs()
    container = RepositorySpec(target="triton", max_batch_size=8, num_classes=5, network_threads=3).configs()
    assert local == container
    assert local[mc.PREPROCESSING].backend == "dali"
    assert local[mc.NETWORK].platform == "onnxruntime_onnx"
    # Our build of the ONNX Runtime backend passes the spinning switch through to the session.
    assert mc.parameters_of(local[mc.NETWORK]) == {ORT_ALLOW_SPINNING: "0", "intra_op_thread_count": "3"}


def test_the_sub_models_can_be_hosted_independently():
    configs = local_spec(frozenset({mc.PREPROCESSING})).configs()
    assert configs[mc.PREPROCESSING].backend == "dali"
    assert configs[mc.NETWORK].backend == "python"
    assert mc.parameters_of(configs[mc.NETWORK])["allow_spinning"] == "0"


@pytest.mark.parametrize(
    ("native", "kwargs", "message"),
    [
        (frozenset({mc.CLASSIFIER}), {}, "only preprocessing and efficientnet-b0 can be hosted natively"),
        (frozenset({mc.NETWORK}), {"runtime": "tensorrt", "device": "gpu"}, "no TensorRT backend"),
    ],
)
def test_a_model_that_cannot_be_hosted_natively_here_is_refused(native, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        local_spec(native, **kwargs)


def test_a_natively_hosted_local_repository_ships_a_serialized_pipeline_and_no_model_py(tmp_path):
    from bls_pipeline.builder.repository import write_repository
    from bls_pipeline.layout import DALI_FILE, MODEL_FILE, SERIALIZED_FILE

    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"onnx")
    output = tmp_path / "repository"
    output.mkdir()
    write_repository(
        output, local_spec(frozenset({mc.PREPROCESSING, mc.NETWORK})), labels=list("abcde"), network_files=[onnx]
    )

    files = {path.relative_to(output).as_posix() for path in output.rglob("*") if path.is_file()}
    assert f"{mc.PREPROCESSING}/1/{SERIALIZED_FILE}" in files
    assert f"{mc.PREPROCESSING}/1/{DALI_FILE}" in files
    assert {f"{mc.PREPROCESSING}/1/{MODEL_FILE}", f"{mc.NETWORK}/1/{MODEL_FILE}"}.isdisjoint(files)
    # The serialized pipeline is DALI's protobuf, naming the external source the classifier feeds.
    assert b"DALI_INPUT" in (output / mc.PREPROCESSING / "1" / SERIALIZED_FILE).read_bytes()
