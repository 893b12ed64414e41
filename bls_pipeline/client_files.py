"""Classify image files through the ``classifier`` endpoint: find them, fan out, retry, report.

The library behind ``tools/classify.py``. Example::

    files = collect_files(["samples/", "shots/**/*.jpg"])
    with ClassifierClient("127.0.0.1:8001", concurrency=2) as client:
        results = []
        for result in classify_files(client, files, batch_size=8, concurrency=2):
            print(result.to_json())        # one file at a time, in the order of ``files``
            results.append(result)
    print(format_table(results))

Errors are per file: a request that fails is resent image by image, so that one bad file
does not fail its batch-mates, and a server that stops answering fails the remaining files
with its reason. Files of a request that a busy server kept shedding (``UNAVAILABLE`` until the
client's retry deadline) are reported as shed: nothing is wrong with them, send them again.
"""

from __future__ import annotations

import glob
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bls_pipeline.client import (
    ClassifierClient,
    ClientError,
    PendingRequest,
    Prediction,
    ServerBusy,
    single_image_reason,
)
from bls_pipeline.errors import BlsPipelineError
from bls_pipeline.request.orchestration import DEFAULT_MAX_IMAGE_BYTES

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})
# Long paths would push the table off the screen; the JSON output has them in full.
MAX_FILE_COLUMN = 60


class PathError(BlsPipelineError):
    """A path argument names no usable file: missing, or no image files where it points."""


@dataclass
class FileResult:
    """The outcome of one file: predictions, or the one-line reason it failed."""

    path: str
    predictions: list[Prediction] = field(default_factory=list)
    error: str | None = None
    # The server was too busy to take it (the file itself may be fine).
    shed: bool = False

    def to_json(self) -> dict:
        """``{file, predictions: [{class_id, label, probability}]}`` or ``{file, error}``
        (with ``"shed": true`` when a busy server refused it)."""
        if self.error is not None:
            return {"file": self.path, "error": self.error, **({"shed": True} if self.shed else {})}
        (prediction,) = self.predictions
        ranked = zip(prediction.class_ids, prediction.labels, prediction.scores)
        return {
            "file": self.path,
            "predictions": [{"class_id": c, "label": label, "probability": score} for c, label, score in ranked],
        }


def is_image_name(path: Path) -> bool:
    """Whether ``path`` has one of the image extensions (any case)."""
    return path.suffix.lower() in IMAGE_EXTENSIONS


def _folder_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and is_image_name(p))


def collect_files(arguments: Iterable[str]) -> list[Path]:
    """The files named by ``arguments``, in order, without duplicates.

    A file is taken as is; a folder contributes its image files, recursively; a pattern is
    expanded with :func:`glob.glob` (``**`` recursive) and its folders are searched like
    folders. Raises :class:`PathError` for an argument that matches nothing, and when no
    image file is found at all.
    """
    arguments = list(arguments)
    files: list[Path] = []
    for argument in arguments:
        path = Path(argument)
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            files.extend(_folder_images(path))
        elif glob.has_magic(argument):
            matches = sorted(glob.glob(argument, recursive=True))
            if not matches:
                raise PathError(f"no file matches {argument!r}")
            for match in map(Path, matches):
                if match.is_dir():
                    files.extend(_folder_images(match))
                elif match.is_file() and is_image_name(match):
                    files.append(match)
        else:
            raise PathError(f"{argument} does not exist")
    unique = list(dict.fromkeys(files))
    if not unique:
        raise PathError(
            f"no image files found in {' '.join(arguments)} (extensions: {' '.join(sorted(IMAGE_EXTENSIONS))})"
        )
    return unique


def _read(path: Path, max_bytes: int) -> bytes | str:
    """The file's bytes, or the one-line reason it is not sent (judged before reading it)."""
    try:
        size = path.stat().st_size
        if size > max_bytes:
            return f"file is {size} bytes, larger than --max-bytes {max_bytes}"
        if size == 0:
            return "file is empty"
        data = path.read_bytes()
    except OSError as exc:
        return f"cannot read: {exc.strerror or exc}"
    return data if len(data) <= max_bytes else f"file is larger than --max-bytes {max_bytes}"


