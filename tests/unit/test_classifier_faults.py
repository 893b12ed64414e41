"""How the classifier's orchestration reports bad images versus failing sub-models."""

from __future__ import annotations

import numpy as np
import pytest

from bls_pipeline.errors import InvalidImageError, SubModelError
from bls_pipeline.request.faults import blames_input, failed_sample, summarize_dali_error
from bls_pipeline.request.orchestration import Orchestrator, request_error

# What DALI 2.4 raises for a JPEG cut in half (the decoder's own reason goes to stderr).
DALI_DECODE_ERROR = (
    "Critical error in pipeline:\nCritical error in pipeline:\n"
    "Error in CPU operator `nvidia.dali.fn.decoders.image`,\n"
    "which was used in the pipeline definition with the following traceback:\n\n"
    '  File "/repo/preprocessing/1/dali.py", line 82, in preprocessing\n'
    "    images = fn.decoders.image(encoded, device=decoder_device, output_type=types.RGB)\n\n"
    "encountered:\n\nFailed to decode sample #3 : \n"
    "Current pipeline object is no longer valid.\nCurrent pipeline object is no longer valid."
)


@pytest.mark.parametrize(
    ("message", "summary"),
    [
        (DALI_DECODE_ERROR, "Error in CPU operator `nvidia.dali.fn.decoders.image`: Failed to decode"),
        (
            DALI_DECODE_ERROR.replace("#3 : ", "#3 : Unsupported marker"),
            "Error in CPU operator `nvidia.dali.fn.decoders.image`: Failed to decode: Unsupported marker",
        ),
        ("Stub process 'preprocessing_0_0' is not healthy.", "Stub process 'preprocessing_0_0' is not healthy."),
        ("", ""),
        (
            "Critical error in pipeline:\nError in CPU operator `nvidia.dali.fn.python_function`,\n"
            "encountered:\n\nDLTensorPythonFunction error: RuntimeError: CUDA runtime API error (2):\nout of memory\n\n"
            "At:\n  /repo/dali.py(4): boom\n  /site-packages/nvidia/dali/python_function.py(210): func\n\n"
            "Current pipeline object is no longer valid.",
            "Error in CPU operator `nvidia.dali.fn.python_function`: out of memory",
        ),
    ],
)
def test_dali_errors_are_summarized_in_one_line_without_dali_sample_numbers(message, summary):
    assert summarize_dali_error(message) == summary


def test_the_sample_number_is_kept_for_the_classifier_and_found_again():
    summary = summarize_dali_error(DALI_DECODE_ERROR, keep_sample=True)
    assert summary == "Error in CPU operator `nvidia.dali.fn.decoders.image`: Failed to decode sample #3"
    assert failed_sample(summary, 4) == 3
    assert failed_sample(summary, 3) is None  # not a sample of a batch of 3
    assert summarize_dali_error(summary) == "Error in CPU operator `nvidia.dali.fn.decoders.image`: Failed to decode"


def _network(images: np.ndarray) -> np.ndarray:
    return images.reshape(len(images), -1)[:, :3].astype(np.float32)


class FakePreprocessing:
    """Refuses batches that hold a ``b"bad"`` image, like the DALI model does, naming the first
    one's sample number as DALI's CPU decoder does (``numbered``) or none, as a message may
    not; counts calls."""

    def __init__(self, dead: bool = False, numbered: bool = True) -> None:
        self.dead = dead
        self.numbered = numbered
        self.calls = 0

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.calls += 1
        if self.dead:
            raise SubModelError("preprocessing", "Stub process 'preprocessing_0_0' is not healthy.")
        bad = [index for index, row in enumerate(batch) if bytes(row[:3]) == b"bad"]
        if bad:
            message = DALI_DECODE_ERROR.replace("sample #3 ", f"sample #{bad[0]} " if self.numbered else "")
            raise SubModelError("preprocessing", message, invalid_input=True)
        return np.repeat(batch[:, :1].astype(np.float32), 3, axis=1)[:, :, None]


def test_an_image_that_does_not_decode_fails_alone_and_names_the_decoder():
    preprocessing = FakePreprocessing()
    orchestrator = Orchestrator(preprocess=preprocessing, infer=_network, max_batch_size=8)

    results = orchestrator([b"\x01ok", b"bad", b"\x02ok"])

    assert [r[0] for r in (results[0], results[2])] == [1.0, 2.0]
    error = request_error(results[1:2])
    assert isinstance(error, InvalidImageError)
    assert str(error) == (
        "image 0: cannot be decoded (preprocessing: "
        "Error in CPU operator `nvidia.dali.fn.decoders.image`: Failed to decode)"
    )


def test_a_failing_sub_model_fails_every_image_once_without_blaming_them():
    preprocessing = FakePreprocessing(dead=True)
    orchestrator = Orchestrator(preprocess=preprocessing, infer=_network, max_batch_size=8)

    results = orchestrator([b"\x01ok", b"\x02ok", b"\x03ok"])

    assert preprocessing.calls == 1  # no image-by-image retry against a dead stub
    assert all(isinstance(r, SubModelError) and not isinstance(r, InvalidImageError) for r in results)
    assert str(request_error(results)) == "preprocessing: Stub process 'preprocessing_0_0' is not healthy."


