"""The Python-backend adapters in process, with a small stand-in for the backend's utils module.

``triton_python_backend_utils`` exists only inside a Python-backend stub (ARCHITECTURE.md),
so this module installs a minimal one. Its BLS requests reach the real ``preprocessing`` and
``efficientnet-b0`` adapters, which run real DALI and ONNX Runtime on the built repository:
only the transport is stood in for. The real server is covered by ``tests/e2e``.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import json_format

from bls_pipeline.builder import model_config as mc
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

    def is_cpu(self) -> bool:
        return True

    def as_numpy(self) -> np.ndarray:
        return self._array

    def to_dlpack(self) -> FakeCapsule:
        return FakeCapsule(self._array, on_gpu=not self.is_cpu())

    @staticmethod
    def from_dlpack(name: str, capsule: FakeCapsule) -> FakeTensor:
        return (FakeGpuTensor if capsule.on_gpu else FakeTensor)(name, capsule.array)


class FakeGpuTensor(FakeTensor):
    """A tensor in GPU memory: like the real one, it refuses ``as_numpy``."""

    def is_cpu(self) -> bool:
        return False

    def as_numpy(self) -> np.ndarray:
        raise RuntimeError("as_numpy() can only be called on a CPU tensor")


class FakeCapsule:
    """What ``to_dlpack`` hands over: the same memory, no copy."""

    def __init__(self, array: np.ndarray, *, on_gpu: bool) -> None:
        self.array, self.on_gpu = array, on_gpu


class FakePreferredMemory:
    def __init__(self, memory_type: int, device_id: int = 0) -> None:
        self.memory_type, self.device_id = memory_type, device_id


class FakeLogger:
    errors: list[str] = []
    infos: list[str] = []

    @classmethod
    def log_error(cls, message: str) -> None:
        cls.errors.append(message)

    @classmethod
    def log_info(cls, message: str) -> None:
        cls.infos.append(message)


class FakeModelException(Exception):
    pass


class FakeResponse:
    def __init__(self, output_tensors: list[FakeTensor] | None = None, error: FakeTritonError | None = None) -> None:
        self.outputs = {t.name(): t for t in output_tensors or []}
        self._error = error

    def has_error(self) -> bool:
        return self._error is not None

    def error(self) -> FakeTritonError | None:
        return self._error


class FakeMetric:
    def __init__(self, labels: dict[str, str], buckets: list[float] | None = None) -> None:
        self.labels, self.buckets, self.values = labels, buckets, []

    def increment(self, value: float) -> None:
        self.values.append(value)

    observe = increment


class FakeMetricFamily:
    """Records every value sent, by family name; the real one is checked in tests/e2e."""

    COUNTER, GAUGE, HISTOGRAM = "counter", "gauge", "histogram"
    created: dict[str, list[FakeMetric]] = {}

    def __init__(self, name: str, description: str, kind: str) -> None:
        self.name, self.kind = name, kind
        self.created[name] = []

    def Metric(self, labels: dict[str, str], buckets: list[float] | None = None) -> FakeMetric:  # noqa: N802 (backend's name)
        if (buckets is not None) != (self.kind == self.HISTOGRAM):
            raise ValueError("buckets are required for histograms only")
        metric = FakeMetric(labels, buckets)
        self.created[self.name].append(metric)
        return metric


class FakeRequest:
    """A client request, or a BLS request whose ``exec`` runs the named in-process model."""

    models: dict[str, object] = {}

    def __init__(
        self,
        model_name: str = "",
        inputs: list[FakeTensor] = (),
        requested_output_names=(),
        parameters=None,
        preferred_memory=None,
    ) -> None:
        self.model_name = model_name
        self.preferred_memory = preferred_memory
        self.inputs = {t.name(): t for t in inputs}
        self._requested = list(requested_output_names)
        self._parameters = json.dumps(parameters or {})

    def parameters(self) -> str:
        return self._parameters

    def requested_output_names(self) -> list[str]:
        return self._requested

    def exec(self) -> FakeResponse:
        (response,) = self.models[self.model_name].execute([self])
        return response


def _fake_module() -> types.ModuleType:
    module = types.ModuleType("triton_python_backend_utils")
    module.Tensor = FakeTensor
    module.InferenceRequest = FakeRequest
    module.InferenceResponse = FakeResponse
    module.TritonError = FakeTritonError
    module.TritonModelException = FakeModelException
    module.PreferredMemory = FakePreferredMemory
    module.TRITONSERVER_MEMORY_CPU, module.TRITONSERVER_MEMORY_GPU = 0, 2
    module.Logger = FakeLogger
    module.MetricFamily = FakeMetricFamily
    module.get_input_tensor_by_name = lambda request, name: request.inputs.get(name)
    module.get_output_tensor_by_name = lambda response, name: response.outputs.get(name)
    return module


def _args(repository: Path, name: str, kind: str = "CPU") -> dict:
    config = mc.read_config(repository / name / "config.pbtxt")
    return {
        "model_config": json.dumps(json_format.MessageToDict(config, preserving_proto_field_name=True)),
        "model_name": name,
        "model_repository": str(repository / name),
        "model_version": "1",
        "model_instance_kind": kind,
        "model_instance_device_id": "0",
    }


def _load_model_py(repository: Path, name: str, kind: str = "CPU"):
    spec = importlib.util.spec_from_file_location(
        f"model_{name.replace('-', '_')}", repository / name / "1" / "model.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    instance = module.TritonPythonModel()
    instance.initialize(_args(repository, name, kind))
    return instance


@pytest.fixture(scope="module")
def models(python_repository: Path):
    """The three models of the built repository, loaded through their own ``model.py``."""
    saved = sys.modules.get("triton_python_backend_utils")
    sys.modules["triton_python_backend_utils"] = _fake_module()
    sys.modules.pop("bls_pipeline.serving.models", None)
    sys.modules.pop("bls_pipeline.serving.bls", None)
    try:
        loaded = {
            name: _load_model_py(python_repository, name) for name in ("preprocessing", "efficientnet-b0", "classifier")
        }
        FakeRequest.models = loaded
        yield loaded
    finally:
        sys.modules.pop("bls_pipeline.serving.models", None)
        sys.modules.pop("bls_pipeline.serving.bls", None)
        if saved is None:
            sys.modules.pop("triton_python_backend_utils", None)
        else:
            sys.modules["triton_python_backend_utils"] = saved


def _request(images: list[bytes], outputs: tuple[str, ...] = (), **parameters: object) -> FakeRequest:
    return FakeRequest(
        inputs=[FakeTensor("IMAGE", pad_batch(images))], requested_output_names=outputs, parameters=parameters
    )


def _sent(family: str, label: str) -> dict[str, float]:
    """Everything the classifier sent to a metric family so far, summed by one label's value."""
    return {metric.labels[label]: sum(metric.values) for metric in FakeMetricFamily.created[family]}


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
    requests = [
        _request([jpegs["coffee"]]),
        _request([jpegs["chelsea"], b"not an image at all"]),
        _request([jpegs["rocket"]]),
    ]

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


