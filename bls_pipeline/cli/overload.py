"""Measure how the classifier sheds load: capacity closed-loop, then open-loop at several times it.

    python tools/overload.py --model-repository build/model_repository --multiples 2 4 --duration 20
    python tools/overload.py --model-repository build/model_repository --max-queue-size 16 --queue-timeout-ms 500
    python tools/overload.py --url 127.0.0.1:8001 --rate 200 --duration 30 --json-out overload.json
    python tools/overload.py --url 127.0.0.1:8001 --rate 2000 --max-in-flight 2048   # a GPU server (queue of 512)

For each offered rate it prints how every request ended (classified, shed with UNAVAILABLE
and why, failed otherwise, never answered) with latencies by outcome, then the capacity
measured again right after the overload. --max-queue-size and --queue-timeout-ms serve a
copy of the repository with the classifier's queue policy changed (to choose the defaults
that tools/build_repo.py writes; docs/overload-and-security.md). To overload a server, the
open loop needs more senders (--max-in-flight) than the server holds requests (its queue and
its executions); where it has fewer, the excess waits in this process, and the report's
"late sends" and note say so.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
from pathlib import Path

from bls_pipeline.builder.repository import change_queue_policy
from bls_pipeline.cli.common import EXIT_CODES_HELP, ExitCode, HelpFormatter, positive_float, positive_int, report_error
from bls_pipeline.devtools.overload import closed_loop, format_report, open_loop
from bls_pipeline.devtools.soak import PHOTOS, build_samples
from bls_pipeline.errors import BlsPipelineError


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="overload",
        description=__doc__.split("\n\n")[0],
        formatter_class=HelpFormatter,
        epilog=f"{__doc__.split(chr(10) * 2, 1)[1]}\n{EXIT_CODES_HELP}",
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--url", help="a running server's gRPC endpoint, host:port")
    where.add_argument("--model-repository", type=Path, help="start a local server on this repository (free ports)")
    parser.add_argument(
        "--max-queue-size", type=int, help="with --model-repository: serve a copy with this classifier max_queue_size"
    )
    parser.add_argument(
        "--queue-timeout-ms", type=int, help="with --model-repository: serve a copy with this queue timeout"
    )
    parser.add_argument(
        "--multiples",
        type=positive_float,
        nargs="+",
        default=[4.0],
        help="offered rates, as multiples of the measured capacity",
    )
    parser.add_argument("--rate", type=positive_float, help="one offered rate in requests/s instead of --multiples")
    parser.add_argument("--duration", type=positive_float, default=20.0, help="seconds of each open-loop run")
    parser.add_argument(
        "--capacity-duration", type=positive_float, default=10.0, help="seconds of each closed-loop capacity run"
    )
    parser.add_argument("--concurrency", type=positive_int, default=8, help="senders of the closed-loop capacity runs")
    parser.add_argument(
        "--max-in-flight",
        type=positive_int,
        default=512,
        help="sender threads of the open-loop runs: more than the server can hold (queue and executions), "
        "or the excess waits here and the report says the generator fell behind",
    )
    parser.add_argument("--json-out", type=Path, help="write every run's summary as JSON")
    args = parser.parse_args(argv)
    if args.url is None and args.model_repository is None:
        parser.error("one of --url or --model-repository is required")
    if (args.max_queue_size is not None or args.queue_timeout_ms is not None) and args.model_repository is None:
        parser.error("--max-queue-size and --queue-timeout-ms go with --model-repository")
    return args


def measure(url: str, args: argparse.Namespace, queue: dict) -> dict:
    good, _ = build_samples()
    requests = [sample.images for sample in good]
    capacity = closed_loop(url, requests, concurrency=args.concurrency, duration_s=args.capacity_duration)
    print(format_report(capacity, "capacity before"), flush=True)
    rates = [args.rate] if args.rate else [m * capacity.throughput_rps for m in args.multiples]
    runs = []
    for rate in rates:
        report = open_loop(url, requests, rate_rps=rate, duration_s=args.duration, max_in_flight=args.max_in_flight)
        print(
            format_report(report, f"\nopen loop at {rate / max(capacity.throughput_rps, 1e-9):.1f}x capacity"),
            flush=True,
        )
        runs.append(report.to_dict())
    after = closed_loop(url, requests, concurrency=args.concurrency, duration_s=args.capacity_duration)
    print(format_report(after, "\ncapacity right after"), flush=True)
    return {
        "queue": queue,
        "photos": list(PHOTOS),
        "capacity_before": capacity.to_dict(),
        "open_loop": runs,
        "capacity_after": after.to_dict(),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.model_repository is None:
            result = measure(args.url, args, {})
        else:
            from bls_pipeline.server.launcher import LocalTritonServer, ServerOptions

            with tempfile.TemporaryDirectory(prefix="overload-") as workdir:
                repository = Path(workdir) / "model_repository"
                shutil.copytree(args.model_repository, repository, symlinks=True)
                policy = change_queue_policy(
                    repository, max_queue_size=args.max_queue_size, timeout_ms=args.queue_timeout_ms
                )
                queue = {"max_queue_size": policy.max_queue_size, "timeout_ms": policy.timeout_ms}
                print(f"classifier queue: {queue}", flush=True)
                with LocalTritonServer(ServerOptions(repository, http_port=0, grpc_port=0, metrics_port=0)) as server:
                    result = measure(server.grpc_url, args, queue)
    except (BlsPipelineError, ValueError) as exc:
        return report_error("overload", exc)
    if args.json_out is not None:
        args.json_out.write_text(json.dumps(result, indent=2) + "\n")
    lost = sum(run["lost"] for run in result["open_loop"])
    if lost:
        print(f"overload: {lost} requests were never answered", file=sys.stderr)
        return ExitCode.FAILED
    return ExitCode.OK


if __name__ == "__main__":
    raise SystemExit(main())
