"""Bad input through the real server: every valid variant classifies, every bad one is refused
with INVALID_ARG (HTTP 400) and a message that names the image and the reason.

The formats and messages are documented in ``docs/endpoint.md``; keep the two in step.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from bls_pipeline.client import ClientError
from bls_pipeline.devtools.soak import corrupt_png_data, huge_jpeg_header
from bls_pipeline.request.padding import pad_batch
from tests.conftest import DECODER_PROBABILITY_TOLERANCE, encode
from tests.e2e._support import copy_repository, decoding_failure, raw_infer, scores_by_class, start_server

pytestmark = [pytest.mark.e2e, pytest.mark.gpu_suite]

CAT_CLASSES = {281, 282, 285}  # tabby, tiger cat, Egyptian cat: chelsea is a near tie of 282/285


def png_rgb16(array: np.ndarray) -> bytes:
    """``array`` (uint8 RGB) as a 16-bit-per-channel RGB PNG (PIL cannot write one)."""
    height, width, _ = array.shape
    rows = (array.astype(">u2") * 257).reshape(height, -1)
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def with_orientation(array: np.ndarray, orientation: int, stored: Image.Transpose | None) -> bytes:
    """A JPEG of ``array`` stored transposed by ``stored`` with an EXIF orientation tag."""
    image = Image.fromarray(array)
    if stored is not None:
        image = image.transpose(stored)
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(np.asarray(image), "JPEG", quality=95, exif=exif.tobytes())


@pytest.fixture(scope="module")
def cat(photos) -> np.ndarray:
    return photos["chelsea"]


@pytest.fixture(scope="module")
def cat_jpeg(cat) -> bytes:
    return encode(cat, "JPEG", quality=90)


# --- valid input --------------------------------------------------------------------------------

VALID = {
    "JPEG with garbage after its end marker": lambda cat: encode(cat, "JPEG", quality=90) + b"garbage\x01\x02" * 100,
    "PNG RGB": lambda cat: encode(cat, "PNG"),
    "PNG RGBA": lambda cat: encode(np.dstack([cat, np.full(cat.shape[:2], 255, np.uint8)]), "PNG"),
    "PNG palette": lambda cat: encode(Image.fromarray(cat).convert("P", palette=Image.Palette.ADAPTIVE), "PNG"),
    "PNG grayscale": lambda cat: encode(Image.fromarray(cat).convert("L"), "PNG"),
    "PNG 16-bit grayscale": lambda cat: encode(
        np.asarray(Image.fromarray(cat).convert("L")).astype(np.uint16) * 257, "PNG"
    ),
    "PNG 16-bit RGB": png_rgb16,
    "JPEG grayscale": lambda cat: encode(Image.fromarray(cat).convert("L"), "JPEG"),
    "JPEG CMYK": lambda cat: encode(Image.fromarray(cat).convert("CMYK"), "JPEG"),
    "JPEG progressive": lambda cat: encode(cat, "JPEG", progressive=True),
    "BMP": lambda cat: encode(cat, "BMP"),
    "TIFF": lambda cat: encode(cat, "TIFF"),
    "WebP": lambda cat: encode(cat, "WEBP"),
}


@pytest.fixture(scope="module")
def valid_predictions(triton_server, cat):
    """Every valid variant in one request: one server round trip for the whole table."""
    from bls_pipeline.client import ClassifierClient

    with ClassifierClient(triton_server.url) as client:
        predictions = client.classify([make(cat) for make in VALID.values()], top_k=1000)
    return dict(zip(VALID, predictions))


@pytest.mark.parametrize("name", list(VALID))
def test_every_accepted_variant_of_the_cat_photo_is_classified_as_a_cat(valid_predictions, name):
    prediction = valid_predictions[name]

    assert set(prediction.class_ids[:2]) <= CAT_CLASSES, prediction.labels[:3]
    assert sum(prediction.scores) == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize(
    ("variant", "reference", "atol"),
    [
        ("PNG RGBA", "PNG RGB", 1e-6),  # opaque alpha is dropped
        ("PNG 16-bit RGB", "PNG RGB", 1e-6),  # v * 257 in 16 bits is v in 8
        ("PNG 16-bit grayscale", "PNG grayscale", 1e-6),
        ("JPEG with garbage after its end marker", "JPEG progressive", 0.05),
    ],
)
def test_equivalent_encodings_give_the_same_scores(valid_predictions, repository_device, variant, reference, atol):
    if repository_device == "gpu":
        # The mixed decoder sends each image to the hardware JPEG decoder, nvJPEG's CUDA one
        # or a CPU codec by format and batch, which round differently, and the network runs
        # in FP16: the same pixels may score apart by the decoder tolerance.
        atol += DECODER_PROBABILITY_TOLERANCE
    np.testing.assert_allclose(
        scores_by_class(valid_predictions[variant]), scores_by_class(valid_predictions[reference]), atol=atol, rtol=0
    )


def test_a_one_pixel_image_is_classified(client):
    predictions = client.classify([encode(np.full((1, 1, 3), 128, np.uint8), fmt) for fmt in ("PNG", "JPEG")])

    assert [len(p.class_ids) for p in predictions] == [5, 5]


@pytest.mark.parametrize(
    ("orientation", "stored"),
    [(3, Image.Transpose.ROTATE_180), (6, Image.Transpose.ROTATE_90), (8, Image.Transpose.ROTATE_270)],
    ids=["rotated-180", "rotated-90-cw", "rotated-90-ccw"],
)
def test_exif_orientation_is_applied_so_a_rotated_photo_scores_like_the_upright_one(client, cat, orientation, stored):
    upright, tagged, untagged = client.classify(
        [
            encode(cat, "JPEG", quality=95),
            with_orientation(cat, orientation, stored),
            encode(np.asarray(Image.fromarray(cat).transpose(stored)), "JPEG", quality=95),
        ],
        top_k=1000,
    )
    upright_scores = scores_by_class(upright)

    # JPEG re-encoding of the rotated pixels costs about 0.02; ignoring the tag costs > 0.1.
    assert np.abs(scores_by_class(tagged) - upright_scores).max() < 0.05
    assert np.abs(scores_by_class(untagged) - upright_scores).max() > 0.1


# --- invalid images -----------------------------------------------------------------------------

BAD_IMAGES = [
    ("empty row", lambda cat, jpeg: b"", "image 0: empty image"),
    (
        "random bytes",
        lambda cat, jpeg: b"\x17" + np.random.default_rng(0).bytes(5000),
        "image 0: not an image (unknown format, first bytes 17 ",
    ),
    (
        "JPEG cut in half",
        lambda cat, jpeg: jpeg[: len(jpeg) // 2],
        "image 0: truncated JPEG (no end-of-image marker after the frame header)",
    ),
    ("PNG cut in half", lambda cat, jpeg: encode(cat, "PNG")[:50_000], "image 0: truncated PNG (no IEND chunk)"),
    # The decoder's own failure names its operator, which depends on the device (below).
    (
        "PNG with corrupt pixel data",
        lambda cat, jpeg: corrupt_png_data(encode(cat, "PNG")),
        "image 0: {decoding_failure}",
    ),
    (
        "65000x65000 header",
        lambda cat, jpeg: huge_jpeg_header(),
        "image 0: declares 65000x65000 = 4225000000 pixels, over the limit of 40000000 pixels",
    ),
    (
        "GIF",
        lambda cat, jpeg: encode(cat, "GIF"),
        "image 0: GIF images are not accepted; accepted formats: JPEG, PNG, BMP, TIFF, WebP",
    ),
    (
        "JPEG 2000",
        lambda cat, jpeg: encode(cat, "JPEG2000"),
        "image 0: JPEG 2000 images are not accepted; accepted formats: JPEG, PNG, BMP, TIFF, WebP",
    ),
]


@pytest.mark.parametrize(("name", "make", "message"), BAD_IMAGES, ids=[case[0] for case in BAD_IMAGES])
def test_a_bad_image_is_refused_with_invalid_arg_naming_the_image_and_the_reason(
    triton_server, repository_device, cat, cat_jpeg, name, make, message
):
    message = message.format(decoding_failure=decoding_failure(repository_device))
    _, status, text = raw_infer(triton_server.url, pad_batch([make(cat, cat_jpeg)]))

    assert (status, text[: len(message)]) == ("400", message)
    assert "\n" not in text and "Traceback" not in text


def test_an_all_zero_row_is_an_empty_image(triton_server):
    _, status, text = raw_infer(triton_server.url, np.zeros((1, 1000), np.uint8))

    assert (status, text) == ("400", "image 0: empty image")


def test_the_error_names_the_index_of_the_bad_image_within_the_request(triton_server, cat_jpeg):
    _, status, text = raw_infer(triton_server.url, pad_batch([cat_jpeg, cat_jpeg, cat_jpeg[:5000], cat_jpeg]))

    assert (status, text) == ("400", "image 2: truncated JPEG (no end-of-image marker after the frame header)")


def test_the_server_keeps_serving_after_bad_images(client, cat_jpeg):
    (prediction,) = client.classify([cat_jpeg])

    assert prediction.class_ids[0] in CAT_CLASSES


# --- invalid tensors and parameters (some never reach the model: Triton refuses them) -----------


# (name, the tensor for a classifier of max batch size M, its datatype, Triton's message)
WRONG_TENSORS = [
    (
        "FP32",
        lambda m: np.zeros((1, 64), np.float32),
        "FP32",
        "inference input 'IMAGE' data-type is 'FP32', but model 'classifier' expects 'UINT8'",
    ),
    (
        "INT8",
        lambda m: np.zeros((1, 64), np.int8),
        "INT8",
        "inference input 'IMAGE' data-type is 'INT8', but model 'classifier' expects 'UINT8'",
    ),
    # With max_batch_size > 0 the first dimension is the batch: a 1-D tensor of 4M bytes is
    # 4M images of no bytes, and 8 bytes are 8 images of the wrong rank.
    (
        "1-D",
        lambda m: np.zeros(4 * m, np.uint8),
        "UINT8",
        "inference request batch-size must be <= {m} for 'classifier'",
    ),
    (
        "1-D short",
        lambda m: np.zeros(8, np.uint8),
        "UINT8",
        "unexpected shape for input 'IMAGE' for model 'classifier'. Expected [-1,-1], got [8]",
    ),
    (
        "3-D",
        lambda m: np.zeros((1, 2, 64), np.uint8),
        "UINT8",
        "unexpected shape for input 'IMAGE' for model 'classifier'. Expected [-1,-1], got [1,2,64]",
    ),
    (
        "one image over max batch",
        lambda m: np.zeros((m + 1, 64), np.uint8),
        "UINT8",
        "inference request batch-size must be <= {m} for 'classifier'",
    ),
]


@pytest.mark.parametrize(
    ("name", "make", "datatype", "message"), WRONG_TENSORS, ids=[case[0] for case in WRONG_TENSORS]
)
def test_a_tensor_of_the_wrong_type_or_shape_is_refused_by_triton(
    triton_server, max_batch_size, name, make, datatype, message
):
    # The GPU repository may be built for another max batch size than the CPU one (16).
    _, status, text = raw_infer(triton_server.url, make(max_batch_size), datatype)
    message = message.format(m=max_batch_size)

    # Triton refuses these before the model runs, so its own prefix comes first.
    assert status == "400"
    assert text.startswith("[request id: <id_unknown>] ") and message in text, text


@pytest.mark.parametrize(
    "top_k",
    [0, -1, 1001, "abc", 2.5, "2.5", "", True, False],
    ids=["0", "negative", "over-classes", "abc", "float", "float-string", "empty-string", "true", "false"],
)
def test_a_top_k_that_is_not_an_integer_in_range_is_refused(triton_server, cat_jpeg, top_k):
    _, status, text = raw_infer(triton_server.url, pad_batch([cat_jpeg]), parameters={"top_k": top_k})

    assert (status, text) == ("400", f"top_k must be an integer in 1..1000, got {top_k!r}")


@pytest.mark.parametrize(("top_k", "expected"), [(1, 1), ("3", 3), (1000, 1000)])
def test_a_top_k_integer_or_digit_string_in_range_sets_the_number_of_classes(triton_server, cat_jpeg, top_k, expected):
    result, status, text = raw_infer(triton_server.url, pad_batch([cat_jpeg, cat_jpeg]), parameters={"top_k": top_k})

    assert status is None, text
    assert result.as_numpy("CLASS_IDS").shape == (2, expected)


# --- configured limits --------------------------------------------------------------------------

LIMITS = {"max_image_bytes": 100_000, "max_image_pixels": 1_000_000}


@pytest.fixture(scope="module")
def limited_server(built_repository, tmp_path_factory):
    """The session's repository with small limits (the config parameters build_repo writes)."""
    directory = tmp_path_factory.mktemp("limited")
    repository = copy_repository(built_repository, directory / "repository", classifier_parameters=LIMITS)
    server = start_server(repository, directory / "tritonserver.log")
    try:
        yield server
    finally:
        server.stop()


