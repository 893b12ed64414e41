#!/usr/bin/env python3
"""Classify image files through a running ``classifier`` endpoint and print the top classes.

    python tools/classify.py samples/                          # every image under samples/
    python tools/classify.py cat.jpg 'photos/**/*.png' --top-k 3 --url 127.0.0.1:9000
    python tools/classify.py samples/ --json > predictions.json

Exit codes: 0 every file was classified; 1 a file failed (its row says why, the others
still print) or the server cannot be used; 2 a usage error.
"""

from __future__ import annotations

import argparse
import glob
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from bls_pipeline.request.orchestration import DEFAULT_MAX_IMAGE_BYTES
from bls_pipeline.devtools.cli import positive_float
from bls_pipeline.devtools.client import ClassifierClient, ClientError, Prediction

PROG = "classify"
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})
# Larger files would be refused by the server's default limit: not worth sending.
DEFAULT_MAX_BYTES = DEFAULT_MAX_IMAGE_BYTES
# Long paths would push the table off the screen; the JSON output has them in full.
MAX_FILE_COLUMN = 60

EPILOG = """\
examples:
  classify samples/                                 every image under samples/, recursively
  classify 'photos/**/*.jpg' --top-k 3              a glob (quoted: expanded here, recursively)
  classify cat.jpg --url 10.0.0.5:8000 --json       one JSON document on stdout

Folders are searched recursively for .jpg .jpeg .png .bmp .tif .tiff .webp (any case);
files named explicitly are sent whatever their extension. Start a server with
tools/serve.py --model-repository build/model_repository.

exit codes: 0 all files classified, 1 some file failed or the server cannot be used,
2 usage error.
"""


class UsageError(Exception):
    """A path argument names nothing usable; reported as one line, exit code 1."""


@dataclass
class FileResult:
    """The outcome of one file: predictions, or the one-line reason it failed."""

    path: str
    predictions: list[Prediction] = field(default_factory=list)
    error: str | None = None

    def to_json(self) -> dict:
        if self.error is not None:
            return {"file": self.path, "error": self.error}
        (prediction,) = self.predictions
        ranked = zip(prediction.class_ids, prediction.labels, prediction.scores)
        return {
            "file": self.path,
            "predictions": [{"class_id": c, "label": label, "probability": score} for c, label, score in ranked],
        }


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (tests read its flags)."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Classify images with the classifier endpoint of a running Triton server and "
        "print the top classes of each file (file | label | probability).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "paths",
        nargs="+",
        metavar="PATH",
        help="image files, folders (searched recursively for image extensions) or glob patterns",
    )
    parser.add_argument("--url", default="127.0.0.1:8000", help="the server's HTTP address, host:port (default: %(default)s)")
    parser.add_argument(
        "--top-k",
        type=_positive_int,
        metavar="K",
        help="classes to show per image, best first (default: the server's default, 5)",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print one JSON document instead of a table: a list of {file, predictions: "
        "[{class_id, label, probability}]} or {file, error}",
    )
    parser.add_argument(
        "--batch-size",
        type=_positive_int,
        metavar="N",
        help="images per request (default and upper bound: the model's max_batch_size)",
    )
    parser.add_argument(
        "--concurrency",
        type=_positive_int,
        default=2,
        metavar="N",
        help="requests in flight at once (default: %(default)s)",
    )
    parser.add_argument(
        "--timeout",
        type=positive_float,
        default=120.0,
        metavar="SECONDS",
        help="connection and response timeout per request (default: %(default)s)",
    )
    parser.add_argument(
        "--max-bytes",
        type=_positive_int,
        default=DEFAULT_MAX_BYTES,
        metavar="BYTES",
        help="files larger than this are reported as errors without being sent (default: %(default)s, 16 MiB)",
    )
    return parser


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def is_image_name(path: Path) -> bool:
    """Whether ``path`` has one of the image extensions (any case)."""
    return path.suffix.lower() in IMAGE_EXTENSIONS


def _folder_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and is_image_name(p))


def collect_files(arguments: Iterable[str]) -> list[Path]:
    """The files named by ``arguments``, in order, without duplicates.

    A file is taken as is; a folder contributes its image files, recursively; a pattern is
    expanded with :func:`glob.glob` (``**`` recursive) and its folders are searched like
    folders. Raises :class:`UsageError` for an argument that matches nothing, and when no
    image file is found at all.
    """
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
                raise UsageError(f"no file matches {argument!r}")
            for match in map(Path, matches):
                if match.is_dir():
                    files.extend(_folder_images(match))
                elif match.is_file() and is_image_name(match):
                    files.append(match)
        else:
            raise UsageError(f"{argument} does not exist")
    unique = list(dict.fromkeys(files))
    if not unique:
        raise UsageError(f"no image files found in {' '.join(arguments)} (extensions: {' '.join(sorted(IMAGE_EXTENSIONS))})")
    return unique