def test_full_probabilities_are_sent_only_to_requests_that_ask_for_them(models, jpegs):
    asked, plain = models["classifier"].execute(
        [_request([jpegs["coffee"]], outputs=("PROBABILITIES", "SCORES")), _request([jpegs["rocket"]])]
    )

    probabilities = asked.outputs["PROBABILITIES"].as_numpy()
    assert probabilities.shape == (1, 1000) and probabilities.dtype == np.float32
    assert probabilities.sum() == pytest.approx(1.0, abs=1e-4)
    assert probabilities[0].argmax() == 967
    assert probabilities[0, 967] == pytest.approx(asked.outputs["SCORES"].as_numpy()[0, 0])
    assert "PROBABILITIES" not in plain.outputs


def test_each_execute_adds_its_stage_times_and_image_count_once(models, jpegs):
    from bls_pipeline.serving.metrics import EXECUTE_IMAGES, STAGE_DURATION, STAGES

    metrics = models["classifier"].metrics
    metrics.flush()  # what earlier tests left
    stages_before = {m.labels["stage"]: len(m.values) for m in FakeMetricFamily.created[STAGE_DURATION]}
    (images,) = FakeMetricFamily.created[EXECUTE_IMAGES]
    observed_before = len(images.values)

    models["classifier"].execute([_request([jpegs["coffee"], jpegs["rocket"]]), _request([jpegs["chelsea"]])])
    metrics.flush()  # sent by the metrics thread within a second, or now

    assert images.values[observed_before:] == [3.0]
    assert images.buckets[-1] == 16.0 and images.labels == {"model": "classifier", "version": "1"}
    for metric in FakeMetricFamily.created[STAGE_DURATION]:
        assert len(metric.values) == stages_before[metric.labels["stage"]] + 1
        assert metric.values[-1] > 0, metric.labels["stage"]
    assert sorted(stages_before) == sorted(STAGES)


