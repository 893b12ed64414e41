"""Specification of ``bls_pipeline.request.image_formats``: the one home of format facts."""

from __future__ import annotations

import struct

import pytest
from skimage import data as skdata

from bls_pipeline.request.image_formats import (
    FORMAT_NAMES,
    declared_size,
    describe_unknown,
    detect_format,
    marker_end,
    truncated_format,
)
from bls_pipeline.request.image_header import ImageHeaderError, read_header
from tests.conftest import encode


@pytest.mark.parametrize(
    ("head", "fmt"),
    [
        (b"\xff\xd8\xff\xdb", "jpeg"),
        (b"\x89PNG\r\n\x1a\n", "png"),
        (b"GIF87a", "gif"),
        (b"GIF89a", "gif"),
        (b"BM", "bmp"),
        (b"II*\x00", "tiff"),
        (b"MM\x00*", "tiff"),
        (b"RIFF\x00\x00\x00\x00WEBP", "webp"),
        (b"RIFF\x00\x00\x00\x00WAVE", None),
        (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "jpeg2000"),
        (b"\xff\x4f\xff\x51", "jpeg2000"),
        (b"P6\n", "pnm"),
        (b"PK\x03\x04", None),
        (b"", None),
    ],
)
def test_detect_format_reads_magic_bytes(head: bytes, fmt: str | None) -> None:
    assert detect_format(head) == fmt
    assert detect_format(memoryview(head)) == fmt


@pytest.mark.parametrize(
    ("head", "fmt"),
    [(b"II+\x00", "bigtiff"), (b"MM\x00+", "bigtiff"), (b"\xff\xd8\x00\x10", "jpeg")],
    ids=["bigtiff-le", "bigtiff-be", "jpeg-soi-then-garbage"],
)
def test_bigtiff_and_a_damaged_jpeg_have_their_own_names(head: bytes, fmt: str) -> None:
    assert detect_format(head) == fmt
    assert fmt in FORMAT_NAMES


def test_padding_and_header_agree_on_a_jpeg_with_garbage_after_its_start_marker() -> None:
    # The two modules used to disagree (FF D8 FF versus FF D8): now both call it a JPEG,
    # and the header check explains what is wrong with it.
    data = b"\xff\xd8JFIF" + bytes(20)
    assert detect_format(data) == "jpeg"
    with pytest.raises(ImageHeaderError, match=r"^corrupt JPEG header \(no marker at byte 2\)$"):
        read_header(data)


@pytest.mark.parametrize(
    ("head", "fmt"),
    [
        (b"\xff", "jpeg"),
        (b"\x89PN", "png"),
        (b"I", "tiff"),
        (b"MM\x00", "tiff"),
        (b"RIFF\x10\x00", "webp"),
        (b"RIFF\x10\x00\x00\x00WE", "webp"),
        (b"RIFF\x10\x00\x00\x00WA", None),
        (b"GIF8", None),  # GIF is not asked for
        (b"\x00", None),
        (b"", None),
    ],
)
def test_truncated_format_names_the_format_whose_signature_was_cut(head: bytes, fmt: str | None) -> None:
    assert truncated_format(head, ("jpeg", "png", "bmp", "tiff", "webp")) == fmt


@pytest.mark.parametrize(
    ("data", "description"),
    [
        (b"RIFF\x24\x00\x00\x00AVI LIST", "RIFF container of type b'AVI '"),
        (b"RIFF\x24\x00", "unknown format, first bytes 52 49 46 46"),
        (b"%PDF-1.7", "unknown format, first bytes 25 50 44 46"),
    ],
)
def test_describe_unknown_says_what_the_bytes_look_like(data: bytes, description: str) -> None:
    assert describe_unknown(data) == description


def test_marker_end_finds_the_last_jpeg_end_marker_before_stop() -> None:
    jpeg = encode(skdata.chelsea()[:32, :32], "JPEG")
    padded = jpeg + b"junk\xff\xd9" + bytes(10)
    assert marker_end(padded, "jpeg", len(padded)) == len(jpeg) + 6
    assert marker_end(padded, "jpeg", len(jpeg)) == len(jpeg)
    assert marker_end(jpeg[:-2], "jpeg", len(jpeg) - 2) is None


def test_marker_end_walks_png_chunks_and_ignores_iend_inside_the_first_chunk() -> None:
    png = encode(skdata.chelsea()[:32, :32], "PNG")
    assert marker_end(png + bytes(100), "png", len(png)) == len(png)
    # "IEND" as the IHDR's width, a broken chunk length after it, and no real IEND.
    fake = png[:16] + b"IEND" + png[20:33] + b"\xff" * 4
    assert marker_end(fake, "png", len(fake)) is None


def test_marker_end_is_none_for_formats_without_an_end_marker() -> None:
    assert marker_end(b"BM\x10\x00\x00\x00", "bmp", 6) is None


@pytest.mark.parametrize(
    ("fmt", "options"),
    [("BMP", {}), ("WEBP", {"lossless": True}), ("TIFF", {})],
)
def test_declared_size_of_a_whole_file_is_its_length(fmt: str, options: dict) -> None:
    data = encode(skdata.chelsea()[:40, :40], fmt, **options)
    assert declared_size(data + bytes(64), fmt.lower()) == len(data)


@pytest.mark.parametrize(
    ("data", "fmt"),
    [
        (b"BM\x10", "bmp"),  # too short to hold the size field
        (b"II*\x00" + struct.pack("<I", 10**6), "tiff"),  # IFD beyond the data
        (b"II+\x00\x08\x00\x00\x00", "tiff"),  # BigTIFF
        (b"\xff\xd8\xff\xd9", "jpeg"),  # not a size-declaring format
    ],
    ids=["bmp-short", "tiff-corrupt", "bigtiff", "jpeg"],
)
def test_declared_size_is_none_when_the_header_cannot_say(data: bytes, fmt: str) -> None:
    assert declared_size(data, fmt) is None


def test_every_detected_format_that_is_not_accepted_is_refused_by_name() -> None:
    with pytest.raises(ImageHeaderError, match=r"^PNM images are not accepted; accepted formats: "):
        read_header(encode(skdata.camera()[:8, :8], "PPM"))
