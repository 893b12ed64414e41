"""The classifier's two input forms over both protocols, through a real ``tritonserver``.

``IMAGE`` (zero-padded rows) and ``IMAGE_BYTES`` (one unpadded file per element) are both
optional inputs of the classifier; a request carries exactly one. Every test runs on both
hostings (the ``triton_server`` fixture) and, where it says so, on gRPC and HTTP.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bls_pipeline import contract
from bls_pipeline.client import (
    MODEL_NAME,
    PROTOCOLS,
    ClassifierClient,
    ClientError,
    host_port,
    image_input,
    requested_outputs,
    tritonclient_module,
)
from tests.conftest import PHOTOS, encode

pytestmark = pytest.mark.e2e

SAMPLES = Path(__file__).resolve().parents[2] / "samples"
# What each protocol calls Triton's INVALID_ARG.
INVALID_ARG = {"http": "400", "grpc": "StatusCode.INVALID_ARGUMENT"}


def _url(server, protocol: str) -> str:
    return server.grpc_url if protocol == "grpc" else server.url


@pytest.fixture(scope="module")
def varied_photos(photos) -> list[bytes]:
    """The photographs at their three sizes in every format whose end the server finds its own
    way (markers, chunks, size fields): the padded rows differ a lot, and the bytes form is the
    truth that trimming must give back. The last BMP ends in zero bytes (BMP rows are stored
    bottom-up, and its top rows are black)."""
    black_top = photos["coffee"].copy()
    black_top[:40] = 0
    return [encode(photos[name], fmt) for fmt in ("JPEG", "PNG") for name in PHOTOS] + [
        encode(photos["chelsea"], "BMP"),
        encode(photos["coffee"], "TIFF"),
        encode(photos["rocket"], "WEBP"),
        encode(black_top, "BMP"),
    ]


def _refusal(server, protocol: str, inputs: list) -> tuple[str, str]:
    """Send ``inputs`` with the protocol's own tritonclient; the status and message of the refusal."""
    from tritonclient.utils import InferenceServerException

    triton = tritonclient_module(protocol)
    client = triton.InferenceServerClient(host_port(_url(server, protocol)))
    try:
        client.infer(MODEL_NAME, inputs, outputs=requested_outputs(triton))
    except InferenceServerException as exc:
        return str(exc.status()), exc.message()
    finally:
        client.close()
    raise AssertionError("the server answered a request it should have refused")


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_the_bytes_form_gives_the_classes_and_scores_of_the_padded_form(triton_server, varied_photos, protocol):
    with ClassifierClient(_url(triton_server, protocol), form="padded") as padded_client:
        padded = padded_client.classify(varied_photos, top_k=5)
    with ClassifierClient(_url(triton_server, protocol), form="bytes") as bytes_client:
        by_bytes = bytes_client.classify(varied_photos, top_k=5)

    assert [p.class_ids for p in by_bytes] == [p.class_ids for p in padded]
    np.testing.assert_allclose([p.scores for p in by_bytes], [p.scores for p in padded], atol=1e-6, rtol=0)
    assert [p.labels for p in by_bytes] == [p.labels for p in padded]
    assert [p.class_ids[0] for p in by_bytes[:3]] == list(PHOTOS.values())


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_bad_image_in_the_bytes_form_fails_only_its_request_naming_its_index(
    triton_server, varied_photos, max_batch_size, protocol
):
    with ClassifierClient(_url(triton_server, protocol), form="bytes", concurrency=3) as client:
        assert client.max_batch_size() == max_batch_size
        good, bad, empty = client.classify_batches(
            [varied_photos[:2], [varied_photos[0], b"not an image at all"], [varied_photos[1], varied_photos[2], b""]]
        )

    assert [p.class_ids[0] for p in good] == [PHOTOS["chelsea"], PHOTOS["coffee"]]
    assert isinstance(bad, ClientError) and str(bad).startswith("image 1: not an image")
    assert isinstance(empty, ClientError) and str(empty) == "image 2: empty image"


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_bad_image_in_the_bytes_form_is_an_invalid_argument(triton_server, protocol):
    status, message = _refusal(
        triton_server, protocol, [image_input(tritonclient_module(protocol), [b"GIF89a-cut"], contract.BYTES_FORM)]
    )

    assert status == INVALID_ARG[protocol]
    assert message.startswith("image 0: ")


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_request_with_both_forms_is_an_invalid_argument(triton_server, varied_photos, protocol):
    triton = tritonclient_module(protocol)
    both = [image_input(triton, varied_photos[:1], form) for form in contract.FORMS]

    status, message = _refusal(triton_server, protocol, both)

    assert status == INVALID_ARG[protocol]
    assert message == "a request carries exactly one of the inputs IMAGE or IMAGE_BYTES, got both"


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_request_with_neither_form_is_refused_by_triton_as_an_invalid_argument(triton_server, protocol):
    # Both inputs are optional, so the config allows it; Triton itself refuses a request
    # with no input before the classifier sees it.
    status, message = _refusal(triton_server, protocol, [])

    assert status == INVALID_ARG[protocol]
    assert "0 inputs" in message


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_more_images_than_the_max_batch_size_in_the_bytes_form_is_an_invalid_argument(
    triton_server, varied_photos, max_batch_size, protocol
):
    images = (varied_photos * (max_batch_size // len(varied_photos) + 1))[: max_batch_size + 1]

    status, message = _refusal(
        triton_server, protocol, [image_input(tritonclient_module(protocol), images, contract.BYTES_FORM)]
    )

    assert status == INVALID_ARG[protocol]
    assert f"batch-size must be <= {max_batch_size}" in message


@pytest.mark.parametrize(("protocol", "form"), [("grpc", "bytes"), ("http", "padded")])
def test_classify_cli_sends_the_chosen_form_over_the_chosen_protocol(triton_server, protocol, form, capsys):
    import json

    from bls_pipeline.cli import classify

    url = host_port(_url(triton_server, protocol))

    code = classify.main(["--url", url, "--protocol", protocol, "--form", form, "--json", "--top-k", "1", str(SAMPLES)])

    assert code == 0
    assert [row["predictions"][0]["class_id"] for row in json.loads(capsys.readouterr().out)] == list(PHOTOS.values())
