"""Classify image files through a running ``classifier`` endpoint and print the top classes.

    python tools/classify.py samples/                          # every image under samples/
    python tools/classify.py cat.jpg 'photos/**/*.png' --top-k 3 --url 127.0.0.1:9001
    python tools/classify.py samples/ --protocol http --form padded   # HTTP, zero-padded rows
    python tools/classify.py samples/ --json > predictions.json
    python tools/classify.py photos/ --jsonl | tee predictions.jsonl   # one line per file, as it completes

The logic lives in :mod:`bls_pipeline.client_files`; this is its command line.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from bls_pipeline.cli.common import (
    EXIT_CODES_HELP,
    ExitCode,
    non_negative_float,
    positive_float,
    positive_int,
    progress_bar,
    report_error,
)
from bls_pipeline.client import (
    DEFAULT_FORM,
    DEFAULT_IMAGES_PER_REQUEST,
    DEFAULT_PORTS,
    DEFAULT_PROTOCOL,
    DEFAULT_REQUESTS_IN_FLIGHT,
    DEFAULT_RETRY_DEADLINE_S,
    FORMS,
    PROTOCOLS,
    ClassifierClient,
    ClientError,
    RetryPolicy,
    endpoint,
)
from bls_pipeline.client_files import (
    IMAGE_EXTENSIONS,
    FileResult,
    PathError,
    classify_files,
    collect_files,
    format_table,
)
from bls_pipeline.request.orchestration import DEFAULT_MAX_IMAGE_BYTES

PROG = "classify"

EPILOG = f"""\
examples:
  classify samples/                                 every image under samples/, recursively
  classify 'photos/**/*.jpg' --top-k 3              a glob (quoted: expanded here, recursively)
  classify cat.jpg --url 10.0.0.5:8001 --json       one JSON document on stdout
  classify cat.jpg --url http://10.0.0.5:8000       HTTP: the scheme names the protocol
  classify photos/ --jsonl > out.jsonl              one JSON object per line, written as files complete

Folders are searched recursively for {" ".join(sorted(IMAGE_EXTENSIONS))} (any case);
files named explicitly are sent whatever their extension. Start a server with
tools/serve.py --model-repository build/model_repository. A progress bar is drawn on
stderr when stderr is a terminal.

{EXIT_CODES_HELP}
"""


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
    parser.add_argument(
        "--url",
        help="the server's address, host:port; a scheme (http://, grpc://) names the protocol "
        f"(default: 127.0.0.1 on Triton's port for the protocol: {DEFAULT_PORTS['grpc']} gRPC, {DEFAULT_PORTS['http']} HTTP)",
    )
    parser.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        help=f"talk to the server over gRPC or HTTP (default: the scheme of --url if it has one, else {DEFAULT_PROTOCOL})",
    )
    parser.add_argument(
        "--form",
        choices=FORMS,
        default=DEFAULT_FORM,
        help="how the images travel: 'bytes' sends each file as it is (IMAGE_BYTES, no padding); "
        "'padded' sends zero-padded rows (IMAGE), each as long as the longest file of its request "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--top-k",
        type=positive_int,
        metavar="K",
        help="classes to show per image, best first (default: the server's default, 5)",
    )
    output = parser.add_mutually_exclusive_group()
    output.add_argument(
        "--json",
        action="store_true",
        help="print one JSON document instead of a table: a list of {file, predictions: "
        "[{class_id, label, probability}]} or {file, error}",
    )
    output.add_argument(
        "--jsonl",
        action="store_true",
        help="print JSON Lines instead of a table: one such object per file, in the order of the "
        "files, each written as soon as its request is answered (for big folders and pipes)",
    )
    parser.add_argument(
        "--batch-size",
        type=positive_int,
        metavar="N",
        help=f"images per request (default: {DEFAULT_IMAGES_PER_REQUEST}, the fastest on a GPU in "
        "docs/performance.md; at most the model's max_batch_size)",
    )
    parser.add_argument(
        "--concurrency",
        type=positive_int,
        default=DEFAULT_REQUESTS_IN_FLIGHT,
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
        "--retry-deadline",
        type=non_negative_float,
        default=DEFAULT_RETRY_DEADLINE_S,
        metavar="SECONDS",
        help="a request that the server sheds (UNAVAILABLE: its queue is full) is retried with "
        "jittered exponential waits for up to this long, then its files are reported as shed "
        "(default: %(default)s; 0: no retries)",
    )
    parser.add_argument(
        "--max-bytes",
        type=positive_int,
        # Larger files would be refused by the server's default limit: not worth sending.
        default=DEFAULT_MAX_IMAGE_BYTES,
        metavar="BYTES",
        help="files larger than this are reported as errors without being sent (default: %(default)s, 16 MiB)",
    )
    return parser


def _batch_size(client: ClassifierClient, requested: int | None) -> int:
    """``requested`` images per request (default :data:`DEFAULT_IMAGES_PER_REQUEST`), at most
    the model's ``max_batch_size``."""
    max_batch_size = max(client.max_batch_size(), 1)
    if requested is not None and requested > max_batch_size:
        print(
            f"{PROG}: note: --batch-size {requested} is more than the model's "
            f"max_batch_size {max_batch_size}: using {max_batch_size}",
            file=sys.stderr,
        )
    return min(DEFAULT_IMAGES_PER_REQUEST if requested is None else requested, max_batch_size)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        endpoint(args.url, args.protocol)
    except ClientError as exc:
        parser.error(str(exc))
    try:
        files = collect_files(args.paths)
    except PathError as exc:
        return report_error(PROG, exc, ExitCode.INPUT)
    results: list[FileResult] = []
    try:
        with ClassifierClient(
            args.url,
            protocol=args.protocol,
            form=args.form,
            concurrency=args.concurrency,
            timeout_s=args.timeout,
            retry=RetryPolicy(deadline_s=args.retry_deadline),
        ) as client:
            client.check_ready()
            batch_size = _batch_size(client, args.batch_size)
            with progress_bar(len(files), "file") as bar:
                for result in classify_files(
                    client,
                    files,
                    batch_size=batch_size,
                    concurrency=args.concurrency,
                    top_k=args.top_k,
                    max_bytes=args.max_bytes,
                ):
                    results.append(result)
                    bar.update()
                    if args.jsonl:
                        print(json.dumps(result.to_json()), flush=True)
    except ClientError as exc:
        return report_error(PROG, exc, ExitCode.SERVER)
    except KeyboardInterrupt as exc:
        return report_error(PROG, exc, ExitCode.INTERRUPTED)
    if args.json:
        print(json.dumps([r.to_json() for r in results], indent=2))
    elif not args.jsonl:
        print(format_table(results))
    failed = sum(r.error is not None for r in results)
    shed = sum(r.shed for r in results)
    if shed:
        print(
            f"{PROG}: {shed} of {len(results)} files shed by a busy server after {args.retry_deadline:g} s "
            "of retries: send them again later (--retry-deadline waits longer)",
            file=sys.stderr,
        )
    if failed > shed:
        print(f"{PROG}: {failed - shed} of {len(results)} files failed", file=sys.stderr)
    if failed:
        return ExitCode.FAILED
    return ExitCode.OK


if __name__ == "__main__":
    raise SystemExit(main())