def test_a_sub_model_that_dies_while_the_bad_image_is_sought_fails_every_image_left_and_is_called_no_more():
    preprocessing = FakePreprocessing()
    original = preprocessing.__call__

    def dies_after_two_calls(batch: np.ndarray) -> np.ndarray:
        if preprocessing.calls >= 2:
            preprocessing.dead = True
        return original(batch)

    orchestrator = Orchestrator(preprocess=dies_after_two_calls, infer=_network, max_batch_size=8)

    results = orchestrator([b"\x01ok", b"\x02ok", b"\x03ok", b"bad", b"\x04ok", b"bad"])

    # the batch fails naming image 3; the rest fails naming its image 4 (the second bad one),
    # whose rest then meets the dead stub
    assert preprocessing.calls == 3
    assert all(type(r) is SubModelError for r in results)
    assert str(request_error(results)) == "preprocessing: Stub process 'preprocessing_0_0' is not healthy."


@pytest.mark.parametrize(
    ("message", "about_input"),
    [
        (DALI_DECODE_ERROR, True),
        (
            "DALI Backend error: Critical error in pipeline:\nError in MIXED operator `nvidia.dali.fn.decoders.image`",
            True,
        ),
        ("Error in CPU operator `nvidia.dali.fn.decoders.image`: Failed to decode", True),
        ("Stub process 'preprocessing_0_0' is not healthy.", False),
        ("Request for unknown model: 'preprocessing' is not found", False),
        ("Failed to process the request(s) for model instance 'efficientnet-b0_0_0'", False),
    ],
)
def test_only_dali_operator_errors_blame_the_input(message, about_input):
    assert blames_input(message) is about_input


def _decoder_error(reason: str, device: str = "MIXED") -> str:
    return DALI_DECODE_ERROR.replace("CPU operator", f"{device} operator").replace(
        "Failed to decode sample #3 : ", reason
    )


@pytest.mark.parametrize(
    "message",
    [
        _decoder_error("CUDA runtime API error cudaErrorMemoryAllocation (2):\nout of memory"),
        _decoder_error(
            "CUDA driver API error CUDA_ERROR_ILLEGAL_ADDRESS (700):\nan illegal memory access was encountered"
        ),
        _decoder_error("Can't allocate 38535168 bytes on device 0."),
        _decoder_error("std::bad_alloc", device="CPU"),
        _decoder_error("nvJPEG error (NVJPEG_STATUS_EXECUTION_FAILED)"),
        "DALI Backend error: Critical error in pipeline:\nError in MIXED operator `nvidia.dali.fn.decoders.image`\nout of memory",
        "Error in CPU operator `nvidia.dali.fn.resize`: Failed",  # not the decoder: not about one image
        "Request timed out",
        "Model 'preprocessing' is not ready: the model is reloading",
    ],
)
def test_cuda_errors_memory_and_timeouts_never_blame_the_image(message):
    assert blames_input(message) is False


@pytest.mark.parametrize(
    ("message", "system_fault"),
    [
        (_decoder_error("CUDA runtime API error cudaErrorMemoryAllocation (2):\nout of memory"), True),
        (DALI_DECODE_ERROR, False),
        # A traceback path is no reason, whatever it is called.
        (DALI_DECODE_ERROR.replace("/repo/preprocessing", "/srv/cuda error out of memory/preprocessing"), False),
    ],
)
def test_a_system_fault_is_read_from_the_reason_not_the_traceback(message, system_fault):
    from bls_pipeline.request.faults import is_system_fault

    assert is_system_fault(message) is system_fault
    assert blames_input(message) is not system_fault


def test_a_cuda_error_in_a_batch_fails_every_image_once_without_a_retry():
    calls = []

    def out_of_memory(batch: np.ndarray) -> np.ndarray:
        calls.append(len(batch))
        message = _decoder_error("CUDA runtime API error cudaErrorMemoryAllocation (2):\nout of memory")
        raise SubModelError("preprocessing", message, invalid_input=blames_input(message))

    results = Orchestrator(preprocess=out_of_memory, infer=_network, max_batch_size=8)([b"\x01ok", b"\x02ok"])

    assert calls == [2]
    assert all(type(r) is SubModelError for r in results)


def _run(images: list[bytes], preprocessing: FakePreprocessing) -> tuple[list, list[int], list[int]]:
    """Results, the size of each preprocessing call, and the rows the network got."""
    batches: list[int] = []
    network_rows: list[int] = []

    def counting(batch: np.ndarray) -> np.ndarray:
        batches.append(len(batch))
        return preprocessing(batch)

    def network(images: np.ndarray) -> np.ndarray:
        network_rows.append(len(images))
        return _network(images)

    results = Orchestrator(preprocess=counting, infer=network, max_batch_size=64)(images)
    return results, batches, network_rows


