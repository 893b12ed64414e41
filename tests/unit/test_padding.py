"""Specification of ``bls_pipeline.request.padding`` with real files encoded by Pillow."""

from __future__ import annotations

import io
import struct
from collections.abc import Callable

import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata

from bls_pipeline.errors import InvalidRequestError
from bls_pipeline.request.image_formats import detect_format
from bls_pipeline.request.padding import pad_batch, trim_padding
from tests.conftest import encode

EOI = b"\xff\xd9"


def _cat(height: int = 64, width: int = 96) -> np.ndarray:
    """A crop of a real photograph, small enough to keep the tests fast."""
    return np.ascontiguousarray(skdata.chelsea()[:height, :width])


def _with_black_rows(rows: slice) -> np.ndarray:
    pixels = _cat()
    pixels[rows] = 0
    return pixels


def _jpeg_with_exif_thumbnail() -> bytes:
    """A JPEG whose APP1 EXIF block embeds a JPEG thumbnail, so the file has two EOIs."""
    thumbnail = encode(_cat(16, 24), "JPEG")
    # TIFF header, an empty IFD0, then IFD1 with JPEGInterchangeFormat(Length) = the thumbnail.
    ifd1_offset = 8 + 2 + 4
    thumbnail_offset = ifd1_offset + 2 + 2 * 12 + 4
    tiff = (
        b"II*\x00"
        + struct.pack("<I", 8)
        + struct.pack("<HI", 0, ifd1_offset)
        + struct.pack("<H", 2)
        + struct.pack("<HHII", 513, 4, 1, thumbnail_offset)
        + struct.pack("<HHII", 514, 4, 1, len(thumbnail))
        + struct.pack("<I", 0)
        + thumbnail
    )
    return encode(_cat(), "JPEG", exif=b"Exif\x00\x00" + tiff)


def _webp_ending_in_pad_byte(**params: object) -> bytes:
    """A WebP whose odd-sized chunk is followed by RIFF's zero pad byte."""
    for size in range(8, 64):
        encoded = encode(_cat(size, size), "WEBP", **params)
        if encoded[-1] == 0:
            return encoded
    raise AssertionError("no WebP of size 8..63 ends in a pad byte")


def _animated_gif() -> bytes:
    frames = [Image.fromarray(_cat()).convert("P"), Image.fromarray(255 - _cat()).convert("P")]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)


def _multipage_tiff() -> bytes:
    frames = [Image.fromarray(_cat()), Image.fromarray(_with_black_rows(slice(-8, None)))]
    return encode(frames[0], "TIFF", save_all=True, append_images=frames[1:])


# (id, format, builder, whether the file itself ends in a zero byte)
IMAGE_CASES: list[tuple[str, str, Callable[[], bytes], bool]] = [
    ("jpeg-baseline", "jpeg", lambda: encode(_cat(), "JPEG", quality=90), False),
    ("jpeg-progressive", "jpeg", lambda: encode(_cat(), "JPEG", progressive=True), False),
    ("jpeg-gray", "jpeg", lambda: encode(Image.fromarray(_cat()).convert("L"), "JPEG"), False),
    ("jpeg-exif-thumbnail", "jpeg", _jpeg_with_exif_thumbnail, False),
    ("png-rgb", "png", lambda: encode(_cat(), "PNG"), False),
    ("png-rgba", "png", lambda: encode(Image.fromarray(_cat()).convert("RGBA"), "PNG"), False),
    ("png-palette", "png", lambda: encode(Image.fromarray(_cat()).convert("P"), "PNG"), False),
    ("png-gray", "png", lambda: encode(Image.fromarray(_cat()).convert("L"), "PNG"), False),
    (
        "png-16bit",
        "png",
        lambda: encode(Image.fromarray(_cat()[..., 0].astype(np.uint16) * 257), "PNG"),
        False,
    ),
    ("bmp-rgb", "bmp", lambda: encode(_cat(), "BMP"), False),
    ("bmp-palette", "bmp", lambda: encode(Image.fromarray(_cat()).convert("P"), "BMP"), False),
    # BMP stores rows bottom-up, so a black top row is the last thing in the file.
    ("bmp-black-top-row", "bmp", lambda: encode(_with_black_rows(slice(0, 1)), "BMP"), True),
    ("tiff-raw", "tiff", lambda: encode(_cat(), "TIFF"), False),
    (
        "tiff-raw-black-last-strip",
        "tiff",
        lambda: encode(_with_black_rows(slice(-8, None)), "TIFF"),
        True,
    ),
    # libtiff writes the IFD after the strips; with inline values it ends in next-IFD = 0.
    (
        "tiff-lzw-gray-ifd-last",
        "tiff",
        lambda: encode(Image.fromarray(_cat()).convert("L"), "TIFF", compression="tiff_lzw"),
        True,
    ),
    (
        "tiff-deflate-rgb",
        "tiff",
        lambda: encode(_cat(), "TIFF", compression="tiff_adobe_deflate"),
        False,
    ),
    ("webp-lossy", "webp", lambda: encode(_cat(), "WEBP", quality=80), False),
    ("webp-lossless", "webp", lambda: encode(_cat(), "WEBP", lossless=True), False),
    ("webp-lossless-pad-byte", "webp", lambda: _webp_ending_in_pad_byte(lossless=True), True),
    ("webp-lossy-pad-byte", "webp", lambda: _webp_ending_in_pad_byte(quality=80), True),
    ("gif", "gif", lambda: encode(Image.fromarray(_cat()).convert("P"), "GIF"), False),
    ("gif-animated", "gif", _animated_gif, False),
]

