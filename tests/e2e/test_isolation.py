"""A bad image fails only its own request, even when Triton batches it with good ones.

The server here waits 20 ms to fill batches (``max_queue_delay_microseconds``), so that
concurrent requests reach the classifier in one ``execute`` call; the test checks Triton's
statistics to be sure they did.
"""

from __future__ import annotations

import json
import urllib.request

import numpy as np
import pytest

from bls_pipeline.builder import model_config as mc
from bls_pipeline.client import ClassifierClient, ClientError
from bls_pipeline.devtools.soak import corrupt_png_data, huge_jpeg_header
from tests.conftest import DECODER_PROBABILITY_TOLERANCE, PHOTOS, encode
from tests.e2e._support import copy_repository, decoding_failure, start_server

pytestmark = [pytest.mark.e2e, pytest.mark.gpu_suite]


@pytest.fixture(scope="module")
def batching_server(built_repository, tmp_path_factory):
    directory = tmp_path_factory.mktemp("batching")
    # One instance per model, so that concurrent requests queue for the one classifier and
    # batch there (a GPU build runs 8 classifier instances).
    repository = copy_repository(built_repository, directory / "repository", queue_delay_us=20_000, instances=1)
    server = start_server(repository, directory / "tritonserver.log")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def good_images(photos) -> dict[str, bytes]:
    return {f"{name}.{fmt.lower()}": encode(photos[name], fmt) for name in PHOTOS for fmt in ("JPEG", "PNG")}


@pytest.fixture(scope="module")
def score_atol(repository_device) -> float:
    """How far a good image's scores may move with the batch it is decoded and run in.

    On the CPU not at all (float32 on the same kernels). On a GPU the mixed decoder sends
    each JPEG to the hardware decoder or nvJPEG's CUDA one by its place in the batch, and
    the FP16 network runs one CUDA graph per batch size: they round differently.
    """
    return DECODER_PROBABILITY_TOLERANCE if repository_device == "gpu" else 1e-5