def test_an_image_over_the_configured_pixel_limit_is_refused_before_decoding(limited_server, triton_server):
    big = encode(np.full((1000, 1001, 3), 200, np.uint8), "JPEG")  # 1,001,000 pixels, 13 KB
    assert len(big) < LIMITS["max_image_bytes"]

    _, status, text = raw_infer(limited_server.url, pad_batch([big]))
    accepted, _, _ = raw_infer(triton_server.url, pad_batch([big]))

    assert (status, text) == ("400", "image 0: declares 1001x1000 = 1001000 pixels, over the limit of 1000000 pixels")
    assert accepted is not None


def test_an_image_over_the_configured_byte_limit_is_refused(limited_server, cat):
    png = encode(cat, "PNG")

    _, status, text = raw_infer(limited_server.url, pad_batch([png]))

    assert (status, text) == ("400", f"image 0: image is {len(png)} bytes, over the limit of 100000 bytes")


def test_a_request_over_the_byte_limit_is_refused_whatever_its_padding(limited_server, max_batch_size, cat_jpeg):
    # max_batch_size x max_image_bytes (1,600,000 for the CPU repositories' 16): one small JPEG
    # padded far beyond it
    limit = max_batch_size * LIMITS["max_image_bytes"]
    rows = np.zeros((1, limit + 1), np.uint8)
    rows[0, : len(cat_jpeg)] = np.frombuffer(cat_jpeg, np.uint8)

    _, status, text = raw_infer(limited_server.url, rows)

    assert (status, text) == (
        "400",
        f"IMAGE is {limit + 1} bytes (shape [1, {limit + 1}]), over the limit of {limit} bytes per request",
    )


def test_the_client_reports_the_refusal_as_one_line(triton_server, cat_jpeg):
    from bls_pipeline.client import ClassifierClient

    with ClassifierClient(triton_server.url) as client, pytest.raises(ClientError) as raised:
        client.classify([cat_jpeg, b""])

    assert str(raised.value) == "image 1: empty image"
