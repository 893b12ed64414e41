"""Specification of ``bls_pipeline.request.image_header``: header sizes without decoding, refusals.

The images are real files written by PIL (from a photograph and synthetic arrays); the bombs
and corrupt headers are those files with their header bytes patched, or crafted by hand
where PIL cannot write the variant.
"""

from __future__ import annotations

import io
import struct
import time
import zlib
from collections.abc import Callable

import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata

from bls_pipeline.errors import BlsPipelineError
from bls_pipeline.request.image_header import (
    ACCEPTED_FORMATS,
    MAX_JPEG_SEGMENTS,
    ImageHeader,
    ImageHeaderError,
    check_image,
    read_header,
)
from tests.conftest import encode

ACCEPTED_LIST = "accepted formats: JPEG, PNG, BMP, TIFF, WebP"
BOMB_SIDE = 65000


def photo() -> Image.Image:
    """A real photograph, 451x300: not square, so a swapped width and height shows."""
    return Image.fromarray(skdata.chelsea())


def gradient(width: int = 37, height: int = 23) -> np.ndarray:
    """A synthetic uint8 RGB image of odd size."""
    x = np.linspace(0, 255, width, dtype=np.uint8)[None, :, None]
    y = np.linspace(0, 255, height, dtype=np.uint8)[:, None, None]
    return np.broadcast_to(x // 2 + y // 2, (height, width, 3)).copy()


def with_alpha(image: Image.Image) -> Image.Image:
    """``image`` with a horizontal alpha ramp, so encoders cannot drop the alpha channel."""
    rgb = np.asarray(image.convert("RGB"))
    alpha = np.linspace(0, 255, rgb.shape[1], dtype=np.uint8)[None, :].repeat(rgb.shape[0], 0)
    return Image.fromarray(np.dstack([rgb, alpha]))


def jpeg_with_exif() -> bytes:
    """A JPEG with an EXIF APP1 segment between APP0 and the frame header."""
    exif = Image.Exif()
    exif[0x010F] = "Camera maker"  # Make
    exif[0x0112] = 6  # Orientation: rotated, which must not change the declared size
    return encode(photo(), "JPEG", exif=exif.tobytes())


def bmp_top_down() -> bytes:
    """A 24-bit BMP whose rows are stored top-down: a negative height in the header."""
    image = photo()
    data = bytearray(encode(image, "BMP"))
    (height,) = struct.unpack_from("<i", data, 22)
    struct.pack_into("<i", data, 22, -height)
    # Flip the stored rows too, so the file stays a faithful image for PIL.
    offset = struct.unpack_from("<I", data, 10)[0]
    stride = (image.width * 3 + 3) // 4 * 4
    rows = [data[offset + r * stride : offset + (r + 1) * stride] for r in range(height)]
    data[offset:] = b"".join(reversed(rows))
    return bytes(data)


def bmp_core_header(width: int = 5, height: int = 3) -> bytes:
    """A 24-bit BMP with the 12-byte OS/2 BITMAPCOREHEADER, which PIL does not write."""
    stride = (width * 3 + 3) // 4 * 4
    pixels = bytes(stride * height)
    offset = 14 + 12
    return (
        b"BM"
        + struct.pack("<IHHI", offset + len(pixels), 0, 0, offset)
        + struct.pack("<IHHHH", 12, width, height, 1, 24)
        + pixels
    )


def tiff_big_endian() -> bytes:
    """A 16-bit grayscale TIFF, which PIL writes big-endian (``MM``)."""
    gray = np.asarray(photo().convert("L")).astype(">u2") * 257
    data = encode(Image.fromarray(gray), "TIFF")
    assert data[:4] == b"MM\x00*"
    return data


def tiff_header(order: str, entries: list[tuple[int, int, int, int]]) -> bytes:
    """A TIFF header and first IFD of (tag, type, count, value) entries, no pixel data."""
    prefix = b"II*\x00" if order == "<" else b"MM\x00*"
    ifd = struct.pack(order + "H", len(entries))
    for tag, kind, count, value in entries:
        # A SHORT value is left-justified in the 4-byte value field.
        packed = struct.pack(order + "HH", value, 0) if kind == 3 else struct.pack(order + "I", value)
        ifd += struct.pack(order + "HHI", tag, kind, count) + packed
    return prefix + struct.pack(order + "I", 8) + ifd + struct.pack(order + "I", 0)


def jpeg_segments(data: bytes) -> list[tuple[int, int]]:
    """(marker, offset) of the segments of a PIL-written JPEG up to its first scan."""
    segments, pos = [], 2
    while data[pos + 1] != 0xDA:
        segments.append((data[pos + 1], pos))
        pos += 2 + struct.unpack_from(">H", data, pos + 2)[0]
    return segments


def sof_offset(data: bytes) -> int:
    """Offset of the FF C0 / FF C2 frame header of a PIL-written JPEG."""
    return next(pos for marker, pos in jpeg_segments(data) if marker in (0xC0, 0xC2))


def jpeg_declaring(data: bytes, width: int, height: int) -> bytes:
    """``data`` (a JPEG) with its frame header patched to declare ``width`` x ``height``."""
    patched = bytearray(data)
    struct.pack_into(">HH", patched, sof_offset(data) + 5, height, width)
    return bytes(patched)


def jpeg_inserted(data: bytes, before: int, insert: bytes) -> bytes:
    """``data`` with ``insert`` placed at offset ``before``."""
    return data[:before] + insert + data[before:]


def png_declaring(width: int, height: int, data: bytes | None = None) -> bytes:
    """A PNG whose IHDR declares ``width`` x ``height``, with a correct CRC."""
    data = data if data is not None else encode(Image.fromarray(gradient()), "PNG")
    ihdr = b"IHDR" + struct.pack(">II", width, height) + data[24:29]
    return data[:12] + ihdr + struct.pack(">I", zlib.crc32(ihdr)) + data[33:]


def bmp_declaring(width: int, height: int) -> bytes:
    """A real BMP whose info header is patched to declare ``width`` x ``height``."""
    patched = bytearray(encode(Image.fromarray(gradient()), "BMP"))
    struct.pack_into("<ii", patched, 18, width, height)
    return bytes(patched)


def webp_vp8x_declaring(width: int, height: int) -> bytes:
    """A real extended (VP8X) WebP whose canvas is patched to ``width`` x ``height``."""
    data = bytearray(encode(with_alpha(Image.fromarray(gradient())), "WEBP"))
    assert data[12:16] == b"VP8X"
    data[24:27] = (width - 1).to_bytes(3, "little")
    data[27:30] = (height - 1).to_bytes(3, "little")
    return bytes(data)


def dali_cpu_decoder() -> Callable[[bytes], np.ndarray]:
    """Return a function that decodes one image with DALI's CPU image decoder.

    Each call builds a fresh pipeline, since a pipeline is unusable after a decoding error.
    """
    from nvidia.dali import fn, pipeline_def, types

    @pipeline_def(batch_size=1, num_threads=1, device_id=None, prefetch_queue_depth=1)
    def pipeline():  # type: ignore[no-untyped-def]
        encoded = fn.external_source(name="encoded", dtype=types.UINT8, ndim=1)
        return fn.decoders.image(encoded, device="cpu", output_type=types.RGB)

    def decode(data: bytes) -> np.ndarray:
        pipe = pipeline()
        pipe.build()
        pipe.feed_input("encoded", [np.frombuffer(data, np.uint8)])
        (images,) = pipe.run()
        return images.as_array()[0]

    return decode


# (case id, maker): every accepted format and the variants a client may send.
REAL_IMAGES: list[tuple[str, Callable[[], bytes]]] = [
    ("jpeg-baseline", lambda: encode(photo(), "JPEG", quality=90)),
    ("jpeg-progressive", lambda: encode(photo(), "JPEG", progressive=True)),
    ("jpeg-grayscale", lambda: encode(photo().convert("L"), "JPEG")),
    ("jpeg-cmyk", lambda: encode(photo().convert("CMYK"), "JPEG")),
    ("jpeg-exif-app1-before-frame-header", jpeg_with_exif),
    ("jpeg-icc-profile-app2", lambda: encode(photo(), "JPEG", icc_profile=b"\x00" * 200_000)),
    ("jpeg-synthetic-odd-size", lambda: encode(Image.fromarray(gradient()), "JPEG")),
    ("png-rgb", lambda: encode(photo(), "PNG")),
    ("png-rgba", lambda: encode(with_alpha(photo()), "PNG")),
    ("png-palette", lambda: encode(photo().convert("P"), "PNG")),
    ("png-grayscale", lambda: encode(photo().convert("L"), "PNG")),
    ("png-1-bit", lambda: encode(photo().convert("1"), "PNG")),
    (
        "png-16-bit",
        lambda: encode(Image.fromarray(np.asarray(photo().convert("L")).astype(np.uint16) * 257), "PNG"),
    ),
    ("bmp-24-bit", lambda: encode(photo(), "BMP")),
    ("bmp-8-bit-palette", lambda: encode(photo().convert("P"), "BMP")),
    ("bmp-top-down", bmp_top_down),
    ("bmp-core-header", bmp_core_header),
    ("tiff-little-endian", lambda: encode(photo(), "TIFF")),
    ("tiff-big-endian", tiff_big_endian),
    ("tiff-deflate", lambda: encode(photo(), "TIFF", compression="tiff_adobe_deflate")),
    ("webp-lossy-vp8", lambda: encode(photo(), "WEBP", quality=80)),
    ("webp-lossless-vp8l", lambda: encode(photo(), "WEBP", lossless=True)),
    ("webp-lossy-alpha-vp8x", lambda: encode(with_alpha(photo()), "WEBP")),
    ("webp-lossless-alpha-vp8l", lambda: encode(with_alpha(photo()), "WEBP", lossless=True)),
]


@pytest.fixture(scope="module")
def real_images() -> dict[str, bytes]:
    """The encoded REAL_IMAGES, made once for the module."""
    return {name: make() for name, make in REAL_IMAGES}


def case_ids(table: list[tuple]) -> list[str]:
    """The first column of a case table, as pytest ids."""
    return [row[0] for row in table]


@pytest.mark.parametrize("name", case_ids(REAL_IMAGES))
def test_read_header_reports_the_size_pil_decodes(real_images: dict[str, bytes], name: str) -> None:
    data = real_images[name]
    with Image.open(io.BytesIO(data)) as image:
        expected = ImageHeader(image.format.lower(), *image.size)
    assert read_header(data) == expected
    assert expected.format in ACCEPTED_FORMATS


@pytest.mark.parametrize(
    ("name", "chunk"),
    [
        ("webp-lossy-vp8", b"VP8 "),
        ("webp-lossless-vp8l", b"VP8L"),
        ("webp-lossy-alpha-vp8x", b"VP8X"),
        ("webp-lossless-alpha-vp8l", b"VP8L"),
    ],
)
def test_webp_cases_cover_each_first_chunk(real_images: dict[str, bytes], name: str, chunk: bytes) -> None:
    assert real_images[name][12:16] == chunk


def test_jpeg_with_exif_puts_app1_before_the_frame_header(real_images: dict[str, bytes]) -> None:
    markers = [marker for marker, _ in jpeg_segments(real_images["jpeg-exif-app1-before-frame-header"])]
    assert markers.index(0xE1) < markers.index(0xC0)


@pytest.mark.parametrize(
    "wrap",
    [bytes, bytearray, memoryview, lambda data: np.frombuffer(data, np.uint8)],
    ids=["bytes", "bytearray", "memoryview", "numpy-uint8-row"],
)
def test_read_header_accepts_any_bytes_like_buffer(
    real_images: dict[str, bytes], wrap: Callable[[bytes], object]
) -> None:
    data = wrap(real_images["jpeg-baseline"])
    assert read_header(data) == ImageHeader("jpeg", 451, 300)
    assert check_image(data, max_bytes=10**6, max_pixels=10**6) == ImageHeader("jpeg", 451, 300)


def test_header_pixels_is_width_times_height() -> None:
    assert ImageHeader("png", 451, 300).pixels == 135_300


# (case id, crafted header, expected size): variants PIL does not write.
CRAFTED_HEADERS = [
    *(
        (
            f"tiff-{name}-{kind}",
            tiff_header(order, [(256, code, 1, 640), (257, code, 1, 480)]),
            (640, 480),
        )
        for order, name in (("<", "little-endian"), (">", "big-endian"))
        for code, kind in ((3, "short"), (4, "long"))
    ),
    (
        "tiff-mixed-short-width-long-length",
        tiff_header(">", [(254, 4, 1, 0), (256, 3, 1, 70000 % 65536), (257, 4, 1, 70000)]),
        (70000 % 65536, 70000),
    ),
    (
        "tiff-first-of-repeated-tags-wins-like-libtiff",
        tiff_header("<", [(256, 3, 1, 64), (257, 3, 1, 48), (256, 4, 1, BOMB_SIDE)]),
        (64, 48),
    ),
    ("png-largest-legal-size", png_declaring(2**31 - 1, 1), (2**31 - 1, 1)),
]


@pytest.mark.parametrize(("name", "data", "size"), CRAFTED_HEADERS, ids=case_ids(CRAFTED_HEADERS))
def test_read_header_parses_crafted_variants(name: str, data: bytes, size: tuple[int, int]) -> None:
    assert (read_header(data).width, read_header(data).height) == size


def jpeg_cases() -> list[tuple[str, Callable[[bytes], bytes]]]:
    """(case id, transformation of a real baseline JPEG that keeps its 451x300 size)."""
    return [
        ("fill-bytes-before-a-marker", lambda d: jpeg_inserted(d, 2, b"\xff" * 7)),
        ("long-run-of-fill-bytes", lambda d: jpeg_inserted(d, 2, b"\xff" * 1_000_000)),
        (
            "tem-and-rst-standalone-markers",
            lambda d: jpeg_inserted(d, 2, b"\xff\x01\xff\xd0\xff\xd7"),
        ),
        ("empty-comment-segment", lambda d: jpeg_inserted(d, 2, b"\xff\xfe\x00\x02")),
        *(
            # DHT, JPG and DAC are in the SOFn range but are not frame headers.
            (
                f"fake-size-in-{name}-segment-is-skipped",
                lambda d, m=marker: jpeg_inserted(
                    d, 2, bytes([0xFF, m]) + struct.pack(">HBHHB", 8, 8, BOMB_SIDE, BOMB_SIDE, 3)
                ),
            )
            for name, marker in (("dht", 0xC4), ("jpg", 0xC8), ("dac", 0xCC))
        ),
        (
            "second-frame-header-after-the-scan-is-ignored",
            lambda d: d[:-2] + jpeg_declaring(d, BOMB_SIDE, BOMB_SIDE)[sof_offset(d) :],
        ),
        (
            f"{MAX_JPEG_SEGMENTS - 10}-segments-before-the-frame-header",
            lambda d: jpeg_inserted(d, 2, b"\xff\xfe\x00\x02" * (MAX_JPEG_SEGMENTS - 10)),
        ),
    ]


@pytest.mark.parametrize(("name", "transform"), jpeg_cases(), ids=case_ids(jpeg_cases()))
def test_jpeg_walk_finds_the_first_frame_header(
    real_images: dict[str, bytes], name: str, transform: Callable[[bytes], bytes]
) -> None:
    assert read_header(transform(real_images["jpeg-baseline"])) == ImageHeader("jpeg", 451, 300)


@pytest.mark.parametrize("marker", sorted(set(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}), ids=hex)
def test_jpeg_every_sof_marker_is_a_frame_header(real_images: dict[str, bytes], marker: int) -> None:
    data = bytearray(real_images["jpeg-baseline"])
    data[sof_offset(data) + 1] = marker
    assert read_header(data) == ImageHeader("jpeg", 451, 300)


# (case id, maker, declared width, declared height): far more pixels than any sane limit.
BOMBS = [
    (
        "jpeg",
        lambda: jpeg_declaring(encode(photo(), "JPEG"), BOMB_SIDE, BOMB_SIDE),
        BOMB_SIDE,
        BOMB_SIDE,
    ),
    (
        "jpeg-progressive",
        lambda: jpeg_declaring(encode(photo(), "JPEG", progressive=True), BOMB_SIDE, BOMB_SIDE),
        BOMB_SIDE,
        BOMB_SIDE,
    ),
    ("png", lambda: png_declaring(BOMB_SIDE, BOMB_SIDE), BOMB_SIDE, BOMB_SIDE),
    ("bmp", lambda: bmp_declaring(BOMB_SIDE, BOMB_SIDE), BOMB_SIDE, BOMB_SIDE),
    ("bmp-top-down", lambda: bmp_declaring(BOMB_SIDE, -BOMB_SIDE), BOMB_SIDE, BOMB_SIDE),
    (
        "tiff",
        lambda: tiff_header("<", [(256, 4, 1, BOMB_SIDE), (257, 4, 1, BOMB_SIDE)]),
        BOMB_SIDE,
        BOMB_SIDE,
    ),
    ("webp-vp8x", lambda: webp_vp8x_declaring(16384, 16384), 16384, 16384),
]


@pytest.mark.parametrize(("name", "make", "width", "height"), BOMBS, ids=case_ids(BOMBS))
def test_check_image_refuses_a_decompression_bomb_naming_its_size(
    name: str, make: Callable[[], bytes], width: int, height: int
) -> None:
    data = make()
    assert len(data) < 200_000
    with pytest.raises(ImageHeaderError) as raised:
        check_image(data, max_bytes=1_000_000, max_pixels=50_000_000)
    assert str(raised.value) == (
        f"declares {width}x{height} = {width * height} pixels, over the limit of 50000000 pixels"
    )


@pytest.mark.parametrize("name", case_ids(REAL_IMAGES))
def test_check_image_accepts_real_images_at_the_limits(real_images: dict[str, bytes], name: str) -> None:
    data = real_images[name]
    assert check_image(data, max_bytes=len(data), max_pixels=451 * 300) == read_header(data)


def test_check_image_refuses_one_pixel_over_the_limit(real_images: dict[str, bytes]) -> None:
    data = real_images["png-rgb"]
    message = "declares 451x300 = 135300 pixels, over the limit of 135299 pixels"
    with pytest.raises(ImageHeaderError, match=f"^{message}$"):
        check_image(data, max_bytes=len(data), max_pixels=135_299)


def test_check_image_refuses_more_bytes_than_the_limit(real_images: dict[str, bytes]) -> None:
    data = real_images["jpeg-baseline"]
    message = f"image is {len(data)} bytes, over the limit of {len(data) - 1} bytes"
    with pytest.raises(ImageHeaderError, match=f"^{message}$"):
        check_image(data, max_bytes=len(data) - 1, max_pixels=10**9)


@pytest.mark.parametrize("data", [b"", bytearray(), memoryview(b"")], ids=["bytes", "bytearray", "memoryview"])
def test_empty_image_is_refused(data: bytes) -> None:
    with pytest.raises(ImageHeaderError, match=r"^empty image$"):
        check_image(data, max_bytes=100, max_pixels=100)
    with pytest.raises(ImageHeaderError, match=r"^empty image$"):
        read_header(data)


# (case id, maker, what the message names): image formats the endpoint refuses.
REFUSED_FORMATS = [
    (
        "gif89a",
        lambda: encode(with_alpha(photo()).convert("P"), "GIF", transparency=0),
        "GIF images",
    ),
    ("gif87a", lambda: encode(photo().convert("P"), "GIF"), "GIF images"),
    ("jpeg-2000-jp2", lambda: b"\x00\x00\x00\x0cjP  \r\n\x87\n" + bytes(100), "JPEG 2000 images"),
    ("jpeg-2000-codestream", lambda: b"\xff\x4f\xff\x51" + bytes(100), "JPEG 2000 images"),
    ("bigtiff", lambda: b"II+\x00\x08\x00\x00\x00" + bytes(100), "BigTIFF images"),
]


@pytest.mark.parametrize(("name", "make", "what"), REFUSED_FORMATS, ids=case_ids(REFUSED_FORMATS))
def test_refused_formats_name_the_accepted_ones(name: str, make: Callable[[], bytes], what: str) -> None:
    with pytest.raises(ImageHeaderError) as raised:
        check_image(make(), max_bytes=10**7, max_pixels=10**8)
    assert str(raised.value) == f"{what} are not accepted; {ACCEPTED_LIST}"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"hello world", "not an image (unknown format, first bytes 68 65 6c 6c)"),
        (b"\x00", "not an image (unknown format, first bytes 00)"),
        (b"%PDF-1.7\n", "not an image (unknown format, first bytes 25 50 44 46)"),
        (
            b"RIFF\x24\x00\x00\x00WAVEfmt \x10\x00\x00\x00",
            "not an image (RIFF container of type b'WAVE')",
        ),
    ],
    ids=["text", "one-zero-byte", "pdf", "riff-wave-audio"],
)
def test_unknown_data_is_not_an_image(data: bytes, message: str) -> None:
    with pytest.raises(ImageHeaderError) as raised:
        read_header(data)
    assert str(raised.value) == message


