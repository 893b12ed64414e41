"""Soak the ``classifier`` endpoint with good and bad images and watch the server's memory.

    python tools/soak.py --model-repository /tmp/repo --requests 20000 --concurrency 4 \\
        --json-out /tmp/soak20k.json
    python tools/soak.py --url http://127.0.0.1:8000 --server-pid 1234 --requests 500
    python tools/soak.py --url grpc://127.0.0.1:8001 --server-pid "$(pgrep -x tritonserver)" \\
        --duration 780 --warmup-seconds 180 --concurrency 8 --images-per-request 64 \\
        --max-growth 5 --json-out /tmp/soak-gpu.json      # 13 minutes at saturation on a GPU
    python tools/soak.py --in-process /tmp/repo --duration 300 --max-growth 5
        # no server: the repository's DALI pipeline and network in this process, memory watched

Success means every good image was classified and every bad one refused with INVALID_ARG
as expected (and RSS, /dev/shm and, where nvidia-smi is, the GPU memory of the server and
each stub grew less than --max-growth percent after the warm-up, when given). RSS is each
process's resident memory less its shared-memory pages, which count once, as /dev/shm. The
warm-up starts with a peak of full batches of the largest photograph (--peak-requests), so
that the pools that keep their high-water mark reach it before the 'warm' reading.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from bls_pipeline.cli.common import EXIT_CODES_HELP, ExitCode, HelpFormatter, report_error
from bls_pipeline.client import DEFAULT_FORM, DEFAULT_IMAGES_PER_REQUEST, DEFAULT_PROTOCOL, FORMS, PROTOCOLS
from bls_pipeline.devtools.soak import (
    CORRUPT_PNG_KIND,
    SoakOptions,
    SoakReport,
    build_samples,
    default_warmup_seconds,
    format_report,
    run_soak,
)
from bls_pipeline.errors import BlsPipelineError


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="soak",
        description="Send many requests, a mix of real photographs and bad images, to the classifier "
        "endpoint; report outcomes by kind, throughput and the server's memory growth after warm-up.",
        formatter_class=HelpFormatter,
        epilog=f"{__doc__}\n{EXIT_CODES_HELP}",
    )
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument(
        "--url",
        help="a running server's endpoint: host:port for the client's default protocol (gRPC), or with http:// or grpc://",
    )
    where.add_argument(
        "--model-repository",
        type=Path,
        help="start a local tritonserver on this repository (free ports on 127.0.0.1) and soak it",
    )
    where.add_argument(
        "--in-process",
        type=Path,
        metavar="REPOSITORY",
        help="no server: run this repository's DALI pipeline and network in this process on batches of every size "
        "up to its max batch, from the soak's photographs (--bad-fraction of them with a corrupt PNG, which fails "
        "the batch and rebuilds the pipeline, as Triton's DALI backend does), and watch this process's memory "
        "(tells their growth from the server's; needs --duration)",
    )
    parser.add_argument(
        "--server-pid",
        type=int,
        help="with --url: the tritonserver's pid, to read its memory (and its stubs') from /proc",
    )
    parser.add_argument("--requests", type=int, default=1000, help="requests to send in all (unless --duration)")
    parser.add_argument("--duration", type=float, help="send for this many seconds instead of a number of requests")
    parser.add_argument(
        "--warmup-seconds",
        type=float,
        help="with --duration: seconds before the 'warm' memory reading (default: 10%% of it, at most 60)",
    )
    parser.add_argument(
        "--sample-interval", type=float, default=10.0, help="with --duration: seconds between memory readings"
    )
    parser.add_argument(
        "--images-per-request",
        type=int,
        default=1,
        help=f"photographs in each good request ({DEFAULT_IMAGES_PER_REQUEST}: the client's default batch)",
    )
    parser.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        help=f"the client's protocol (default: the --url scheme, else {DEFAULT_PROTOCOL})",
    )
    parser.add_argument(
        "--form", choices=FORMS, default=DEFAULT_FORM, help="how the images travel (the client's --form)"
    )
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight at once")
    parser.add_argument("--bad-fraction", type=float, default=0.2, help="share of requests that carry a bad image")
    parser.add_argument(
        "--warmup",
        type=int,
        help="requests before the 'warm' memory reading (default: 10%% of --requests, at most 1000)",
    )
    parser.add_argument(
        "--peak-requests",
        type=int,
        help="requests of the warm-up's peak: the largest photograph, as many copies as the endpoint's "
        "max batch size, 4x --concurrency in flight, so that every classifier instance runs a full batch "
        "before the 'warm' reading (default: two rounds, 8x --concurrency; 0: no peak)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the request mix")
    parser.add_argument(
        "--max-growth",
        type=float,
        help="fail (exit 1) when RSS, /dev/shm or GPU memory (server and stubs) grows more than this many percent after warm-up",
    )
    parser.add_argument("--json-out", type=Path, help="write the report as JSON to this file")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    args = parser.parse_args(argv)
    if args.server_pid is not None and args.url is None:
        parser.error("--server-pid goes with --url (with --model-repository the pid is known)")
    if args.in_process is not None and args.duration is None:
        parser.error("--in-process needs --duration")
    return args


def _in_process(args: argparse.Namespace, progress) -> SoakReport:
    from bls_pipeline.devtools.soak_in_process import InProcessSoakOptions, run_in_process_soak

    options = InProcessSoakOptions(
        duration_s=args.duration,
        warmup_s=args.warmup_seconds if args.warmup_seconds is not None else default_warmup_seconds(args.duration),
        sample_interval_s=args.sample_interval,
        seed=args.seed,
        bad_fraction=args.bad_fraction,
    )
    good, bad = build_samples(args.seed, args.form)
    images = [image for sample in good for image in sample.images]
    corrupt = next(sample.images[0] for sample in bad if sample.kind == CORRUPT_PNG_KIND)
    return run_in_process_soak(args.in_process, images, options, corrupt=corrupt, progress=progress)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    progress = None if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True))
    if args.in_process is not None:
        try:
            report = _in_process(args, progress)
        except ValueError as exc:
            return report_error("soak", exc, ExitCode.USAGE)
        except BlsPipelineError as exc:
            return report_error("soak", exc)
        return _finish(args, report)
    try:
        options = SoakOptions(
            url=args.url or "",
            requests=args.requests,
            concurrency=args.concurrency,
            bad_fraction=args.bad_fraction,
            warmup=args.warmup,
            seed=args.seed,
            duration_s=args.duration,
            warmup_s=args.warmup_seconds,
            sample_interval_s=args.sample_interval,
            images_per_request=args.images_per_request,
            protocol=args.protocol,
            form=args.form,
            peak_requests=args.peak_requests,
        )
    except ValueError as exc:
        return report_error("soak", exc, ExitCode.USAGE)
    samples = build_samples(args.seed, args.form)
    try:
        if args.model_repository is not None:
            from bls_pipeline.server.launcher import LocalTritonServer, ServerOptions

            server_options = ServerOptions(args.model_repository, http_port=0, grpc_port=0, metrics_port=0)
            with LocalTritonServer(server_options) as server:
                options.url = server.url if options.protocol == "http" else server.grpc_url
                assert server.process is not None
                report = run_soak(options, samples, server_pid=server.process.pid, progress=progress)
        else:
            report = run_soak(options, samples, server_pid=args.server_pid, progress=progress)
    except BlsPipelineError as exc:
        return report_error("soak", exc)
    return _finish(args, report)


def _finish(args: argparse.Namespace, report: SoakReport) -> int:
    """Print the report, write its JSON, and the exit code of its outcomes and growth."""
    print(format_report(report, args.max_growth))
    if args.json_out is not None:
        args.json_out.write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    failed = report.unexpected > 0
    if args.max_growth is not None:
        for name, (growth, within) in report.growth_verdicts(args.max_growth).items():
            if not within:
                print(f"soak: {name} grew {growth:.2f} % after warm-up, over {args.max_growth} %", file=sys.stderr)
                failed = True
    if report.unexpected:
        print(f"soak: {report.unexpected} unexpected outcomes", file=sys.stderr)
    return ExitCode.FAILED if failed else ExitCode.OK


if __name__ == "__main__":
    raise SystemExit(main())
