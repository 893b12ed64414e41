"""Read the format and declared size of an encoded image without decoding it.

The public endpoint decodes strangers' bytes with DALI, and a decoder allocates the size a
header declares before it sees a single pixel: a 100 KB file can declare 65000x65000 pixels
(a decompression bomb, about 12 GB of RGB). :func:`check_image` reads only the header, so the
server can refuse such an image, or a format it does not accept, before decoding. It needs
only the standard library, numpy and :mod:`bls_pipeline.request.image_formats` (signatures, end
markers, declared sizes): it runs where neither PIL nor DALI is installed.

Example::

    header = check_image(data, max_bytes=20_000_000, max_pixels=50_000_000)
    header.format, header.width, header.height   # ("jpeg", 640, 480)

Every refusal is an :class:`ImageHeaderError` whose message is one line for an API client.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

from bls_pipeline.errors import BlsPipelineError
from bls_pipeline.request.image_formats import (
    FORMAT_NAMES,
    JPEG_EOI,
    declared_size,
    describe_unknown,
    detect_format,
    marker_end,
    truncated_format,
)

# All decoded by DALI's image decoder, which cannot decode GIF. DALI decodes JPEG 2000 too,
# but the endpoint does not offer it.
ACCEPTED_FORMATS = ("jpeg", "png", "bmp", "tiff", "webp")

_ACCEPTED_LIST = ", ".join(FORMAT_NAMES[f] for f in ACCEPTED_FORMATS)

# Each tiny segment costs a Python loop turn, so a file made of millions of empty segments
# would hold a worker for seconds; real files (EXIF, XMP, a 255-part ICC profile) need far
# fewer before the frame header.
MAX_JPEG_SEGMENTS = 1024

# A JPEG marker: any number of 0xFF fill bytes, then the marker code. A regular expression
# skips a long run of fill bytes in C, without copying the buffer.
_JPEG_MARKER = re.compile(rb"\xff+([^\xff])")
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # not DHT, JPG, DAC
_JPEG_STANDALONE = frozenset(range(0xD0, 0xD8)) | {0x01}  # RSTn, TEM: no length field


class ImageHeaderError(BlsPipelineError, ValueError):
    """An image is refused from its header: empty, unknown or refused format, corrupt, too large."""


@dataclass(frozen=True)
class ImageHeader:
    """The format (one of :data:`ACCEPTED_FORMATS`) and the size an image's header declares."""

    format: str
    width: int
    height: int

    @property
    def pixels(self) -> int:
        """Return the number of pixels the header declares, ``width * height``."""
        return self.width * self.height


def check_image(data: bytes | bytearray | memoryview, *, max_bytes: int, max_pixels: int) -> ImageHeader:
    """Return the header of ``data`` if the endpoint may decode it, else raise.

    Raises :class:`ImageHeaderError` if ``data`` is empty or longer than ``max_bytes``, is
    not an image of an accepted format, has a corrupt or truncated header, declares more
    than ``max_pixels`` pixels, or visibly ends early (see :func:`check_complete`).
    """
    size = memoryview(data).nbytes
    if size == 0:
        raise ImageHeaderError("empty image")
    if size > max_bytes:
        raise ImageHeaderError(f"image is {size} bytes, over the limit of {max_bytes} bytes")
    header = read_header(data)
    if header.pixels > max_pixels:
        raise ImageHeaderError(
            f"declares {header.width}x{header.height} = {header.pixels} pixels, over the limit of {max_pixels} pixels"
        )
    check_complete(data, header.format)
    return header


def check_complete(data: bytes | bytearray | memoryview, fmt: str) -> None:
    """Raise :class:`ImageHeaderError` if ``data`` (one whole file) visibly ends early.

    A cut file must fail the same way whether or not it is sent alone: in a padded batch
    the zeros after it read as more data, and decoders then "decode" a truncated JPEG, BMP,
    TIFF or WebP (gray or black where the data ends), while alone it fails. So a JPEG needs
    an end-of-image marker after its frame header, a PNG its IEND chunk, and BMP, WebP and
    TIFF files every byte their headers account for. Bytes after the end are allowed.
    """
    view = memoryview(data).cast("B")
    size = len(view)
    if fmt == "jpeg":
        if bytes(view[-2:]) == JPEG_EOI:
            return
        end = marker_end(view, "jpeg", size)
        if end is None or end - len(JPEG_EOI) < _jpeg_frame_header(view):
            raise ImageHeaderError("truncated JPEG (no end-of-image marker after the frame header)")
    elif fmt == "png":
        if marker_end(view, "png", size) is None:
            raise ImageHeaderError("truncated PNG (no IEND chunk)")
    elif fmt == "webp":
        declared = declared_size(view, "webp") or 0
        if declared > size:
            raise ImageHeaderError(f"truncated WebP (its header declares {declared} bytes, got {size})")
    elif fmt == "bmp":
        # Some writers leave the file size 0; the pixel data offset is always set.
        (offset,) = struct.unpack_from("<I", view, 10)
        declared = max(declared_size(view, "bmp") or 0, offset + 1)
        if declared > size:
            raise ImageHeaderError(f"truncated BMP (its header declares {declared} bytes, got {size})")
    elif fmt == "tiff":
        # None for a corrupt IFD chain: the decoder will say so.
        end = declared_size(view, "tiff")
        if end is not None and end > size:
            raise ImageHeaderError(f"truncated TIFF (its strips or tiles end at byte {end}, got {size})")