@pytest.fixture(scope="module")
def bad_images(photos, repository_device) -> dict[str, tuple[bytes, str]]:
    jpeg = encode(photos["coffee"], "JPEG")
    return {
        "corrupt PNG data": (
            corrupt_png_data(encode(photos["rocket"], "PNG")),
            f"image 0: {decoding_failure(repository_device)}",
        ),
        "cut JPEG": (jpeg[: len(jpeg) // 2], "image 0: truncated JPEG (no end-of-image marker after the frame header)"),
        "65000x65000 header": (
            huge_jpeg_header(),
            "image 0: declares 65000x65000 = 4225000000 pixels, over the limit of 40000000 pixels",
        ),
    }


@pytest.fixture(scope="module")
def alone(batching_server, good_images) -> dict[str, np.ndarray]:
    """The scores of every good image sent alone, one request at a time."""
    scores = {}
    with ClassifierClient(batching_server.url) as client:
        for name, image in good_images.items():
            (prediction,) = client.classify([image], top_k=1000)
            scores[name] = _vector(prediction)
    return scores


def _vector(prediction) -> np.ndarray:
    vector = np.zeros(1000, np.float32)
    vector[prediction.class_ids] = prediction.scores
    return vector


def _stats(url: str) -> tuple[int, int]:
    """(inference count, execution count) of the classifier so far."""
    with urllib.request.urlopen(f"{url}/v2/models/classifier/stats") as response:
        (stats,) = json.load(response)["model_stats"]
    return int(stats["inference_count"]), int(stats["execution_count"])


def test_bad_images_batched_with_good_ones_fail_alone_and_the_good_ones_score_as_when_sent_alone(
    batching_server, good_images, bad_images, alone, score_atol
):
    names = list(good_images)
    # good, bad, good, bad, ...: every bad image sits between good ones in the batch
    requests: list[tuple[str, bytes]] = []
    for index, name in enumerate(names):
        requests.append((name, good_images[name]))
        if index < len(bad_images):
            bad_name = list(bad_images)[index]
            requests.append((bad_name, bad_images[bad_name][0]))
    before = _stats(batching_server.url)

    with ClassifierClient(batching_server.url, concurrency=len(requests)) as client:
        results = client.classify_batches([[image] for _, image in requests], top_k=1000)

    inferences, executions = (after - start for after, start in zip(_stats(batching_server.url), before))
    assert executions < inferences, "Triton did not batch the concurrent requests"
    for (name, _), result in zip(requests, results):
        if name in bad_images:
            assert isinstance(result, ClientError), name
            assert str(result) == bad_images[name][1]
        else:
            assert not isinstance(result, ClientError), f"{name}: {result}"
            np.testing.assert_allclose(_vector(result[0]), alone[name], atol=score_atol, rtol=0, err_msg=name)


def test_the_pipeline_recovers_after_a_decoding_failure(batching_server, good_images, bad_images, alone, score_atol):
    with ClassifierClient(batching_server.url) as client:
        with pytest.raises(ClientError, match="cannot be decoded"):
            client.classify([bad_images["corrupt PNG data"][0]])
        (prediction,) = client.classify([good_images["chelsea.jpeg"]], top_k=1000)

    np.testing.assert_allclose(_vector(prediction), alone["chelsea.jpeg"], atol=score_atol, rtol=0)


def test_a_decoding_failure_names_the_sub_model_and_the_index_in_a_multi_image_request(
    batching_server, good_images, bad_images
):
    corrupt = bad_images["corrupt PNG data"][0]

    with ClassifierClient(batching_server.url) as client, pytest.raises(ClientError) as raised:
        client.classify([good_images["coffee.jpeg"], good_images["rocket.png"], corrupt])

    assert str(raised.value).startswith("image 2: cannot be decoded (preprocessing: ")


@pytest.fixture(scope="module")
def merging_server(built_repository, tmp_path_factory):
    """Four classifier instances in front of one preprocessing instance, as a GPU build has
    eight in front of two: their requests reach DALI at once. A batching DALI model waits
    20 ms to fill its batches, so that they run together; the natively hosted one is
    unbatched, and runs them one by one however they arrive."""
    directory = tmp_path_factory.mktemp("merging")
    repository = copy_repository(built_repository, directory / "repository", instances=1)
    for model, change in ((mc.CLASSIFIER, _four_instances), (mc.PREPROCESSING, _batches_for_20_ms)):
        path = repository / model / "config.pbtxt"
        config = mc.read_config(path)
        change(config)
        mc.write_config(path, config)
    server = start_server(repository, directory / "tritonserver.log")
    try:
        yield server
    finally:
        server.stop()


def _four_instances(config) -> None:
    config.instance_group[0].count = 4


def _batches_for_20_ms(config) -> None:
    if config.max_batch_size > 0:
        config.dynamic_batching.max_queue_delay_microseconds = 20_000


def test_a_bad_image_never_fails_another_requests_good_images(
    merging_server, good_images, bad_images, built_repository
):
    """A decoding failure belongs to the request that holds the image, whatever DALI batched
    it with: every good request is answered, every bad one blames its own image.

    Triton's DALI backend fails every request of a batch with the batch's error, so the natively
    hosted model is unbatched; the Python-hosted one batches, and reruns a failed batch request
    by request."""
    preprocessing = mc.read_config(built_repository / mc.PREPROCESSING / "config.pbtxt")
    merges = preprocessing.max_batch_size > 0
    assert merges is (preprocessing.backend != "dali")
    corrupt, reason = bad_images["corrupt PNG data"]
    good = list(good_images.values())
    requests = []
    for round_ in range(6):
        requests += [good[round_ % len(good) :] + good[: round_ % len(good)]] * 3
        requests.append([good[0], corrupt])
    with ClassifierClient(merging_server.url, concurrency=8) as client:
        results = client.classify_batches(requests, top_k=1)

    for request, result in zip(requests, results):
        if corrupt in request:
            assert isinstance(result, ClientError)
            assert str(result) == reason.replace("image 0", "image 1")
        else:
            assert not isinstance(result, ClientError), str(result)
    if merges:
        requested, executions = _preprocessing_stats(merging_server.url)
        assert executions < requested, "DALI never ran two requests in one batch: the test proves nothing"


def _preprocessing_stats(url: str) -> tuple[int, int]:
    """(requests, executions) of the preprocessing model so far."""
    with urllib.request.urlopen(f"{url}/v2/models/{mc.PREPROCESSING}/stats") as response:
        (stats,) = json.load(response)["model_stats"]
    inferences = stats["inference_stats"]
    return int(inferences["success"]["count"]) + int(inferences["fail"]["count"]), int(stats["execution_count"])


def test_a_bad_image_among_eight_is_found_in_three_preprocessing_runs(batching_server, good_images, bad_images):
    """DALI names the sample it failed on: the classifier runs the rest, then that image alone."""
    corrupt, reason = bad_images["corrupt PNG data"]
    images = [*list(good_images.values())[:5], corrupt, *list(good_images.values())[:2]]
    before, _ = _preprocessing_stats(batching_server.url)

    with ClassifierClient(batching_server.url) as client, pytest.raises(ClientError) as raised:
        client.classify(images)

    after, _ = _preprocessing_stats(batching_server.url)
    assert str(raised.value) == reason.replace("image 0", "image 5")
    assert after - before == 3