CASE_NAMES = [case[0] for case in IMAGE_CASES]
ZERO_ENDING_NAMES = [case[0] for case in IMAGE_CASES if case[3]]

Images = dict[str, bytes]


@pytest.fixture(scope="module")
def encoded_images() -> Images:
    return {name: build() for name, _, build, _ in IMAGE_CASES}


def _padded_row(image: bytes, padding: int = 1000) -> np.ndarray:
    """Row 0 of a batch whose other image is longer, so row 0 carries ``padding`` zeros."""
    batch = pad_batch([image, b"\x01" * (len(image) + padding)])
    assert batch[0, len(image) :].size == padding and not batch[0, len(image) :].any()
    return batch[0]


def _frames(encoded: bytes) -> list[np.ndarray]:
    with Image.open(io.BytesIO(encoded)) as image:
        frames = []
        for index in range(getattr(image, "n_frames", 1)):
            image.seek(index)
            frames.append(np.asarray(image.copy()))
        return frames


@pytest.mark.parametrize(("name", "fmt"), [case[:2] for case in IMAGE_CASES], ids=CASE_NAMES)
def test_detect_format_names_each_real_file(encoded_images: Images, name: str, fmt: str) -> None:
    assert detect_format(encoded_images[name]) == fmt


@pytest.mark.parametrize("name", CASE_NAMES)
def test_pad_then_trim_returns_the_exact_original_bytes(encoded_images: Images, name: str) -> None:
    original = encoded_images[name]
    assert trim_padding(_padded_row(original)) == original


@pytest.mark.parametrize("name", CASE_NAMES)
def test_trimmed_bytes_decode_to_the_original_pixels(encoded_images: Images, name: str) -> None:
    original = encoded_images[name]
    trimmed = trim_padding(_padded_row(original))
    for got, expected in zip(_frames(trimmed), _frames(original), strict=True):
        np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("name", ZERO_ENDING_NAMES)
def test_files_that_end_in_zero_bytes_keep_them(encoded_images: Images, name: str) -> None:
    original = encoded_images[name]
    assert original[-1] == 0, "the case must really end in a zero byte"
    assert trim_padding(_padded_row(original)) == original


@pytest.mark.parametrize("name", CASE_NAMES)
def test_an_unpadded_row_is_returned_whole(encoded_images: Images, name: str) -> None:
    original = encoded_images[name]
    assert trim_padding(np.frombuffer(original, dtype=np.uint8)) == original
    assert trim_padding(original) == original


def test_tiff_alignment_zeros_after_the_last_structure_are_dropped_like_padding() -> None:
    # Pillow pads multi-page TIFFs to 16 bytes; no IFD points at those zeros, so nothing can
    # tell them from padding, and no decoder reads them.
    original = _multipage_tiff()
    trimmed = trim_padding(_padded_row(original))
    assert original.startswith(trimmed) and len(trimmed) < len(original)
    assert not any(original[len(trimmed) :])
    for got, expected in zip(_frames(trimmed), _frames(original), strict=True):
        np.testing.assert_array_equal(got, expected)
    assert len(_frames(trimmed)) == 2


def test_jpeg_with_exif_thumbnail_is_trimmed_after_the_main_images_eoi(
    encoded_images: Images,
) -> None:
    original = encoded_images["jpeg-exif-thumbnail"]
    first_eoi = original.find(EOI)
    assert first_eoi + len(EOI) < len(original), "the thumbnail's EOI must come first"
    assert trim_padding(_padded_row(original)) == original