def patched(data: bytes, offset: int, new: bytes) -> bytes:
    """``data`` with the bytes at ``offset`` replaced by ``new``."""
    return data[:offset] + new + data[offset + len(new) :]


def corrupt_cases() -> list[tuple[str, Callable[[dict[str, bytes]], bytes], str]]:
    """(case id, corrupt image made from the real ones, expected message)."""
    jpeg, png, bmp = "jpeg-baseline", "png-rgb", "bmp-24-bit"
    vp8, vp8l, vp8x = "webp-lossy-vp8", "webp-lossless-vp8l", "webp-lossy-alpha-vp8x"
    bad_jpeg, bad_tiff, bad_webp = (
        "corrupt JPEG header",
        "corrupt TIFF header",
        "corrupt WebP header",
    )
    return [
        (
            "jpeg-end-before-frame-header",
            lambda r: b"\xff\xd8\xff\xd9",
            f"{bad_jpeg} (no frame header before the end)",
        ),
        (
            "jpeg-scan-before-frame-header",
            lambda r: b"\xff\xd8\xff\xda\x00\x08" + bytes(6),
            f"{bad_jpeg} (marker FF DA at byte 2)",
        ),
        (
            "jpeg-second-soi",
            lambda r: b"\xff\xd8" + r[jpeg],
            f"{bad_jpeg} (marker FF D8 at byte 2)",
        ),
        (
            "jpeg-stuffed-zero-as-marker",
            lambda r: b"\xff\xd8\xff\x00" + bytes(8),
            f"{bad_jpeg} (marker FF 00 at byte 2)",
        ),
        (
            "jpeg-garbage-instead-of-marker",
            lambda r: patched(r[jpeg], 2, b"JFIF"),
            f"{bad_jpeg} (no marker at byte 2)",
        ),
        (
            "jpeg-segment-length-below-2",
            lambda r: b"\xff\xd8\xff\xe0\x00\x01" + bytes(20),
            f"{bad_jpeg} (segment length 1 at byte 4)",
        ),
        (
            "jpeg-frame-header-too-short",
            lambda r: b"\xff\xd8\xff\xc0\x00\x07\x08\x01\x00\x01\x00\x00",
            f"{bad_jpeg} (frame header length 7)",
        ),
        (
            "jpeg-height-zero-defined-later-by-dnl",
            lambda r: jpeg_declaring(r[jpeg], 451, 0),
            "declares 451x0 pixels",
        ),
        (
            "jpeg-too-many-segments-before-frame-header",
            lambda r: jpeg_inserted(r[jpeg], 2, b"\xff\xfe\x00\x02" * MAX_JPEG_SEGMENTS),
            f"{bad_jpeg} (over {MAX_JPEG_SEGMENTS} segments before the frame header)",
        ),
        (
            "png-first-chunk-not-ihdr",
            lambda r: patched(r[png], 12, b"IDAT"),
            "corrupt PNG header (no IHDR chunk first)",
        ),
        (
            "png-width-over-2-31",
            lambda r: png_declaring(2**31, 1),
            "corrupt PNG header (size 2147483648x1 out of range)",
        ),
        ("png-zero-width", lambda r: png_declaring(0, 300), "declares 0x300 pixels"),
        (
            "bmp-unknown-header-size",
            lambda r: patched(r[bmp], 14, b"\x20"),
            "corrupt BMP header (unknown header size 32)",
        ),
        (
            "bmp-negative-width",
            lambda r: bmp_declaring(-5, 5),
            "corrupt BMP header (negative width -5)",
        ),
        (
            "tiff-ifd-inside-file-header",
            lambda r: b"II*\x00\x04\x00\x00\x00" + bytes(20),
            f"{bad_tiff} (first IFD at byte 4)",
        ),
        (
            "tiff-width-as-ascii",
            lambda r: tiff_header("<", [(256, 2, 4, 0), (257, 3, 1, 5)]),
            f"{bad_tiff} (tag 256 of type 2, count 4)",
        ),
        (
            "tiff-width-with-two-values",
            lambda r: tiff_header(">", [(256, 4, 2, 8), (257, 3, 1, 5)]),
            f"{bad_tiff} (tag 256 of type 4, count 2)",
        ),
        (
            "tiff-no-length-tag",
            lambda r: tiff_header("<", [(256, 3, 1, 5), (258, 3, 1, 8)]),
            f"{bad_tiff} (no image width or length in the first IFD)",
        ),
        (
            "webp-unknown-first-chunk",
            lambda r: patched(r[vp8], 12, b"ICCP"),
            f"{bad_webp} (unknown first chunk b'ICCP')",
        ),
        (
            "webp-vp8-interframe",
            lambda r: patched(r[vp8], 20, bytes([r[vp8][20] | 1])),
            f"{bad_webp} (VP8 chunk is not a key frame)",
        ),
        (
            "webp-vp8l-bad-signature",
            lambda r: patched(r[vp8l], 20, b"\x2e"),
            f"{bad_webp} (bad VP8L signature)",
        ),
        (
            "webp-vp8x-chunk-too-short",
            lambda r: patched(r[vp8x], 16, struct.pack("<I", 4)),
            f"{bad_webp} (VP8X chunk too short)",
        ),
    ]