def _check(images: list[bytes], results: list) -> None:
    for image, result in zip(images, results):
        if image == b"bad":
            assert isinstance(result, InvalidImageError)
        else:
            assert not isinstance(result, Exception)
            assert result[0] == float(image[0])


def test_the_sample_dali_names_is_tried_alone_after_the_rest_whose_batch_goes_to_the_network():
    images = [b"\x01ok", b"bad", b"\x02ok", b"\x03ok"]

    results, batches, network_rows = _run(images, FakePreprocessing())

    assert batches == [4, 3, 1]  # the batch, the rest (it decodes: it is the network's batch), the bad one
    assert network_rows == [3]
    _check(images, results)


def test_without_a_sample_number_a_bad_image_among_64_is_found_by_halves_in_few_calls():
    images = [bytes([1 + i, 111, 107]) for i in range(64)]
    images[37] = b"bad"

    results, batches, network_rows = _run(images, FakePreprocessing(numbered=False))

    assert len(batches) <= 1 + 2 * 6 + 1  # the batch, two halves per level, the good ones together
    assert batches[-1] == 63
    assert network_rows == [63]
    _check(images, results)


@pytest.mark.parametrize("numbered", [True, False])
def test_several_bad_images_fail_alone_and_the_good_ones_are_preprocessed_again_as_one_batch(numbered):
    images = [b"bad", b"\x01ok", b"\x02ok", b"bad", b"\x03ok", b"\x04ok", b"\x05ok", b"bad"]

    results, batches, network_rows = _run(images, FakePreprocessing(numbered=numbered))

    assert network_rows == [5]
    assert batches[0] == 8 and 5 in batches  # the good ones went to the network as one batch
    _check(images, results)


def test_a_sample_number_that_is_wrong_blames_no_good_image():
    images = [b"\x01ok", b"\x02ok", b"bad", b"\x03ok"]
    preprocessing = FakePreprocessing()
    original = preprocessing.__call__

    def misnumbering(batch: np.ndarray) -> np.ndarray:
        try:
            return original(batch)
        except SubModelError as exc:
            raise SubModelError(
                "preprocessing", exc.message.replace("sample #2 ", "sample #0 "), invalid_input=True
            ) from None

    results, _, network_rows = _run(images, misnumbering)  # type: ignore[arg-type]

    assert network_rows == [3]
    _check(images, results)


def _settings(**kwargs):
    from bls_pipeline.request.orchestration import ClassifierSettings

    return ClassifierSettings(max_batch_size=4, max_image_bytes=1000, **kwargs)


@pytest.mark.parametrize(
    ("settings", "limit"),
    [
        ({}, 4000),  # max_batch_size full-size images
        ({"max_request_bytes": 2500}, 2500),
    ],
)
def test_a_request_over_the_byte_limit_is_refused_before_its_rows_are_read(settings, limit):
    from bls_pipeline.errors import InvalidRequestError
    from bls_pipeline.request.orchestration import prepare_request

    at_limit = np.zeros((2, limit // 2), np.uint8)
    at_limit[:, :3] = [0xFF, 0xD8, 0xFF]  # would be a corrupt JPEG: rows are read
    over = np.zeros((1, limit + 1), np.uint8)

    with pytest.raises(InvalidImageError):
        prepare_request(at_limit, top_k=None, settings=_settings(**settings), num_classes=10)
    with pytest.raises(InvalidRequestError) as raised:
        prepare_request(over, top_k=None, settings=_settings(**settings), num_classes=10)
    assert str(raised.value) == (
        f"IMAGE is {limit + 1} bytes (shape [1, {limit + 1}]), over the limit of {limit} bytes per request"
    )


def test_the_request_byte_limit_is_a_config_parameter():
    from bls_pipeline.request.orchestration import ClassifierSettings

    settings = ClassifierSettings.from_parameters({"max_request_bytes": "123"}, max_batch_size=2)

    assert settings.request_byte_limit == 123


def test_the_errors_kept_as_results_hold_no_traceback():
    """A traceback keeps the frames it passed through alive, and with them the BLS call's
    tensors in shared memory (a soak of bad images grew the stubs' memory until it was dropped)."""

    def network_down(images: np.ndarray) -> np.ndarray:
        raise SubModelError("efficientnet-b0", "Stub process 'efficientnet-b0_0_0' is not healthy.")

    bad_batch = Orchestrator(preprocess=FakePreprocessing(), infer=_network, max_batch_size=8)([b"bad", b"\x01ok"])
    dead = Orchestrator(preprocess=FakePreprocessing(dead=True), infer=_network, max_batch_size=8)([b"\x01ok"])
    no_network = Orchestrator(preprocess=FakePreprocessing(), infer=network_down, max_batch_size=8)([b"\x01ok"])

    errors = [r for r in [*bad_batch, *dead, *no_network] if isinstance(r, Exception)]
    assert len(errors) == 3
    assert all(error.__traceback__ is None for error in errors)