def read_header(data: bytes | bytearray | memoryview) -> ImageHeader:
    """Identify the format of ``data`` from its magic bytes and parse the declared size.

    Reads only the header (for JPEG, the segments up to the frame header), never the pixel
    data. Raises :class:`ImageHeaderError` for an unknown or refused format, a truncated or
    corrupt header, or a declared size with no pixels.
    """
    view = memoryview(data).cast("B")
    fmt = _identify(view)
    width, height = _SIZE_PARSERS[fmt](view)
    if width == 0 or height == 0:
        raise ImageHeaderError(f"declares {width}x{height} pixels")
    return ImageHeader(fmt, width, height)


def _identify(view: memoryview) -> str:
    """Return the format key for the magic bytes of ``view``; raise for refused or unknown data."""
    if len(view) == 0:
        raise ImageHeaderError("empty image")
    fmt = detect_format(view)
    if fmt in ACCEPTED_FORMATS:
        return fmt
    if fmt is not None:
        raise ImageHeaderError(f"{FORMAT_NAMES[fmt]} images are not accepted; accepted formats: {_ACCEPTED_LIST}")
    # A prefix of a signature is a truncated image, which deserves that message.
    fmt = truncated_format(view, ACCEPTED_FORMATS)
    if fmt is None:
        raise ImageHeaderError(f"not an image ({describe_unknown(view)})")
    return fmt


def _jpeg_size(view: memoryview) -> tuple[int, int]:
    """Walk the segments after SOI to the first frame header (SOFn) and return its size."""
    width, height, _ = _jpeg_frame(view)
    return width, height


def _jpeg_frame_header(view: memoryview) -> int:
    """Offset of the byte after the first frame header's marker."""
    return _jpeg_frame(view)[2]


def _jpeg_frame(view: memoryview) -> tuple[int, int, int]:
    """Width, height and position of the first frame header (SOFn)."""
    end = len(view)
    pos = 2
    for _ in range(MAX_JPEG_SEGMENTS):
        if pos >= end:
            raise ImageHeaderError("truncated JPEG header")
        match = _JPEG_MARKER.match(view, pos)
        if match is None:
            if view[pos] == 0xFF:  # only fill bytes left
                raise ImageHeaderError("truncated JPEG header")
            raise ImageHeaderError(f"corrupt JPEG header (no marker at byte {pos})")
        pos = match.end()
        marker = view[pos - 1]
        if marker in _JPEG_STANDALONE:
            continue
        if marker == 0xD9:
            raise ImageHeaderError("corrupt JPEG header (no frame header before the end)")
        if marker in (0x00, 0xD8, 0xDA):
            # A stuffed byte, a second SOI or a scan before the frame header: libjpeg refuses
            # all three, and walking on would read entropy-coded data as segments.
            raise ImageHeaderError(f"corrupt JPEG header (marker FF {marker:02X} at byte {pos - 2})")
        if pos + 2 > end:
            raise ImageHeaderError("truncated JPEG header")
        (length,) = struct.unpack_from(">H", view, pos)
        if length < 2:
            raise ImageHeaderError(f"corrupt JPEG header (segment length {length} at byte {pos})")
        if pos + length > end:
            raise ImageHeaderError("truncated JPEG header")
        if marker in _JPEG_SOF:
            if length < 8:
                raise ImageHeaderError(f"corrupt JPEG header (frame header length {length})")
            height, width = struct.unpack_from(">HH", view, pos + 3)
            return width, height, pos
        pos += length
    raise ImageHeaderError(f"corrupt JPEG header (over {MAX_JPEG_SEGMENTS} segments before the frame header)")


def _png_size(view: memoryview) -> tuple[int, int]:
    """Return the size in the IHDR chunk, which must directly follow the signature."""
    # signature (8), chunk length (4), b"IHDR" (4), 13 bytes of data, CRC (4)
    if len(view) < 33:
        raise ImageHeaderError("truncated PNG header")
    length, chunk_type, width, height = struct.unpack_from(">I4sII", view, 8)
    if chunk_type != b"IHDR" or length != 13:
        raise ImageHeaderError("corrupt PNG header (no IHDR chunk first)")
    if width > 0x7FFFFFFF or height > 0x7FFFFFFF:
        raise ImageHeaderError(f"corrupt PNG header (size {width}x{height} out of range)")
    return width, height


