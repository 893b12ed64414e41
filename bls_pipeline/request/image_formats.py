"""What the bytes of each image format say about it: signatures, end markers, declared sizes.

The one home for format facts that both halves of the request logic need: trimming padding
(:mod:`bls_pipeline.request.padding` must find where a file ends) and checking headers
(:mod:`bls_pipeline.request.image_header` must name the format and see a cut file). Nothing
here decodes pixels or raises for bad data: a function that cannot tell returns ``None``.

Example::

    fmt = detect_format(data)               # "jpeg", "png", ..., or None
    marker_end(data, fmt, len(data))        # JPEG/PNG/GIF: index after the end marker
    declared_size(data, fmt)                # BMP/WebP/TIFF: bytes the header accounts for

Format keys: ``"jpeg"``, ``"png"``, ``"gif"``, ``"bmp"``, ``"tiff"``, ``"bigtiff"``,
``"webp"``, ``"jpeg2000"``, ``"pnm"``.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Collection

import numpy as np

__all__ = [
    "FORMAT_NAMES",
    "JPEG_EOI",
    "MARKER_FORMATS",
    "SIZE_DECLARING_FORMATS",
    "declared_size",
    "describe_unknown",
    "detect_format",
    "marker_end",
    "tiff_structure_end",
    "truncated_format",
]

Buffer = bytes | bytearray | memoryview

FORMAT_NAMES = {
    "jpeg": "JPEG",
    "png": "PNG",
    "gif": "GIF",
    "bmp": "BMP",
    "tiff": "TIFF",
    "bigtiff": "BigTIFF",
    "webp": "WebP",
    "jpeg2000": "JPEG 2000",
    "pnm": "PNM",
}
"""Human-readable name of each format key, for messages."""

# (format, ((offset, bytes), ...)): a file is of the format when it has every part.
# JPEG is identified by its start-of-image marker FF D8 alone, not FF D8 FF: the decoders
# (libjpeg-turbo in DALI) check only SOI and skip stray bytes before the next marker with a
# warning, so such a file is a damaged JPEG (trimmed as one, and refused by the header check
# with "no marker at byte 2"), not "not an image".
# RIFF is a container (also WAV, AVI): a WebP has "WEBP" at byte 8.
_SIGNATURES: tuple[tuple[str, tuple[tuple[int, bytes], ...]], ...] = (
    ("jpeg", ((0, b"\xff\xd8"),)),
    ("png", ((0, b"\x89PNG\r\n\x1a\n"),)),
    ("gif", ((0, b"GIF87a"),)),
    ("gif", ((0, b"GIF89a"),)),
    ("bmp", ((0, b"BM"),)),
    ("tiff", ((0, b"II*\x00"),)),
    ("tiff", ((0, b"MM\x00*"),)),
    ("bigtiff", ((0, b"II+\x00"),)),
    ("bigtiff", ((0, b"MM\x00+"),)),
    ("webp", ((0, b"RIFF"), (8, b"WEBP"))),
    ("jpeg2000", ((0, b"\x00\x00\x00\x0cjP  \r\n\x87\n"),)),
    ("jpeg2000", ((0, b"\xff\x4f\xff\x51"),)),
)
_HEAD_BYTES = 16

JPEG_EOI = b"\xff\xd9"
_PNG_IEND = b"IEND"
# Signature (8) and the IHDR chunk (25) that must come first: no IEND before this offset.
_PNG_FIRST_CHUNK_END = 33
_GIF_TRAILER = 0x3B

# Bytes of one value of each TIFF field type (TIFF 6.0 section 2, plus BigTIFF's 8-byte types).
_TIFF_TYPE_SIZES = {
    1: 1,
    2: 1,
    3: 2,
    4: 4,
    5: 8,
    6: 1,
    7: 1,
    8: 2,
    9: 4,
    10: 8,
    11: 4,
    12: 8,
    13: 4,
    16: 8,
    17: 8,
    18: 8,
}
# (offsets tag, byte counts tag): strips, tiles, and an old-style JPEG stream.
_TIFF_DATA_TAGS = ((273, 279), (324, 325), (513, 514))
# Tags whose values are offsets of further IFDs: SubIFDs, Exif, GPS, Interoperability.
_TIFF_IFD_TAGS = (330, 34665, 34853, 40965)
# A guard against files that chain IFDs endlessly; real files have a handful.
_TIFF_MAX_IFDS = 4096


def _head(data: Buffer) -> bytes:
    return bytes(memoryview(data).cast("B")[:_HEAD_BYTES])


def detect_format(data: Buffer) -> str | None:
    """Name the format of ``data`` from its magic bytes (a key of :data:`FORMAT_NAMES`), or ``None``."""
    head = _head(data)
    for fmt, parts in _SIGNATURES:
        if all(head[offset : offset + len(magic)] == magic for offset, magic in parts):
            return fmt
    if len(head) >= 3 and head[0:1] == b"P" and head[1:2] in b"123456" and head[2:3].isspace():
        return "pnm"
    return None


def truncated_format(data: Buffer, formats: Collection[str]) -> str | None:
    """The first of ``formats`` whose signature ``data`` could be the beginning of, or ``None``.

    For a file cut inside its signature (``b"\\xff"``, ``b"RIFF\\x10\\x00"``): the caller can
    then say "truncated JPEG header" rather than "not an image".
    """
    head = _head(data)
    if not head:
        return None
    for fmt, parts in _SIGNATURES:
        if fmt in formats and all(
            head[offset : offset + len(magic)] == magic[: max(0, len(head) - offset)] for offset, magic in parts
        ):
            return fmt
    return None


def describe_unknown(data: Buffer) -> str:
    """Say what ``data`` of no image format looks like, for a one-line message."""
    head = _head(data)
    if head.startswith(b"RIFF") and len(head) >= 12:
        return f"RIFF container of type {head[8:12]!r}"
    return f"unknown format, first bytes {head[:4].hex(' ')}"


def _jpeg_end(data: memoryview, stop: int) -> int | None:
    # An EXIF thumbnail has its own EOI earlier in the file, and entropy-coded data cannot
    # contain FF D9, so the last one ends the main image.
    eoi = data[:stop].tobytes().rfind(JPEG_EOI)
    return eoi + len(JPEG_EOI) if eoi >= 0 else None


def _png_end(data: memoryview, stop: int) -> int | None:
    pos = 8
    # IEND's CRC is non-zero, so the walk can stop at ``stop`` (the last non-zero byte of a
    # padded row): the padding would otherwise read as a run of 12-byte empty chunks, a
    # million of them per 12 MB.
    while pos + 12 <= stop:
        (length,) = struct.unpack_from(">I", data, pos)
        chunk_end = pos + 12 + length
        if chunk_end > len(data):
            break
        if data[pos + 4 : pos + 8] == _PNG_IEND:
            return chunk_end
        pos = chunk_end
    # A malformed chunk length: the last IEND after the IHDR chunk, with its CRC.
    iend = data[:stop].tobytes().rfind(_PNG_IEND, _PNG_FIRST_CHUNK_END)
    return min(iend + 8, len(data)) if iend >= 0 else None


def _gif_end(data: memoryview, stop: int) -> int | None:
    # The trailer byte is the last non-zero byte of a whole GIF.
    return stop if stop > 0 and data[stop - 1] == _GIF_TRAILER else None


_MARKER_ENDS: dict[str, Callable[[memoryview, int], int | None]] = {
    "jpeg": _jpeg_end,
    "png": _png_end,
    "gif": _gif_end,
}
MARKER_FORMATS = frozenset(_MARKER_ENDS)
"""Formats that end with an end marker: JPEG (EOI), PNG (IEND and its CRC), GIF (trailer)."""


def marker_end(data: Buffer, fmt: str, stop: int) -> int | None:
    """Index after the end marker of a ``fmt`` file in ``data[:stop]``, or ``None`` if absent.

    JPEG: after the last EOI (``FF D9``). PNG: after IEND's CRC, found by walking the chunks'
    length fields (by searching for IEND if they are malformed). GIF: ``stop``, when the byte
    before it is the trailer ``3B``. ``None`` too for a format without an end marker.
    """
    view = memoryview(data).cast("B")
    find = _MARKER_ENDS.get(fmt)
    return find(view, stop) if find is not None else None


def _bmp_size(data: memoryview) -> int | None:
    # Some writers leave this field 0; callers judge whether it is plausible.
    return struct.unpack_from("<I", data, 2)[0] if len(data) >= 6 else None


def _webp_size(data: memoryview) -> int | None:
    # The RIFF size counts the bytes after the 8-byte RIFF header.
    return struct.unpack_from("<I", data, 4)[0] + 8 if len(data) >= 8 else None


def _tiff_size(data: memoryview) -> int | None:
    try:
        return tiff_structure_end(data)
    except (struct.error, ValueError):
        return None


_DECLARED_SIZES: dict[str, Callable[[memoryview], int | None]] = {
    "bmp": _bmp_size,
    "webp": _webp_size,
    "tiff": _tiff_size,
}
SIZE_DECLARING_FORMATS = frozenset(_DECLARED_SIZES)
"""Formats whose header says how many bytes the file occupies: BMP, WebP, TIFF."""


def declared_size(data: Buffer, fmt: str) -> int | None:
    """Bytes a BMP, WebP or TIFF header says the file occupies, or ``None`` if it cannot say.

    BMP: the file size field (which some writers leave 0). WebP: the RIFF size plus its
    8-byte header. TIFF: see :func:`tiff_structure_end`; ``None`` for a corrupt IFD chain.
    ``None`` too for a header too short to hold the field, or another format.
    """
    view = memoryview(data).cast("B")
    read = _DECLARED_SIZES.get(fmt)
    return read(view) if read is not None else None


def tiff_structure_end(data: Buffer) -> int | None:
    """Where a classic TIFF ends: past the furthest IFD, value, strip or tile its IFDs point at.

    ``None`` for BigTIFF, which is rare enough to keep whole. A corrupt IFD chain raises
    ``struct.error`` or ``ValueError``.
    """
    data = memoryview(data).cast("B")
    order = "<" if data[:2] == b"II" else ">"
    (magic, first_ifd) = struct.unpack_from(order + "HI", data, 2)
    if magic != 42:
        return None
    end = 8
    pending = [first_ifd]
    seen: set[int] = set()
    while pending:
        ifd = pending.pop()
        if ifd == 0 or ifd in seen:
            continue
        if len(seen) >= _TIFF_MAX_IFDS:
            raise ValueError("too many TIFF IFDs")
        seen.add(ifd)
        (count,) = struct.unpack_from(order + "H", data, ifd)
        entries_end = ifd + 2 + 12 * count
        (next_ifd,) = struct.unpack_from(order + "I", data, entries_end)
        end = max(end, entries_end + 4)
        pending.append(next_ifd)
        fields = {}
        for entry in range(ifd + 2, entries_end, 12):
            tag, field_type, n_values = struct.unpack_from(order + "HHI", data, entry)
            size = _TIFF_TYPE_SIZES.get(field_type, 0) * n_values
            if size > 4:
                (offset,) = struct.unpack_from(order + "I", data, entry + 8)
                end = max(end, offset + size)
            fields[tag] = (field_type, n_values, entry + 8)
        for offsets_tag, counts_tag in _TIFF_DATA_TAGS:
            if offsets_tag in fields and counts_tag in fields:
                offsets = _tiff_values(data, order, *fields[offsets_tag])
                counts = _tiff_values(data, order, *fields[counts_tag])
                if len(offsets) == len(counts) and len(offsets) > 0:
                    end = max(end, int((offsets + counts).max()))
        for tag in _TIFF_IFD_TAGS:
            if tag in fields:
                pending.extend(int(offset) for offset in _tiff_values(data, order, *fields[tag]))
    return end


def _tiff_values(data: memoryview, order: str, field_type: int, n_values: int, value_at: int) -> np.ndarray:
    """Read a field's SHORT/LONG/IFD values as int64 (inline when they fit in 4 bytes)."""
    dtypes = {3: "u2", 4: "u4", 13: "u4"}
    if field_type not in dtypes:
        return np.zeros(0, dtype=np.int64)
    dtype = np.dtype(order + dtypes[field_type])
    if dtype.itemsize * n_values > 4:
        (value_at,) = struct.unpack_from(order + "I", data, value_at)
    if value_at + dtype.itemsize * n_values > len(data):
        raise ValueError("TIFF field runs past the end of the row")
    return np.frombuffer(data, dtype=dtype, count=n_values, offset=value_at).astype(np.int64)
