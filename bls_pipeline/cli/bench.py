"""Benchmark the ``classifier`` BLS endpoint against its in-process limit, a Triton
ensemble of the same models and a naive PIL baseline.

    python tools/build_repo.py --output build/model_repository --force
    python tools/bench.py --json-out bench.json --plot bench.png
    python tools/bench.py --quick                      # CI-sized
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from bls_pipeline import contract
from bls_pipeline.cli.common import EXIT_CODES_HELP, report_error
from bls_pipeline.devtools.bench.gpu import (
    DEFAULT_GPU_CONCURRENCIES,
    GpuBenchOptions,
    format_gpu_table,
    run_gpu_benchmark,
)
from bls_pipeline.devtools.bench.images import benchmark_images, load_images
from bls_pipeline.devtools.bench.report import (
    format_table,
    perf_analyzer_command,
    perf_analyzer_data,
    plot_result,
    write_json,
)
from bls_pipeline.devtools.bench.run import DEFAULT_CONCURRENCIES, ENDPOINT_KEYS, BenchOptions, run_benchmark
from bls_pipeline.errors import BenchError, BlsPipelineError
from bls_pipeline.layout import DEFAULT_REPOSITORY

EPILOG = f"""
perf_analyzer (needs glibc >= 2.38; PyPI perf-analyzer) against a running server, with the
same photographs, one unpadded image per request:

  python tools/bench.py --write-perf-analyzer-data classifier_data.json
  python tools/serve.py --model-repository build/model_repository &
  {perf_analyzer_command("classifier_data.json")}

See docs/performance.md for what each number means and what was tried to make it fast.
"""


def _concurrencies(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("concurrencies must be positive")
    return values


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench",
        description="Measure DALI and the network in process (serial, and pipelined: the limit), then the classifier (BLS), an ensemble of "
        "the same models and a naive PIL model over HTTP on a local tritonserver; print a table and "
        "the ratios BLS/in-process, BLS/ensemble, BLS/naive.",
        epilog=f"{EPILOG}\n{EXIT_CODES_HELP}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--repository",
        type=Path,
        default=DEFAULT_REPOSITORY,
        help=f"a --target local repository built by tools/build_repo.py (default {DEFAULT_REPOSITORY}); "
        "it is copied, never changed",
    )
    parser.add_argument(
        "--images",
        type=Path,
        help="a directory of .jpg/.png files to use instead of the built-in set (8 skimage photographs "
        "as 500x375 JPEGs, quality 90)",
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="measurements of everything; the median is reported (default 3)"
    )
    parser.add_argument(
        "--concurrency",
        type=_concurrencies,
        default=DEFAULT_CONCURRENCIES,
        help=f"comma-separated requests in flight (default {','.join(map(str, DEFAULT_CONCURRENCIES))})",
    )
    parser.add_argument("--duration", type=float, default=5.0, help="seconds of each measurement window (default 5)")
    parser.add_argument("--warmup", type=float, default=1.5, help="seconds of load before each window (default 1.5)")
    parser.add_argument(
        "--endpoints",
        default=",".join(ENDPOINT_KEYS),
        help="comma-separated endpoints to load: bls, ensemble, naive, bls_native, ensemble_native (default all; "
        "ratios need the first three; the native ones only run where tools/build_backends.py built Triton's backends)",
    )
    parser.add_argument(
        "--images-per-request",
        type=int,
        default=1,
        help="images in each request of every endpoint (in --request-form); 1 is a client per image, "
        "more is what tools/classify.py does with a folder",
    )
    parser.add_argument(
        "--request-form",
        choices=tuple(contract.FORMS),
        default=contract.PADDED_FORM,
        help="input form of every request: 'padded' zero-padded IMAGE rows (default: keeps the CPU numbers "
        "comparable), or 'bytes' one unpadded IMAGE_BYTES element per image (classifier and naive only: "
        "the ensembles take padded rows)",
    )
    parser.add_argument("--quick", action="store_true", help="CI-sized run: 1 repeat, concurrency 1 and 4, 1 s windows")
    parser.add_argument("--json-out", type=Path, help="write the full result as JSON here")
    parser.add_argument("--plot", type=Path, help="write a PNG of throughput and latency against concurrency here")
    parser.add_argument("--server-log", type=Path, help="keep the tritonserver log here")
    parser.add_argument(
        "--write-perf-analyzer-data",
        type=Path,
        metavar="FILE",
        help="write perf_analyzer --input-data JSON (one image per request) to FILE and exit",
    )
    parser.add_argument(
        "--gpu",
        action="store_true",
        help="the GPU benchmark (docs/performance.md) of a --device gpu repository: the in-process limit "
        "(DALI mixed decoder into the torch CUDA-graph network), then classifier_native, its ensemble "
        "and the Python-hosted classifier under perf_analyzer over gRPC and HTTP "
        f"(--concurrency default {','.join(map(str, DEFAULT_GPU_CONCURRENCIES))}), with the classifier's own "
        "stage times; each sub-model served alone at concurrency 1 (where one image's latency goes); then "
        "the request forms (padded IMAGE rows vs IMAGE_BYTES, several images per request) through the project's client",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log the package's INFO messages")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        images = load_images(args.images) if args.images else benchmark_images()
        if args.write_perf_analyzer_data:
            args.write_perf_analyzer_data.write_text(json.dumps(perf_analyzer_data(images)) + "\n")
            print(f"wrote {len(images)} images, one per request, to {args.write_perf_analyzer_data}; run:")
            print(perf_analyzer_command(str(args.write_perf_analyzer_data)))
            return 0
        if args.gpu:
            return _gpu_main(args, images)
        endpoints = tuple(part.strip() for part in args.endpoints.split(",") if part.strip())
        unknown = set(endpoints) - set(ENDPOINT_KEYS)
        if unknown or not endpoints:
            raise BenchError(f"unknown endpoints {sorted(unknown)}: choose among {', '.join(ENDPOINT_KEYS)}")
        if args.quick:
            options = BenchOptions.quick_options(
                args.repository,
                server_log=args.server_log,
                endpoints=endpoints,
                images_per_request=args.images_per_request,
                request_form=args.request_form,
            )
        else:
            options = BenchOptions(
                repository=args.repository,
                repeats=args.repeats,
                concurrencies=args.concurrency,
                duration_s=args.duration,
                warmup_s=args.warmup,
                server_log=args.server_log,
                endpoints=endpoints,
                images_per_request=args.images_per_request,
                request_form=args.request_form,
            )
        result = run_benchmark(options, images, progress=lambda line: print(line, file=sys.stderr, flush=True))
    except (BlsPipelineError, OSError) as exc:
        return report_error("bench", exc)
    print(format_table(result))
    if args.json_out:
        write_json(result, args.json_out)
        print(f"wrote {args.json_out}")
    if args.plot:
        plot_result(result, args.plot)
        print(f"wrote {args.plot}")
    return 0


def _gpu_main(args: argparse.Namespace, images) -> int:
    options = GpuBenchOptions(
        repository=args.repository,
        server_log=args.server_log,
        **({"concurrencies": args.concurrency} if args.concurrency != DEFAULT_CONCURRENCIES else {}),
    )
    result = run_gpu_benchmark(options, images, progress=lambda line: print(line, file=sys.stderr, flush=True))
    if args.json_out:
        write_json(result, args.json_out)
        print(f"wrote {args.json_out}")
    print(format_gpu_table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
