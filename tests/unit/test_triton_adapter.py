"""The Python-backend adapters in process, with a small stand-in for the backend's utils module.

``triton_python_backend_utils`` exists only inside a Python-backend stub (ARCHITECTURE.md),
so this module installs a minimal one. Its BLS requests reach the real ``preprocessing`` and
``efficientnet-b0`` adapters, which run real DALI and ONNX Runtime on the built repository:
only the transport is stood in for. The real server is covered by ``tests/e2e``.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import json_format

from bls_pipeline.build import model_config as mc
from bls_pipeline.request.padding import pad_batch
from tests.conftest import encode

INVALID_ARG, INTERNAL = 3, 13


class FakeTritonError:
    INVALID_ARG, INTERNAL = INVALID_ARG, INTERNAL

    def __init__(self, message: str, code: int = INTERNAL) -> None:
        self._message, self._code = message, code

    def message(self) -> str:
        return self._message

    def code(self) -> int:
        return self._code


class FakeTensor:
    def __init__(self, name: str, array: np.ndarray) -> None:
        self._name, self._array = name, np.asarray(array)

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        return self._array


class FakeResponse:
    def __init__(self, output_tensors: list[FakeTensor] | None = None, error: FakeTritonError | None = None) -> None:
        self.outputs = {t.name(): t for t in output_tensors or []}
        self._error = error

    def has_error(self) -> bool:
        return self._error is not None

    def error(self) -> FakeTritonError | None:
        return self._error


class FakeRequest:
    """A client request, or a BLS request whose ``exec`` runs the named in-process model."""

    models: dict[str, object] = {}

    def __init__(self, model_name: str = "", inputs: list[FakeTensor] = (), requested_output_names=(), parameters=None) -> None:
        self.model_name = model_name
        self.inputs = {t.name(): t for t in inputs}
        self._parameters = json.dumps(parameters or {})

    def parameters(self) -> str:
        return self._parameters

    def exec(self) -> FakeResponse:
        (response,) = self.models[self.model_name].execute([self])
        return response


def _fake_module() -> types.ModuleType:
    module = types.ModuleType("triton_python_backend_utils")
    module.Tensor = FakeTensor
    module.InferenceRequest = FakeRequest
    module.InferenceResponse = FakeResponse
    module.TritonError = FakeTritonError
    module.get_input_tensor_by_name = lambda request, name: request.inputs.get(name)
    module.get_output_tensor_by_name = lambda response, name: response.outputs.get(name)
    return module


def _args(repository: Path, name: str) -> dict:
    config = mc.read_config(repository / name / "config.pbtxt")
    return {
        "model_config": json.dumps(json_format.MessageToDict(config, preserving_proto_field_name=True)),
        "model_repository": str(repository / name),
        "model_version": "1",
        "model_instance_kind": "CPU",
    }


def _load_model_py(repository: Path, name: str):
    spec = importlib.util.spec_from_file_location(f"model_{name.replace('-', '_')}", repository / name / "1" / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    instance = module.TritonPythonModel()
    instance.initialize(_args(repository, name))
    return instance


@pytest.fixture(scope="module")
def models(python_repository: Path):
    """The three models of the built repository, loaded through their own ``model.py``."""
    saved = sys.modules.get("triton_python_backend_utils")
    sys.modules["triton_python_backend_utils"] = _fake_module()
    sys.modules.pop("bls_pipeline.serving.models", None)
    try:
        loaded = {name: _load_model_py(python_repository, name) for name in ("preprocessing", "efficientnet-b0", "classifier")}
        FakeRequest.models = loaded
        yield loaded
    finally:
        sys.modules.pop("bls_pipeline.serving.models", None)
        if saved is None:
            sys.modules.pop("triton_python_backend_utils", None)
        else:
            sys.modules["triton_python_backend_utils"] = saved


def _request(images: list[bytes], **parameters: object) -> FakeRequest:
    return FakeRequest(inputs=[FakeTensor("IMAGE", pad_batch(images))], parameters=parameters)


@pytest.fixture(scope="module")
def jpegs(photos) -> dict[str, bytes]:
    return {name: encode(array, "JPEG", quality=90) for name, array in photos.items()}


def test_each_model_py_is_one_import_of_its_adapter(python_repository):
    for name in ("classifier", "preprocessing", "efficientnet-b0"):
        source = (python_repository / name / "1" / "model.py").read_text()
        assert "import" in source and "TritonPythonModel" in source
        assert len([line for line in source.splitlines() if line.strip() and not line.startswith(('"', "#"))]) == 1


def test_requests_of_one_execute_are_answered_in_order_with_their_own_top_k(models, jpegs):
    requests = [_request([jpegs["coffee"]], top_k=2), _request([jpegs["rocket"], jpegs["chelsea"]], top_k=4)]

    first, second = models["classifier"].execute(requests)

    assert not first.has_error() and not second.has_error()
    assert first.outputs["CLASS_IDS"].as_numpy().shape == (1, 2)
    assert first.outputs["CLASS_IDS"].as_numpy()[0, 0] == 967
    assert second.outputs["CLASS_IDS"].as_numpy().shape == (2, 4)
    assert list(second.outputs["CLASS_IDS"].as_numpy()[:, 0]) == [657, 285]
    assert second.outputs["LABELS"].as_numpy()[1, 0] == b"Egyptian cat"


def test_one_execute_batches_every_image_into_one_call_per_sub_model(models, jpegs, monkeypatch):
    calls: list[tuple[str, tuple[int, ...]]] = []
    original = FakeRequest.exec

    def counting_exec(self):
        calls.append((self.model_name, next(iter(self.inputs.values())).as_numpy().shape))
        return original(self)

    monkeypatch.setattr(FakeRequest, "exec", counting_exec)
    requests = [_request([jpegs["coffee"]]), _request([jpegs["rocket"], jpegs["chelsea"]]), _request([jpegs["coffee"]])]

    models["classifier"].execute(requests)

    assert [(name, shape[0]) for name, shape in calls] == [("preprocessing", 4), ("efficientnet-b0", 4)]


def test_a_bad_image_fails_only_its_request_with_invalid_arg_naming_its_index(models, jpegs):
    cut = jpegs["rocket"][: len(jpegs["rocket"]) // 2]
    requests = [_request([jpegs["coffee"]]), _request([jpegs["chelsea"], b"not an image at all"]), _request([jpegs["rocket"]])]

    good, bad, other = models["classifier"].execute(requests)

    assert bad.has_error() and bad.error().code() == INVALID_ARG
    assert bad.error().message().startswith("image 1:")
    assert good.outputs["CLASS_IDS"].as_numpy()[0, 0] == 967
    assert other.outputs["CLASS_IDS"].as_numpy()[0, 0] == 657
    (cut_response,) = models["classifier"].execute([_request([jpegs["coffee"], cut])])
    assert cut_response.has_error() and cut_response.error().code() == INVALID_ARG
    assert cut_response.error().message().startswith("image 1:")


@pytest.mark.parametrize("top_k", [0, -1, 1001, "abc", 2.5, True])
def test_a_bad_top_k_is_an_invalid_argument(models, jpegs, top_k):
    (response,) = models["classifier"].execute([_request([jpegs["coffee"]], top_k=top_k)])

    assert response.has_error() and response.error().code() == INVALID_ARG
    assert "top_k" in response.error().message()
