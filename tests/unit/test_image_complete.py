"""``check_image`` refuses a file that visibly ends early, so that a cut image fails the same
way alone and in a zero-padded batch (where decoders read the padding as more data)."""

from __future__ import annotations

import pytest
from PIL import Image
from skimage import data as skdata

from bls_pipeline.request.image_header import ImageHeaderError, check_complete, check_image
from tests.conftest import encode

LIMITS = {"max_bytes": 10**8, "max_pixels": 10**8}


def chelsea(fmt: str, **options: object) -> bytes:
    return encode(skdata.chelsea(), fmt, **options)


CUT_MESSAGES = [
    ("JPEG", r"^truncated JPEG \(no end-of-image marker after the frame header\)$"),
    ("PNG", r"^truncated PNG \(no IEND chunk\)$"),
    ("WEBP", r"^truncated WebP \(its header declares \d+ bytes, got \d+\)$"),
    ("BMP", r"^truncated BMP \(its header declares \d+ bytes, got \d+\)$"),
    ("TIFF", r"^truncated TIFF \(its strips or tiles end at byte \d+, got \d+\)$"),
]


@pytest.mark.parametrize(("fmt", "message"), CUT_MESSAGES, ids=[fmt for fmt, _ in CUT_MESSAGES])
def test_a_file_cut_in_half_is_refused_as_truncated(fmt, message):
    data = chelsea(fmt)

    with pytest.raises(ImageHeaderError, match=message):
        check_image(data[: len(data) // 2], **LIMITS)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP", "TIFF"])
def test_whole_files_pass_with_or_without_bytes_after_their_end(fmt):
    data = chelsea(fmt)

    check_image(data, **LIMITS)
    check_image(data + b"junk after the end\x01", **LIMITS)


def test_progressive_and_exif_jpegs_are_complete():
    exif = Image.Exif()
    exif[0x0112] = 6
    for data in (chelsea("JPEG", progressive=True), chelsea("JPEG", exif=exif.tobytes())):
        check_complete(data, "jpeg")
        check_complete(memoryview(data + b"\x00\x01"), "jpeg")


def test_an_end_marker_before_the_frame_header_does_not_make_a_cut_jpeg_complete():
    data = chelsea("JPEG")
    # an APP segment holding FF D9 (as an EXIF thumbnail does), then the image cut in half
    app = b"\xff\xe1\x00\x06\xff\xd9\x00\x00"
    cut = data[:2] + app + data[2 : len(data) // 2]

    with pytest.raises(ImageHeaderError, match="truncated JPEG"):
        check_image(cut, **LIMITS)