@pytest.mark.parametrize(("name", "make", "message"), corrupt_cases(), ids=case_ids(corrupt_cases()))
def test_corrupt_headers_are_refused_with_a_one_line_reason(
    real_images: dict[str, bytes],
    name: str,
    make: Callable[[dict[str, bytes]], bytes],
    message: str,
) -> None:
    with pytest.raises(ImageHeaderError) as raised:
        read_header(make(real_images))
    assert str(raised.value) == message


@pytest.mark.parametrize("name", case_ids(REAL_IMAGES))
def test_a_truncated_image_gives_its_full_header_or_a_header_error(real_images: dict[str, bytes], name: str) -> None:
    data = real_images[name]
    full = read_header(data)
    for cut in range(min(len(data), 200)):
        try:
            header = read_header(data[:cut])
        except ImageHeaderError as error:
            assert "\n" not in str(error)
        else:
            assert header == full, f"cut at {cut}"


@pytest.mark.parametrize(
    "prefix",
    [
        b"",
        b"\xff\xd8",
        b"\xff\xd8\xff",
        b"\x89PNG\r\n\x1a\n",
        b"BM",
        b"II*\x00",
        b"MM\x00*",
        b"RIFF\x00\x00\x00\x00WEBP",
    ],
    ids=["none", "jpeg-soi", "jpeg-soi-ff", "png", "bmp", "tiff-le", "tiff-be", "webp"],
)
def test_random_bytes_raise_only_header_errors(prefix: bytes) -> None:
    rng = np.random.default_rng(len(prefix))
    for _ in range(2000):
        data = prefix + rng.integers(0, 256, int(rng.integers(0, 300)), dtype=np.uint8).tobytes()
        try:
            header = read_header(data)
        except ImageHeaderError:
            continue
        assert header.width > 0 and header.height > 0