def test_refusals_are_counted_by_reason(models, jpegs, photos):
    from bls_pipeline.devtools.soak import corrupt_png_data
    from bls_pipeline.serving.metrics import REFUSALS

    metrics = models["classifier"].metrics
    metrics.flush()
    before = _sent(REFUSALS, "reason")
    # Its header is sound, its pixel data is not: the decoder refuses it.
    corrupt = corrupt_png_data(encode(photos["coffee"], "PNG"))
    requests = [
        _request([jpegs["coffee"]], top_k=0),
        _request([b"not an image at all"]),
        _request([corrupt]),
        _request([jpegs["coffee"]]),
    ]

    responses = models["classifier"].execute(requests)

    assert [response.has_error() for response in responses] == [True, True, True, False]
    metrics.flush()
    after = _sent(REFUSALS, "reason")
    assert {reason: after[reason] - before[reason] for reason in after} == {
        "invalid_request": 1,
        "invalid_image": 1,
        "undecodable": 1,
        "submodel_failure": 0,
    }


# --- tensors in GPU memory ------------------------------------------------------------------


class AnswersInGpuMemory:
    """The real preprocessing model, answering in GPU memory as a mixed-decoder DALI model does."""

    def __init__(self, model) -> None:
        self.model, self.requests = model, []

    def execute(self, requests):
        self.requests.extend(requests)
        return [
            FakeResponse([FakeGpuTensor(t.name(), t.as_numpy()) for t in response.outputs.values()])
            for response in self.model.execute(requests)
        ]


class ComputesOnGpuInputs:
    """The real network, reading its input through DLPack as the network model on a GPU does."""

    def __init__(self, model) -> None:
        self.model, self.requests = model, []

    def execute(self, requests):
        self.requests.extend(requests)
        (request,) = requests
        images = request.inputs["INPUT"]
        assert not images.is_cpu(), "the preprocessed batch came back to the host"
        return [FakeResponse([FakeTensor("OUTPUT", self.model.network(images.to_dlpack().array))])]


def test_on_a_gpu_the_preprocessed_batch_goes_to_the_network_without_reaching_the_host(
    models, jpegs, python_repository, monkeypatch
):
    preprocessing = AnswersInGpuMemory(models["preprocessing"])
    network = ComputesOnGpuInputs(models["efficientnet-b0"])
    monkeypatch.setattr(FakeRequest, "models", {"preprocessing": preprocessing, "efficientnet-b0": network})
    classifier = _load_model_py(python_repository, "classifier", kind="GPU")

    first, second = classifier.execute(
        [_request([jpegs["coffee"]], top_k=1), _request([jpegs["rocket"], jpegs["chelsea"]], top_k=1)]
    )

    assert first.outputs["CLASS_IDS"].as_numpy().tolist() == [[967]]
    assert second.outputs["CLASS_IDS"].as_numpy().tolist() == [[657], [285]]
    ((to_preprocessing, to_network),) = zip(preprocessing.requests, network.requests)
    # Preprocessing is asked to answer in this GPU's memory, the network in host memory.
    assert (to_preprocessing.preferred_memory.memory_type, to_preprocessing.preferred_memory.device_id) == (2, 0)
    assert to_network.preferred_memory.memory_type == 0


