"""How many replicas for N images/s at a p99 under T ms, from a benchmark's JSON.

    python tools/capacity.py --images-per-s 1000 --p99-ms 150                 # docs/measurements/2026-11-25-cpu-benchmark.json
    python tools/capacity.py bench.json --images-per-s 20000 --p99-ms 100 --spare 2
    python tools/capacity.py --point 2108:468 --point 1648:120 --images-per-s 20000 --p99-ms 200

Exit codes: 0 a plan was printed; 3 the file cannot be used or no point meets the target;
2 a usage error.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from bls_pipeline.cli.common import EXIT_CODES_HELP, ExitCode, HelpFormatter, positive_float, report_error
from bls_pipeline.devtools.capacity import (
    DEFAULT_ENDPOINT,
    DEFAULT_UTILIZATION,
    OperatingPoint,
    describe,
    operating_points,
    plan_capacity,
)
from bls_pipeline.errors import CapacityError

PROG = "capacity"
DEFAULT_BENCHMARK = Path("docs/measurements/2026-11-25-cpu-benchmark.json")


def _point(text: str) -> OperatingPoint:
    try:
        images_per_s, p99_ms = (float(part) for part in text.split(":"))
        return OperatingPoint(images_per_s=images_per_s, p99_ms=p99_ms)
    except (ValueError, CapacityError):
        raise argparse.ArgumentTypeError(f"expected IMAGES_PER_S:P99_MS (both positive), got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (tests read its flags)."""
    parser = argparse.ArgumentParser(
        prog=PROG, description=__doc__, epilog=EXIT_CODES_HELP, formatter_class=HelpFormatter
    )
    parser.add_argument(
        "benchmark",
        nargs="?",
        type=Path,
        help=f"JSON written by tools/bench.py --json-out (default: {DEFAULT_BENCHMARK}, unless --point is given)",
    )
    parser.add_argument(
        "--images-per-s", type=positive_float, required=True, help="the rate to serve, images per second"
    )
    parser.add_argument(
        "--p99-ms", type=positive_float, required=True, help="the 99th-percentile latency each replica must stay under"
    )
    parser.add_argument("--endpoint", default=DEFAULT_ENDPOINT, help="which endpoint of the benchmark to plan for")
    parser.add_argument(
        "--point",
        type=_point,
        action="append",
        metavar="IMAGES_PER_S:P99_MS",
        help="a replica's measured operating point, instead of a benchmark file (repeatable)",
    )
    parser.add_argument(
        "--utilization",
        type=positive_float,
        default=DEFAULT_UTILIZATION,
        help="the fraction of a replica's measured rate to plan for (headroom for bursts and scaling)",
    )
    parser.add_argument("--spare", type=int, default=1, help="replicas added for a node lost or drained")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.point and args.benchmark:
        parser.error("give a benchmark file or --point, not both")
    try:
        if args.point:
            points = args.point
        else:
            path = args.benchmark or DEFAULT_BENCHMARK
            try:
                benchmark = json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                raise CapacityError(f"cannot read {path}: {exc}") from None
            points = operating_points(benchmark, args.endpoint)
        plan = plan_capacity(
            points, images_per_s=args.images_per_s, p99_ms=args.p99_ms, utilization=args.utilization, spare=args.spare
        )
    except CapacityError as exc:
        return report_error(PROG, exc, ExitCode.INPUT)
    if args.json:
        print(
            json.dumps(
                {
                    "replicas": plan.replicas,
                    "spare": plan.spare,
                    "per_replica_images_per_s": plan.per_replica_images_per_s,
                    "point": {
                        "images_per_s": plan.point.images_per_s,
                        "p99_ms": plan.point.p99_ms,
                        "concurrency": plan.point.concurrency,
                    },
                },
                indent=2,
            )
        )
    else:
        print(describe(plan))
    return ExitCode.OK


if __name__ == "__main__":
    raise SystemExit(main())