def _size_error(path: Path, max_bytes: int) -> str | None:
    """Why ``path`` is not sent, judged from its size alone, or None."""
    try:
        size = path.stat().st_size
    except OSError as exc:
        return f"cannot read: {exc.strerror or exc}"
    if size > max_bytes:
        return f"file is {size} bytes, larger than --max-bytes {max_bytes}"
    if size == 0:
        return "file is empty"
    return None


def _read(path: Path, max_bytes: int) -> bytes | str:
    """The file's bytes, or the one-line reason it is not sent.

    Files are read a wave of requests at a time, so a large folder is never all in memory.
    """
    error = _size_error(path, max_bytes)
    if error is not None:
        return error
    try:
        data = path.read_bytes()
    except OSError as exc:
        return f"cannot read: {exc.strerror or exc}"
    return data if len(data) <= max_bytes else f"file is larger than --max-bytes {max_bytes}"


def _chunks(items: Sequence, size: int) -> list[Sequence]:
    return [items[i : i + size] for i in range(0, len(items), size)]


class Progress:
    """``classify: N/M files`` on stderr, rewritten in place, only when stderr is a terminal."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total = total
        self.enabled = enabled and sys.stderr.isatty()
        self.done = 0

    def advance(self, count: int) -> None:
        self.done += count
        if self.enabled:
            print(f"\r{PROG}: {self.done}/{self.total} files", end="", file=sys.stderr, flush=True)

    def finish(self) -> None:
        if self.enabled:
            print(file=sys.stderr, flush=True)


def classify_files(
    client: ClassifierClient,
    files: Sequence[Path],
    *,
    batch_size: int,
    concurrency: int,
    top_k: int | None,
    max_bytes: int,
) -> list[FileResult]:
    """Classify ``files``, ``concurrency`` requests of ``batch_size`` images at a time.

    Errors are per file: a request that fails is resent image by image so that one bad file
    does not fail its batch-mates. A server that stops answering fails the remaining files.
    """
    results = {path: FileResult(str(path)) for path in files}
    for path in files:
        results[path].error = _size_error(path, max_bytes)
    to_send = [path for path in files if results[path].error is None]

    batches = _chunks(to_send, batch_size)
    progress = Progress(len(to_send), enabled=len(batches) > 1)
    fatal: str | None = None
    for wave in _chunks(batches, concurrency):
        if fatal is not None:
            break
        payloads: list[list[tuple[Path, bytes]]] = []
        for batch in wave:
            items = []
            for path in batch:
                data = _read(path, max_bytes)
                if isinstance(data, str):
                    results[path].error = data
                else:
                    items.append((path, data))
            if items:
                payloads.append(items)
        answers = client.classify_batches([[data for _, data in items] for items in payloads], top_k=top_k)
        for items, answer in zip(payloads, answers):
            if not isinstance(answer, ClientError):
                for (path, _), prediction in zip(items, answer):
                    results[path].predictions = [prediction]
                continue
            try:
                client.check_ready()
            except ClientError as exc:
                fatal = str(exc)
                break
            if len(items) == 1:
                results[items[0][0]].error = _image_error(str(answer))
                continue
            for path, data in items:
                try:
                    results[path].predictions = client.classify([data], top_k=top_k)
                except ClientError as exc:
                    results[path].error = _image_error(str(exc))
        progress.advance(sum(len(batch) for batch in wave))
    progress.finish()
    if fatal is not None:
        for result in results.values():
            if result.error is None and not result.predictions:
                result.error = f"not classified: {fatal}"
    return [results[path] for path in files]


def _image_error(message: str) -> str:
    """The server's message about a one-image request, without its ``image 0:`` prefix."""
    for prefix in ("[400] ", "[StatusCode.INVALID_ARGUMENT] "):
        message = message.removeprefix(prefix)
    return message.removeprefix("image 0: ")


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


def _fail(message: str) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        files = collect_files(args.paths)
    except UsageError as exc:
        return _fail(str(exc))
    try:
        with ClassifierClient(args.url, concurrency=args.concurrency, timeout_s=args.timeout) as client:
            client.check_ready()
            max_batch_size = client.max_batch_size()
            batch_size = max_batch_size
            if args.batch_size is not None:
                if args.batch_size > max_batch_size:
                    print(
                        f"{PROG}: note: --batch-size {args.batch_size} is more than the model's "
                        f"max_batch_size {max_batch_size}: using {max_batch_size}",
                        file=sys.stderr,
                    )
                batch_size = min(args.batch_size, max_batch_size)
            results = classify_files(
                client,
                files,
                batch_size=max(batch_size, 1),
                concurrency=args.concurrency,
                top_k=args.top_k,
                max_bytes=args.max_bytes,
            )
    except ClientError as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    if args.json:
        print(json.dumps([r.to_json() for r in results], indent=2))
    else:
        print(format_table(results))
    failed = sum(r.error is not None for r in results)
    if failed:
        print(f"{PROG}: {failed} of {len(results)} files failed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