@pytest.mark.parametrize("name", case_ids(REAL_IMAGES))
def test_flipped_header_bytes_raise_only_header_errors(real_images: dict[str, bytes], name: str) -> None:
    original = real_images[name]
    rng = np.random.default_rng(7)
    for _ in range(300):
        data = bytearray(original[:4096])
        for pos in rng.integers(0, min(len(data), 64), 3):
            data[pos] = int(rng.integers(0, 256))
        try:
            header = read_header(data)
        except ImageHeaderError:
            continue
        assert header.pixels > 0


def test_header_error_is_a_value_error_of_the_package_tree() -> None:
    assert issubclass(ImageHeaderError, ValueError)
    assert issubclass(ImageHeaderError, BlsPipelineError)


def test_jpeg_header_is_read_without_scanning_the_rest_of_a_big_file(
    real_images: dict[str, bytes],
) -> None:
    # 64 MiB after the frame header: a parser that scans the file would take seconds here.
    big = memoryview(real_images["jpeg-baseline"] + b"\xff\xc0" * (32 * 1024 * 1024))
    start = time.perf_counter()
    for _ in range(1000):
        assert read_header(big).pixels == 135_300
    assert time.perf_counter() - start < 1.0


def test_a_long_run_of_jpeg_fill_bytes_is_skipped_quickly(real_images: dict[str, bytes]) -> None:
    data = jpeg_inserted(real_images["jpeg-baseline"], 2, b"\xff" * (16 * 1024 * 1024))
    start = time.perf_counter()
    assert read_header(data) == ImageHeader("jpeg", 451, 300)
    assert time.perf_counter() - start < 1.0


def test_dali_decodes_every_accepted_case_to_the_declared_pixels(
    real_images: dict[str, bytes],
) -> None:
    pytest.importorskip("nvidia.dali")
    decode = dali_cpu_decoder()
    for name, data in real_images.items():
        header = read_header(data)
        height, width, channels = decode(data).shape
        # DALI applies the EXIF orientation, which may swap the sides but keeps the pixels.
        assert sorted((width, height)) == sorted((header.width, header.height)), name
        assert channels == 3, name


def test_dali_cannot_decode_gif_which_is_why_it_is_refused() -> None:
    pytest.importorskip("nvidia.dali")
    decode = dali_cpu_decoder()
    with pytest.raises(RuntimeError):
        decode(encode(photo().convert("P"), "GIF"))