def _bmp_size(view: memoryview) -> tuple[int, int]:
    """Return the size in the DIB header after the 14-byte file header."""
    if len(view) < 18:
        raise ImageHeaderError("truncated BMP header")
    (dib_size,) = struct.unpack_from("<I", view, 14)
    if dib_size == 12:  # BITMAPCOREHEADER (OS/2 1.x): unsigned 16-bit sizes
        fmt = "<HH"
    elif dib_size in (40, 52, 56, 64, 108, 124):  # BITMAPINFOHEADER and its extensions
        fmt = "<ii"
    else:
        raise ImageHeaderError(f"corrupt BMP header (unknown header size {dib_size})")
    if len(view) < 14 + dib_size:
        raise ImageHeaderError("truncated BMP header")
    width, height = struct.unpack_from(fmt, view, 18)
    if width < 0:
        raise ImageHeaderError(f"corrupt BMP header (negative width {width})")
    # A negative height marks rows stored top-down.
    return width, abs(height)


def _tiff_size(view: memoryview) -> tuple[int, int]:
    """Return ImageWidth (256) and ImageLength (257) of the first IFD."""
    end = len(view)
    if end < 8:
        raise ImageHeaderError("truncated TIFF header")
    order = "<" if view[0] == 0x49 else ">"  # b"II" little-endian, b"MM" big-endian
    (ifd,) = struct.unpack_from(order + "I", view, 4)
    if ifd < 8:
        raise ImageHeaderError(f"corrupt TIFF header (first IFD at byte {ifd})")
    if ifd + 2 > end:
        raise ImageHeaderError("truncated TIFF header")
    (count,) = struct.unpack_from(order + "H", view, ifd)
    first = ifd + 2
    if first + 12 * count > end:
        raise ImageHeaderError("truncated TIFF header")
    size: dict[int, int] = {}
    for entry in range(first, first + 12 * count, 12):
        tag, kind, n = struct.unpack_from(order + "HHI", view, entry)
        # libtiff ignores repeats of a tag, so the first one is what the decoder uses.
        if tag not in (256, 257) or tag in size:
            continue
        if kind == 3 and n == 1:  # SHORT, left-justified in the 4-byte value field
            (size[tag],) = struct.unpack_from(order + "H", view, entry + 8)
        elif kind == 4 and n == 1:  # LONG
            (size[tag],) = struct.unpack_from(order + "I", view, entry + 8)
        else:
            raise ImageHeaderError(f"corrupt TIFF header (tag {tag} of type {kind}, count {n})")
        if len(size) == 2:
            return size[256], size[257]
    raise ImageHeaderError("corrupt TIFF header (no image width or length in the first IFD)")


def _webp_size(view: memoryview) -> tuple[int, int]:
    """Return the size from the first chunk of a RIFF/WEBP file: VP8, VP8L or VP8X."""
    if len(view) < 20:
        raise ImageHeaderError("truncated WebP header")
    chunk, length = struct.unpack_from("<4sI", view, 12)
    if chunk == b"VP8 ":  # lossy: frame tag (3), start code (3), 14-bit sizes
        if length < 10:
            raise ImageHeaderError("corrupt WebP header (VP8 chunk too short)")
        if len(view) < 30:
            raise ImageHeaderError("truncated WebP header")
        if view[20] & 1 or bytes(view[23:26]) != b"\x9d\x01\x2a":
            raise ImageHeaderError("corrupt WebP header (VP8 chunk is not a key frame)")
        width, height = struct.unpack_from("<HH", view, 26)
        # The top two bits of each are an upscaling hint that decoders ignore.
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L":  # lossless: signature 0x2F, then 14-bit width-1 and height-1
        if length < 5:
            raise ImageHeaderError("corrupt WebP header (VP8L chunk too short)")
        if len(view) < 25:
            raise ImageHeaderError("truncated WebP header")
        if view[20] != 0x2F:
            raise ImageHeaderError("corrupt WebP header (bad VP8L signature)")
        (bits,) = struct.unpack_from("<I", view, 21)
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":  # extended: flags (4), 24-bit canvas width-1 and height-1
        if length < 10:
            raise ImageHeaderError("corrupt WebP header (VP8X chunk too short)")
        if len(view) < 30:
            raise ImageHeaderError("truncated WebP header")
        width = int.from_bytes(view[24:27], "little") + 1
        height = int.from_bytes(view[27:30], "little") + 1
        return width, height
    raise ImageHeaderError(f"corrupt WebP header (unknown first chunk {chunk!r})")


_SIZE_PARSERS = {
    "jpeg": _jpeg_size,
    "png": _png_size,
    "bmp": _bmp_size,
    "tiff": _tiff_size,
    "webp": _webp_size,
}