@pytest.mark.parametrize(
    ("trailer", "kept"),
    [
        (b"camera junk", b""),
        (b"\x00\x00", b""),
        # Documented limit: junk that itself holds an EOI is kept up to that marker.
        (b"junk\xff\xd9more", b"junk\xff\xd9"),
    ],
    ids=["junk", "zeros", "junk-with-eoi"],
)
def test_jpeg_bytes_after_the_last_eoi_are_dropped(encoded_images: Images, trailer: bytes, kept: bytes) -> None:
    original = encoded_images["jpeg-baseline"]
    assert trim_padding(_padded_row(original + trailer)) == original + kept


def test_png_bytes_after_iend_crc_are_dropped(encoded_images: Images) -> None:
    original = encoded_images["png-rgb"]
    assert trim_padding(_padded_row(original + b"after iend")) == original


def test_png_with_a_corrupt_chunk_length_falls_back_to_searching_for_iend(
    encoded_images: Images,
) -> None:
    original = bytearray(encoded_images["png-rgb"])
    original[8:12] = struct.pack(">I", 0x7FFFFFFF)  # IHDR's length now runs past the row
    assert trim_padding(_padded_row(bytes(original))) == bytes(original)


@pytest.mark.parametrize(
    "row",
    [b"", b"\x00", b"\x00" * 4096, np.zeros(0, dtype=np.uint8), np.zeros(4096, dtype=np.uint8)],
    ids=["empty-bytes", "one-zero", "zero-bytes", "empty-array", "zero-array"],
)
def test_empty_and_all_zero_rows_give_empty_bytes(row: bytes | np.ndarray) -> None:
    assert trim_padding(row) == b""


@pytest.mark.parametrize(
    "content",
    [
        b"not an image at all",
        b"P5\n2 1\n255\n\x07\x00",  # PNM has no end marker or size field
        b"\xff\xd8\xff\xe0 truncated jpeg without eoi",
        b"BM\x00\x00\x00\x00 bmp whose size field is zero",
        b"BM\xff\xff\xff\x7f bmp whose size field exceeds the row",
        b"RIFF\xff\xff\xff\x7fWEBP webp whose size exceeds the row",
        b"II*\x00\xff\xff\xff\x7f tiff whose ifd lies beyond the row",
        b"MM\x00+ big tiff",
    ],
    ids=[
        "unknown",
        "pnm",
        "jpeg-no-eoi",
        "bmp-size-zero",
        "bmp-size-too-big",
        "webp-size-too-big",
        "tiff-bad-ifd",
        "bigtiff",
    ],
)
def test_rows_whose_end_cannot_be_located_are_kept_whole(content: bytes) -> None:
    row = _padded_row(content, padding=16)
    assert trim_padding(row) == row.tobytes()


def test_a_bmp_header_that_under_declares_never_costs_nonzero_bytes(
    encoded_images: Images,
) -> None:
    original = bytearray(encoded_images["bmp-rgb"])
    original[2:6] = struct.pack("<I", len(original) - 100)
    assert trim_padding(_padded_row(bytes(original))) == bytes(original)


def test_pad_batch_zero_pads_every_row_to_the_longest() -> None:
    images = [b"\x01\x02\x03", bytearray(b"\x04"), memoryview(b"\x05\x06\x07\x08\x09")]
    batch = pad_batch(images)
    assert batch.dtype == np.uint8
    np.testing.assert_array_equal(batch, [[1, 2, 3, 0, 0], [4, 0, 0, 0, 0], [5, 6, 7, 8, 9]])


def test_pad_batch_of_empty_images_has_one_column() -> None:
    assert pad_batch([b"", b""]).shape == (2, 1)


def test_pad_batch_rejects_an_empty_batch() -> None:
    with pytest.raises(InvalidRequestError, match="at least one image"):
        pad_batch([])


@pytest.mark.parametrize(
    "row",
    [np.zeros((2, 8), dtype=np.uint8), np.zeros(8, dtype=np.int32), np.zeros(8, dtype=np.float32)],
    ids=["2d", "int32", "float32"],
)
def test_trim_padding_rejects_rows_that_are_not_1d_uint8(row: np.ndarray) -> None:
    with pytest.raises(InvalidRequestError, match="1-D uint8"):
        trim_padding(row)


def test_trimming_a_multi_megabyte_row_keeps_the_image(encoded_images: Images) -> None:
    original = encoded_images["jpeg-baseline"]
    assert trim_padding(_padded_row(original, padding=8 << 20)) == original


def test_a_png_without_iend_is_kept_whole_even_behind_megabytes_of_padding() -> None:
    # A signature and one chunk, then 8 MiB of zeros that would parse as empty chunks.
    head = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 4) + b"abcd" + b"\x01\x02\x03\x04" * 3
    row = _padded_row(head, padding=8 << 20)
    assert trim_padding(row) == row.tobytes()
