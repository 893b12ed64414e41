"""The sample photographs laid out the way each DALI reader reads them, for verification.

A conversion is proven by running the user's original pipeline, reader included, on a few
photographs: each :class:`ReaderKind` writes them as its reader expects (class folders or a
file list, a tar of samples, COCO annotations, RecordIO, TFRecord) and returns the reader
arguments that point at them. The user's location arguments are replaced; the others stay.

Example::

    kind = READERS["file"]
    arguments = kind.layout(Path("/tmp/samples"), photos, {"file_root": "/data/val"})
    # {"file_root": "/tmp/samples"}: /tmp/samples/0/000.jpg, 001.jpg, ...
"""

from __future__ import annotations

import contextlib
import json
import struct
import tarfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bls_pipeline.errors import BlsPipelineError

SAMPLE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


class UserPipelineError(BlsPipelineError):
    """The user's DALI pipeline cannot be loaded, converted, served or verified."""


@dataclass(frozen=True)
class ReaderKind:
    """How one ``fn.readers.*`` reader is converted and fed sample photographs."""

    name: str
    # Arguments naming the data's location, replaced by those of the sample layout.
    location_arguments: tuple[str, ...]
    # (sample folder, photographs, user's arguments) -> arguments that read the samples.
    layout: Callable[[Path, Sequence[Path], dict[str, Any]], dict[str, Any]]
    # The encoded-image output among the reader's outputs: an index, or a key of a dict.
    image_output: Callable[[dict[str, Any]], int | str] = lambda kwargs: 0


def _file_layout(folder: Path, photos: Sequence[Path], kwargs: dict[str, Any]) -> dict[str, Any]:
    """``file_root/0/NNN.ext``; or a ``file_list``, or ``files``, as the user's reader uses."""
    names = [f"{index:03d}{photo.suffix.lower()}" for index, photo in enumerate(photos)]
    (folder / "0").mkdir()
    for name, photo in zip(names, photos):
        (folder / "0" / name).write_bytes(photo.read_bytes())
    if "file_list" in kwargs:
        (folder / "list.txt").write_text("".join(f"0/{name} 0\n" for name in names))
        return {"file_root": str(folder), "file_list": str(folder / "list.txt")}
    if "files" in kwargs:
        return {"files": [str(folder / "0" / name) for name in names]}
    return {"file_root": str(folder)}


def _webdataset_image_output(kwargs: dict[str, Any]) -> int:
    extensions = _webdataset_extensions(kwargs)
    for index, alternatives in enumerate(extensions):
        if any(f".{ext}" in SAMPLE_SUFFIXES for ext in alternatives):
            return index
    raise UserPipelineError(f"fn.readers.webdataset: no image extension among ext={kwargs.get('ext')!r}")


def _webdataset_extensions(kwargs: dict[str, Any]) -> list[list[str]]:
    ext = kwargs.get("ext", [])
    ext = [ext] if isinstance(ext, str) else list(ext)
    return [[part.lower() for part in str(entry).split(";")] for entry in ext]


def _webdataset_layout(folder: Path, photos: Sequence[Path], kwargs: dict[str, Any]) -> dict[str, Any]:
    """One tar; each sample has the image under the first image extension and ``0`` elsewhere."""
    image_index = _webdataset_image_output(kwargs)
    path = folder / "samples.tar"
    with tarfile.open(path, "w") as tar:
        for index, photo in enumerate(photos):
            for position, alternatives in enumerate(_webdataset_extensions(kwargs)):
                data = photo.read_bytes() if position == image_index else b"0"
                info = tarfile.TarInfo(f"{index:06d}.{alternatives[0]}")
                info.size = len(data)
                tar.addfile(info, fileobj=_BytesReader(data))
    return {"paths": [str(path)]}


class _BytesReader:
    """A minimal file object over bytes for ``tarfile.addfile``."""

    def __init__(self, data: bytes) -> None:
        self._data, self._offset = data, 0

    def read(self, size: int = -1) -> bytes:
        end = len(self._data) if size < 0 else self._offset + size
        chunk, self._offset = self._data[self._offset : end], min(end, len(self._data))
        return chunk


def _coco_layout(folder: Path, photos: Sequence[Path], kwargs: dict[str, Any]) -> dict[str, Any]:
    """``file_root`` with the photographs and an annotations file with one box per image."""
    images, annotations = [], []
    for index, photo in enumerate(photos, start=1):
        name = f"{index:03d}{photo.suffix.lower()}"
        (folder / name).write_bytes(photo.read_bytes())
        images.append({"id": index, "file_name": name, "width": 64, "height": 64})
        annotations.append(
            {"id": index, "image_id": index, "category_id": 1, "bbox": [0, 0, 8, 8], "area": 64, "iscrowd": 0}
        )
    annotations_file = folder / "annotations.json"
    annotations_file.write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "thing"}]})
    )
    return {"file_root": str(folder), "annotations_file": str(annotations_file)}


def _mxnet_layout(folder: Path, photos: Sequence[Path], kwargs: dict[str, Any]) -> dict[str, Any]:
    """A RecordIO ``.rec`` (header: flag, label, id, id2; then the image) and its ``.idx``."""
    rec, idx = folder / "samples.rec", folder / "samples.idx"
    offsets = []
    with rec.open("wb") as out:
        for index, photo in enumerate(photos):
            payload = np.array([0], "<u4").tobytes() + np.array([0.0], "<f4").tobytes()
            payload += np.array([index, 0], "<u8").tobytes() + photo.read_bytes()
            offsets.append(out.tell())
            out.write(np.array([0xCED7230A, len(payload)], "<u4").tobytes() + payload)
            out.write(b"\0" * (-len(payload) % 4))
    idx.write_text("".join(f"{index}\t{offset}\n" for index, offset in enumerate(offsets)))
    return {"path": [str(rec)], "index_path": [str(idx)]}