@dataclass
class _Batch:
    """Consecutive files: their results, and the request carrying those that could be read."""

    results: list[FileResult]
    sent: list[tuple[FileResult, bytes]]
    request: PendingRequest | None


def classify_files(
    client: ClassifierClient,
    files: Sequence[Path],
    *,
    batch_size: int,
    concurrency: int,
    top_k: int | None = None,
    max_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
) -> Iterator[FileResult]:
    """Yield the result of each of ``files``, in order, as soon as its request is answered.

    Files go ``batch_size`` to a request, with up to ``concurrency`` requests in flight; a
    file is read only when its request is sent, so a large folder is never all in memory.
    Files over ``max_bytes`` are reported without being sent.
    """
    if batch_size < 1 or concurrency < 1:
        raise ValueError(f"batch size and concurrency must be at least 1, got {batch_size} and {concurrency}")
    in_flight: deque[_Batch] = deque()
    fatal: str | None = None

    def oldest() -> Iterator[FileResult]:
        nonlocal fatal
        batch = in_flight.popleft()
        fatal = _finish(client, batch, top_k, fatal)
        yield from batch.results

    for start in range(0, len(files), batch_size):
        paths = files[start : start + batch_size]
        if fatal is not None:
            while in_flight:
                yield from oldest()
            yield from (FileResult(str(path), error=f"not classified: {fatal}") for path in paths)
            continue
        in_flight.append(_send(client, paths, top_k, max_bytes))
        if len(in_flight) >= concurrency:
            yield from oldest()
    while in_flight:
        yield from oldest()


def _send(client: ClassifierClient, paths: Sequence[Path], top_k: int | None, max_bytes: int) -> _Batch:
    results, sent = [], []
    for path in paths:
        result = FileResult(str(path))
        results.append(result)
        data = _read(path, max_bytes)
        if isinstance(data, str):
            result.error = data
        else:
            sent.append((result, data))
    request = client.submit([data for _, data in sent], top_k=top_k) if sent else None
    return _Batch(results, sent, request)


def _finish(client: ClassifierClient, batch: _Batch, top_k: int | None, fatal: str | None) -> str | None:
    """Fill in ``batch``'s results; return why the server cannot be used, if it cannot."""
    if batch.request is None:
        return fatal
    try:
        predictions = batch.request.result()
    except ServerBusy as busy:
        for result, _ in batch.sent:
            result.error, result.shed = f"shed: {busy}", True
        return fatal
    except ClientError as error:
        failure = error
    else:
        for (result, _), prediction in zip(batch.sent, predictions):
            result.predictions = [prediction]
        return fatal
    if fatal is None:
        # A refused request is an image's fault only while the server is fine.
        try:
            client.check_ready()
        except ClientError as exc:
            fatal = str(exc)
    if fatal is not None:
        for result, _ in batch.sent:
            result.error = f"not classified: {fatal}"
    elif len(batch.sent) == 1:
        batch.sent[0][0].error = single_image_reason(failure)
    else:
        for result, data in batch.sent:
            try:
                result.predictions = client.classify([data], top_k=top_k)
            except ServerBusy as busy:
                result.error, result.shed = f"shed: {busy}", True
            except ClientError as exc:
                result.error = single_image_reason(exc)
    return fatal


def format_table(results: Sequence[FileResult]) -> str:
    """A table ``file | label | probability``: top-1 on the file's row, the rest indented below it."""
    names = [r.path if len(r.path) <= MAX_FILE_COLUMN else "..." + r.path[-(MAX_FILE_COLUMN - 3) :] for r in results]
    file_width = max([len("FILE"), *map(len, names)])
    label_width = max([len("LABEL"), *(len(label) + 2 for r in results for p in r.predictions for label in p.labels)])
    lines = [f"{'FILE':<{file_width}}  {'LABEL':<{label_width}}  PROBABILITY"]
    for name, result in zip(names, results):
        if result.error is not None:
            lines.append(f"{name:<{file_width}}  error: {result.error}")
            continue
        (prediction,) = result.predictions
        for rank, (label, score) in enumerate(zip(prediction.labels, prediction.scores)):
            shown_name = name if rank == 0 else ""
            shown_label = label if rank == 0 else f"  {label}"
            lines.append(f"{shown_name:<{file_width}}  {shown_label:<{label_width}}  {score:.4f}".rstrip())
    return "\n".join(lines)
