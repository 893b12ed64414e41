"""Serve a model repository with the ``tritonserver`` of the ``nvidia-pytriton`` wheel.

    python tools/serve.py --model-repository build/model_repository
    python tools/serve.py --http-port 9000 --host 0.0.0.0      # reachable from other machines

Runs until Ctrl-C or SIGTERM, then stops the server and its Python-backend stubs and removes
their shared-memory segments.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path

from bls_pipeline.cli.common import EXIT_CODES_HELP, ExitCode, HelpFormatter, report_error
from bls_pipeline.errors import BlsPipelineError
from bls_pipeline.layout import DEFAULT_REPOSITORY
from bls_pipeline.server.admin import ADMIN_HEADER, KEY_ENV, KEY_FILE_ENV, RESTRICTED_APIS, AdminKeyError, admin_key
from bls_pipeline.server.launcher import LocalTritonServer, ServerOptions, describe_hosting


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="serve",
        description="Run a local Triton server (pip-installed, CPU or GPU) on a model repository "
        "built with tools/build_repo.py --target local.",
        formatter_class=HelpFormatter,
        epilog=EXIT_CODES_HELP,
    )
    parser.add_argument("--model-repository", type=Path, default=DEFAULT_REPOSITORY, help="repository to serve")
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to bind (0.0.0.0 exposes the server to the network)"
    )
    parser.add_argument("--http-port", type=int, default=8000, help="HTTP/REST port (0: pick a free one)")
    parser.add_argument("--grpc-port", type=int, default=8001, help="gRPC port (0: pick a free one)")
    parser.add_argument("--metrics-port", type=int, default=8002, help="Prometheus metrics port (0: pick a free one)")
    parser.add_argument(
        "--startup-timeout", type=float, default=300.0, help="seconds to wait for the server to be ready"
    )
    parser.add_argument(
        "--log-file", type=Path, help="server log file (default: a file in a temporary directory, printed at start)"
    )
    parser.add_argument("--log-verbose", type=int, default=0, help="tritonserver --log-verbose level")
    parser.add_argument(
        "--shm-size-mb",
        type=int,
        default=None,
        help="Python-backend shared memory per model instance (shm-default-byte-size), MiB "
        "(default: sized from the repository's max batch, and printed at start)",
    )
    parser.add_argument(
        "--admin-key-file",
        type=Path,
        help=f"file holding the key of the closed admin APIs (shared memory, trace, logging, model "
        f"repository), sent in the {ADMIN_HEADER} header (default: ${KEY_FILE_ENV} or ${KEY_ENV}; "
        "without them a random key closes those APIs to every client)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        key = admin_key({KEY_FILE_ENV: str(args.admin_key_file)})[0] if args.admin_key_file else None
    except AdminKeyError as exc:
        return report_error("serve", exc, ExitCode.INPUT)
    options = ServerOptions(
        model_repository=args.model_repository,
        host=args.host,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        startup_timeout_s=args.startup_timeout,
        log_path=args.log_file,
        log_verbose=args.log_verbose,
        shm_default_byte_size=args.shm_size_mb * 1024 * 1024 if args.shm_size_mb else None,
        admin_key=key,
    )
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    server = LocalTritonServer(options)
    print(f"starting tritonserver on {args.model_repository} ...", flush=True)
    try:
        server.start()
    except BlsPipelineError as exc:
        return report_error("serve", exc)
    print(describe_hosting(server), flush=True)
    closed = ", ".join(RESTRICTED_APIS)
    if server.admin_key_source == "random":
        print(
            f"admin APIs ({closed}): closed to every client (no --admin-key-file, ${KEY_FILE_ENV} or ${KEY_ENV})",
            flush=True,
        )
    else:
        print(
            f"admin APIs ({closed}): need the {ADMIN_HEADER} header, key from {args.admin_key_file or server.admin_key_source}",
            flush=True,
        )
    try:
        print(f"memory: {server.sizing.describe() if server.sizing else 'Triton defaults'}", flush=True)
        print(
            f"ready: {server.url} (gRPC {server.grpc_url}, metrics "
            f"{options.host}:{options.metrics_port}); log: {server.log_path}; Ctrl-C stops",
            flush=True,
        )
        while not stop.wait(1.0):
            if server.process is None or server.process.poll() is not None:
                print(
                    f"serve: error: tritonserver exited; log {server.log_path}:\n{server.log_tail()}", file=sys.stderr
                )
                return ExitCode.SERVER
    finally:
        print("stopping tritonserver ...", flush=True)
        server.stop()
    print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
