"""Build Triton's own DALI and ONNX Runtime backends for the pip-installed ``tritonserver``.

    python tools/build_backends.py                     # GPU-enabled (serves CPU-only too), cached
    python tools/build_backends.py --no-gpu            # CPU-only build
    python tools/build_backends.py --output /tmp/site/pytriton/tritonserver/backends \\
        --onnxruntime-library libonnxruntime.so.1.26.0  # relocatable copy for another site folder

The first run compiles for about a minute on 2 cores; later runs with the same pytriton, DALI
and ONNX Runtime versions reuse the cached build in seconds. tools/serve.py, the demo and the
tests then serve the repository's DALI and ONNX models on these backends.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bls_pipeline.backends import BuildOptions, build_backends, default_cache, default_sources
from bls_pipeline.cli.common import EXIT_CODES_HELP, ExitCode, HelpFormatter, report_error
from bls_pipeline.errors import BlsPipelineError


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    sources = default_sources()
    parser = argparse.ArgumentParser(
        prog="build_backends",
        description="Build libtriton_dali.so and libtriton_onnxruntime.so from pinned upstream sources "
        "for the installed nvidia-pytriton, nvidia-dali-cuda120 and onnxruntime.",
        formatter_class=HelpFormatter,
        epilog=f"{__doc__}\n{EXIT_CODES_HELP}",
    )
    parser.add_argument(
        "--sources",
        type=Path,
        default=sources,
        help="folder of the pinned source archives (SOURCES.md); default: ../shared/vendor/triton-backends "
        f"when it exists ({'found' if sources else 'not found: the pinned commits are downloaded from GitHub'})",
    )
    parser.add_argument(
        "--download", action="store_true", help="download the pinned commits from GitHub even if --sources exists"
    )
    parser.add_argument(
        "--gpu",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="GPU-enabled build (TRITON_ENABLE_GPU=ON; needs no nvcc, and also serves on CPU-only machines)",
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=default_cache(),
        help="build cache ($BLS_BACKENDS_CACHE overrides the default)",
    )
    parser.add_argument("--rebuild", action="store_true", help="compile again even if a cached build exists")
    parser.add_argument(
        "--output",
        type=Path,
        help="also write a relocatable copy (dali/, onnxruntime/ with $ORIGIN-relative RUNPATHs) for "
        "<site>/pytriton/tritonserver/backends of a site folder where pytriton, nvidia/dali and onnxruntime sit side by side",
    )
    parser.add_argument(
        "--install",
        action="store_true",
        help="also install relocatable copies into this environment's pytriton/tritonserver/backends "
        "(so that a tritonserver started without tools/serve.py finds them)",
    )
    parser.add_argument(
        "--onnxruntime-library",
        metavar="FILE",
        help="with --output: the ONNX Runtime library file of the target site (e.g. libonnxruntime.so.1.26.0 "
        "of onnxruntime-gpu 1.26.0); default: the one installed here",
    )
    args = parser.parse_args(argv)
    if args.onnxruntime_library and not args.output:
        parser.error("--onnxruntime-library needs --output")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.sources is not None and not args.download and not args.sources.is_dir():
        return report_error("build_backends", f"--sources {args.sources} is not a folder", ExitCode.INPUT)
    options = BuildOptions(
        gpu=args.gpu,
        sources=None if args.download else args.sources,
        cache=args.cache_dir,
        output=args.output,
        install=args.install,
        ort_library=args.onnxruntime_library,
        rebuild=args.rebuild,
    )
    try:
        result = build_backends(options, progress=lambda line: print(line, flush=True))
    except (BlsPipelineError, OSError) as exc:
        return report_error("build_backends", exc, ExitCode.FAILED)
    print(f"{'built' if result.compiled else 'cached'}: {result.key.name()}")
    for path in result.installed:
        print(f"  {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