# --- TFRecord: tf.train.Example records, written without TensorFlow --------------------------

# The feature types of the Feature objects made while recording (DALI's are opaque), by id;
# each entry keeps its Feature alive so that the id is not reused.
_FEATURE_TYPES: dict[int, tuple[Any, int, int]] = {}


@contextlib.contextmanager
def recording_tfrecord_features() -> Iterator[None]:
    """Record the dtype and value count of every ``nvidia.dali.tfrecord`` feature made inside.

    Wraps the user's import and graph builds, so that the TFRecord layout knows what to write.
    """
    from nvidia.dali import tfrecord

    fixed, variable = tfrecord.FixedLenFeature, tfrecord.VarLenFeature

    def fixed_len(shape: Any, dtype: int, default: Any) -> Any:
        feature = fixed(shape, dtype, default)
        _FEATURE_TYPES[id(feature)] = (feature, dtype, int(np.prod(shape)) if len(shape) else 1)
        return feature

    def var_len(*arguments: Any) -> Any:
        feature = variable(*arguments)
        _FEATURE_TYPES[id(feature)] = (feature, arguments[-2], 1)
        return feature

    tfrecord.FixedLenFeature, tfrecord.VarLenFeature = fixed_len, var_len
    try:
        yield
    finally:
        tfrecord.FixedLenFeature, tfrecord.VarLenFeature = fixed, variable
        _FEATURE_TYPES.clear()


def _feature_types(kwargs: dict[str, Any]) -> dict[str, tuple[int, int]]:
    """``{feature name: (dtype, count)}`` of the reader's ``features``."""
    types = {}
    for name, feature in dict(kwargs.get("features", {})).items():
        recorded = _FEATURE_TYPES.get(id(feature))
        if recorded is None or recorded[0] is not feature:
            raise UserPipelineError(
                f"fn.readers.tfrecord: the type of feature {name!r} is unknown (make features with "
                "nvidia.dali.tfrecord.FixedLenFeature/VarLenFeature, in the script or its pipeline)"
            )
        types[name] = recorded[1:]
    return types


def _tfrecord_image_output(kwargs: dict[str, Any]) -> str:
    from nvidia.dali import tfrecord

    strings = [name for name, (dtype, _) in _feature_types(kwargs).items() if dtype == tfrecord.string]
    encoded = [name for name in strings if "encoded" in name] or strings
    if len(encoded) != 1:
        raise UserPipelineError(
            f"fn.readers.tfrecord: cannot tell which string feature holds the encoded image among {strings}"
        )
    return encoded[0]


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _message(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _example(values: dict[str, tuple[int, Any]]) -> bytes:
    """A ``tf.train.Example``: ``{name: (dtype, bytes | list of numbers)}``."""
    from nvidia.dali import tfrecord

    entries = b""
    for name, (dtype, value) in values.items():
        if dtype == tfrecord.string:
            feature = _message(1, _message(1, value))  # bytes_list
        elif dtype == tfrecord.float32:
            feature = _message(2, _message(1, struct.pack(f"<{len(value)}f", *value)))  # float_list, packed
        else:
            feature = _message(3, _message(1, b"".join(_varint(v) for v in value)))  # int64_list, packed
        entries += _message(1, _message(1, name.encode()) + _message(2, feature))
    return _message(1, entries)


def _crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> bytes:
    crc = _crc32c(data)
    return struct.pack("<I", (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF)


def _tfrecord_layout(folder: Path, photos: Sequence[Path], kwargs: dict[str, Any]) -> dict[str, Any]:
    """One TFRecord file of Examples (the image under its feature, zeros elsewhere) and its index."""
    from nvidia.dali import tfrecord

    types, image = _feature_types(kwargs), _tfrecord_image_output(kwargs)
    records, index = folder / "samples.tfrecord", []
    with records.open("wb") as out:
        for photo in photos:
            values = {
                name: (
                    dtype,
                    photo.read_bytes() if name == image else b"0" if dtype == tfrecord.string else [0] * count,
                )
                for name, (dtype, count) in types.items()
            }
            data = _example(values)
            length = struct.pack("<Q", len(data))
            start = out.tell()
            out.write(length + _masked_crc(length) + data + _masked_crc(data))
            index.append(f"{start} {out.tell() - start}\n")
    (folder / "samples.idx").write_text("".join(index))
    return {"path": [str(records)], "index_path": [str(folder / "samples.idx")]}


READERS = {
    kind.name: kind
    for kind in (
        ReaderKind("file", ("file_root", "file_list", "files", "labels", "file_filters"), _file_layout),
        ReaderKind("webdataset", ("paths", "index_paths"), _webdataset_layout, _webdataset_image_output),
        ReaderKind(
            "coco",
            (
                "file_root",
                "annotations_file",
                "preprocessed_annotations",
                "save_preprocessed_annotations",
                "save_preprocessed_annotations_dir",
                "images",
                "image_ids",
            ),
            _coco_layout,
        ),
        ReaderKind("mxnet", ("path", "index_path"), _mxnet_layout),
        ReaderKind("tfrecord", ("path", "index_path"), _tfrecord_layout, _tfrecord_image_output),
    )
}