def test_the_preprocessing_model_logs_where_its_decoder_and_outputs_are(models):
    # The CPU repository: a cpu decoder answering in host memory.
    assert "preprocessing: DALI cpu decoder, outputs in host memory" in FakeLogger.infos


def test_a_gpu_tensor_where_host_logits_were_asked_for_is_a_clear_internal_error(models, jpegs, monkeypatch):
    network = AnswersInGpuMemory(models["efficientnet-b0"])
    monkeypatch.setattr(FakeRequest, "models", {**models, "efficientnet-b0": network})

    (response,) = models["classifier"].execute([_request([jpegs["coffee"]])])

    assert response.has_error() and response.error().code() == INTERNAL
    assert (
        response.error().message() == "efficientnet-b0: returned OUTPUT in GPU memory where host memory was asked for"
    )


# --- errors that blame the right party ------------------------------------------------------

# What DALI raises when the GPU decoder runs out of device memory: the decoder's operator
# error, with CUDA's reason.
CUDA_OUT_OF_MEMORY = (
    "Critical error in pipeline:\n"
    "Error in MIXED operator `nvidia.dali.fn.decoders.image`,\n"
    "which was used in the pipeline definition with the following traceback:\n\n"
    '  File "/repo/preprocessing/1/dali.py", line 82, in preprocessing\n'
    "    images = fn.decoders.image(encoded, device=decoder_device, output_type=types.RGB)\n\n"
    "encountered:\n\nCUDA runtime API error cudaErrorMemoryAllocation (2):\nout of memory\n"
    "Current pipeline object is no longer valid."
)


def test_a_cuda_error_in_preprocessing_is_internal_logged_and_not_retried_image_by_image(models, jpegs, monkeypatch):
    calls = []

    class OutOfMemory:
        """A DALI pipeline whose run fails as on a GPU without memory left."""

        def feed_input(self, name, rows):
            calls.append(len(rows))

        def run(self):
            raise RuntimeError(CUDA_OUT_OF_MEMORY)

    # The runner rebuilds a real pipeline after the failure, as it does after any.
    monkeypatch.setattr(models["preprocessing"].runner, "_pipe", OutOfMemory())
    monkeypatch.setattr(FakeLogger, "errors", [])
    requests = [_request([jpegs["coffee"], jpegs["rocket"]]), _request([jpegs["chelsea"]])]

    responses = models["classifier"].execute(requests)

    assert calls == [3]  # one batch: no image-by-image and no request-by-request retry
    for response in responses:
        assert response.has_error() and response.error().code() == INTERNAL
        assert response.error().message() == (
            "preprocessing: Error in MIXED operator `nvidia.dali.fn.decoders.image`: out of memory"
        )
    (logged,) = FakeLogger.errors
    assert logged == f"preprocessing failed: {CUDA_OUT_OF_MEMORY}"


def test_a_sub_model_that_cannot_be_called_is_internal_and_logged(models, jpegs, monkeypatch):
    def restarting(self):
        raise FakeModelException("Failed to open the cudaIpcHandle / model 'preprocessing' is not ready")

    monkeypatch.setattr(FakeRequest, "exec", restarting)
    monkeypatch.setattr(FakeLogger, "errors", [])

    (response,) = models["classifier"].execute([_request([jpegs["coffee"], jpegs["rocket"]])])

    assert response.has_error() and response.error().code() == INTERNAL
    assert response.error().message().startswith("preprocessing: ")
    assert len(FakeLogger.errors) == 1


