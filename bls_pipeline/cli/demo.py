"""The main job on the embedded default, start to finish (``make demo``).

Builds a ``--target local`` repository from the shipped EfficientNet-Lite0 ImageNet weights
(skipped when one is already built and still fits this checkout, unless ``--rebuild``), starts a local Triton on
127.0.0.1, classifies the bundled sample photos through the ``classifier`` endpoint, and
stops the server.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from bls_pipeline import contract
from bls_pipeline.backends import native_backends_dir
from bls_pipeline.builder import model_config as mc
from bls_pipeline.builder.pipeline import build_repository
from bls_pipeline.builder.repository import read_build_spec
from bls_pipeline.builder.spec import BuildOptions
from bls_pipeline.cli import classify
from bls_pipeline.cli.common import EXIT_CODES_HELP, report_error
from bls_pipeline.client import DEFAULT_PROTOCOL
from bls_pipeline.errors import BlsPipelineError, ConfigError
from bls_pipeline.layout import BUILD_SPEC_FILE, config_path
from bls_pipeline.server.launcher import LocalTritonServer, ServerOptions, describe_hosting

ROOT = Path(__file__).resolve().parents[2]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXIT_CODES_HELP
    )
    parser.add_argument(
        "--repository", type=Path, default=ROOT / "build" / "model_repository", help="where the repository is built"
    )
    parser.add_argument("--rebuild", action="store_true", help="rebuild the repository even if it exists")
    parser.add_argument(
        "images",
        nargs="*",
        default=[os.path.relpath(ROOT / "samples")],
        help="images or folders to classify (default: samples/)",
    )
    return parser.parse_args(argv)


def rebuild_reason(repository: Path) -> str | None:
    """Why the repository in ``repository`` must be built again for this checkout, if it must."""
    config = config_path(repository, mc.CLASSIFIER)
    if not config.is_file():
        return None if not repository.exists() else f"{config} is missing"
    inputs = {tensor.name for tensor in mc.read_config(config).input}
    missing = [tensor.name for tensor in contract.CLASSIFIER_INPUTS if tensor.name not in inputs]
    if missing:
        return f"its classifier predates this version's inputs ({', '.join(missing)} missing)"
    try:
        spec = read_build_spec(repository)
    except ConfigError as exc:
        return str(exc)
    if spec is None:
        return f"it predates this version's {BUILD_SPEC_FILE}"
    if bool(spec.native_models) != (native_backends_dir() is not None):
        return "Triton's own backends were built (or lost) since it was built"
    return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        reason = rebuild_reason(args.repository)
        if reason:
            print(f"rebuilding {args.repository}: {reason}", flush=True)
        if args.rebuild or reason or not config_path(args.repository, mc.CLASSIFIER).is_file():
            build_repository(
                BuildOptions(output=args.repository, force=True), progress=lambda line: print(line, flush=True)
            )
        else:
            print(f"using the repository in {args.repository} (--rebuild to build it again)")
        print("starting a local tritonserver on 127.0.0.1 ...", flush=True)
        with LocalTritonServer(
            ServerOptions(model_repository=args.repository, http_port=0, grpc_port=0, metrics_port=0)
        ) as server:
            print(describe_hosting(server), flush=True)
            print(f"ready at {server.url}; classifying {' '.join(args.images)}", flush=True)
            # The client's default protocol, on whichever port the server picked for it.
            url = server.grpc_url if DEFAULT_PROTOCOL == "grpc" else server.url
            code = classify.main(["--url", url, "--top-k", "3", *args.images])
        print("server stopped")
        return code
    except BlsPipelineError as exc:
        return report_error("demo", exc)


if __name__ == "__main__":
    raise SystemExit(main())