def test_a_request_in_the_bytes_form_is_answered_like_the_padded_one(models, jpegs):
    images = [jpegs["coffee"], jpegs["rocket"]]
    files = np.empty((len(images), 1), dtype=object)
    files[:, 0] = images
    by_bytes = FakeRequest(inputs=[FakeTensor("IMAGE_BYTES", files)], parameters={"top_k": 3})

    bytes_response, padded_response = models["classifier"].execute([by_bytes, _request(images, top_k=3)])

    for name in ("CLASS_IDS", "SCORES", "LABELS"):
        np.testing.assert_array_equal(bytes_response.outputs[name].as_numpy(), padded_response.outputs[name].as_numpy())
    assert list(bytes_response.outputs["CLASS_IDS"].as_numpy()[:, 0]) == [967, 657]


class RenamedSubModel:
    """A sub-model under the user's names: it answers only to its own tensor names and dtype,
    and records the batch sizes it was sent; the work is the real model's."""

    def __init__(self, model, inputs: tuple[str, str], outputs: tuple[str, str], dtype=None) -> None:
        self.model, self.inputs, self.outputs, self.dtype, self.sizes = model, inputs, outputs, dtype, []

    def execute(self, requests):
        (request,) = requests
        (name,) = request.inputs
        assert name == self.inputs[0], f"sent {name}, the model's input is {self.inputs[0]}"
        array = request.inputs[name].as_numpy()
        if self.dtype is not None:
            assert array.dtype == self.dtype, f"sent {array.dtype}, the model takes {self.dtype}"
        self.sizes.append(len(array))
        (response,) = self.model.execute(
            [FakeRequest(inputs=[FakeTensor(self.inputs[1], array.astype(np.float32) if self.dtype else array)])]
        )
        return [FakeResponse([FakeTensor(self.outputs[0], response.outputs[self.outputs[1]].as_numpy())])]


def test_the_classifier_calls_the_sub_models_its_parameters_name_casting_and_splitting(
    models, jpegs, python_repository, tmp_path, monkeypatch
):
    from bls_pipeline.request.submodels import SubModels

    wiring = SubModels(
        preprocessing_model="my_dali",
        preprocessing_input="ENCODED",
        preprocessing_output="PIXELS",
        preprocessing_max_batch_size=4,
        network_model="my_net",
        network_input="input__0",
        network_output="output__0",
        network_input_dtype="TYPE_FP16",
        network_input_dims=(3, 224, 224),
        network_max_batch_size=2,
    )
    repository = tmp_path / "repository"
    shutil.copytree(python_repository / "classifier", repository / "classifier")
    config = mc.read_config(repository / "classifier" / "config.pbtxt")
    for key, value in wiring.parameters().items():
        config.parameters[key].string_value = value
    mc.write_config(repository / "classifier" / "config.pbtxt", config)
    dali = RenamedSubModel(models["preprocessing"], ("ENCODED", "DALI_INPUT"), ("PIXELS", "DALI_OUTPUT"))
    network = RenamedSubModel(
        models["efficientnet-b0"], ("input__0", "INPUT"), ("output__0", "OUTPUT"), dtype=np.float16
    )
    monkeypatch.setattr(FakeRequest, "models", {"my_dali": dali, "my_net": network})
    classifier = _load_model_py(repository, "classifier")

    (response,) = classifier.execute([_request([jpegs["coffee"], jpegs["rocket"], jpegs["chelsea"]], top_k=1)])

    assert response.outputs["CLASS_IDS"].as_numpy().tolist() == [[967], [657], [285]]
    assert dali.sizes == network.sizes == [2, 1]  # the smaller of the two limits


def test_a_preprocessed_batch_of_other_dims_than_the_network_takes_fails_naming_both(models):
    from bls_pipeline.errors import SubModelError
    from bls_pipeline.request.submodels import SubModels
    from bls_pipeline.serving.models import network_input

    wiring = SubModels(network_input="input__0", network_input_dims=(3, 224, 224))
    batch = FakeTensor("DALI_OUTPUT", np.zeros((2, 3, 256, 256), np.float32))

    with pytest.raises(
        SubModelError,
        match=r"DALI_OUTPUT is \[3, 256, 256\] per image, efficientnet-b0's input__0 takes \[3, 224, 224\]",
    ):
        network_input(batch, wiring)
