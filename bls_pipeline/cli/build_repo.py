"""Build a Triton model repository for the ``classifier`` endpoint from a checkpoint.

    python tools/build_repo.py                         # shipped EfficientNet-Lite0, local target
    python tools/build_repo.py --checkpoint ckpt.pth --arch efficientnet-b0 \\
        --target triton --output /models --force
    python tools/build_repo.py --dali-pipeline train.py:validation_pipe \\
        --pipeline-arg image_size=256 --pipeline-arg image_crop=224 \\
        --pipeline-arg interpolation=types.INTERP_LINEAR --pipeline-arg output_layout="'CHW'"
                                                       # your training script's pipeline (imported: runs its code)
    python tools/build_repo.py --from-repository model_repository --output adopted
                                                       # the classifier in front of your own repository's models
    python tools/build_repo.py --network effnet.onnx   # your exported network instead of a checkpoint

Every flag is a knob of bls_pipeline.builder.spec; the build writes them, resolved for its
device, into the repository as bls_build.json.
"""

from __future__ import annotations

import argparse
import logging

from bls_pipeline.builder.pipeline import build_repository, resolve_device
from bls_pipeline.builder.spec import BuildOptions, add_build_arguments, options_from_args
from bls_pipeline.builder.user_pipeline import UserPipelineError
from bls_pipeline.cli.common import EXIT_CODES_HELP, ExitCode, HelpFormatter, report_error
from bls_pipeline.contract import CLASSIFIER
from bls_pipeline.errors import BlsPipelineError


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="build_repo",
        description="Turn a torch.save checkpoint into a ready Triton model repository "
        "(classifier BLS model + DALI preprocessing + EfficientNet).",
        formatter_class=HelpFormatter,
        epilog=f"{__doc__}\n{EXIT_CODES_HELP}",
    )
    add_build_arguments(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    options = options_from_args(parse_args(argv))
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    problem = options.usage_error()
    if problem:
        return report_error("build_repo", UserPipelineError(problem), ExitCode.USAGE)
    if options.from_repository:
        return adopt(options)
    try:
        report = build_repository(options, progress=lambda line: print(line, flush=True))
    except (BlsPipelineError, OSError) as exc:
        return report_error("build_repo", exc, ExitCode.INPUT)
    spec, user = report.spec, report.spec.user_pipeline
    p = spec.preprocessing
    described = (
        f"{user.source} (served as model.dali, {user.decoder_device} decoder), output float32 {list(user.output_shape)}, "
        f"equal to the original on {user.samples} photographs (max abs diff {user.max_abs_diff:g})"
        if user
        else f"resize shorter side to {p.resize_shorter} ({p.interpolation}), crop {p.crop}, "
        f"mean {list(p.mean)}, std {list(p.std)}"
    )
    checked = report.network_file or f"ONNX within {report.onnx_max_abs_diff:.1e} of torch"
    print(
        f"built {report.output} ({spec.target}, {spec.device}): {spec.num_classes} classes, network on {spec.runtime}, "
        f"{checked}\n"
        f"preprocessing: {described}\n{report.tensorrt_note}\n"
        + "\n".join(choice.describe(model) for model, choice in report.hosting.items())
    )
    return ExitCode.OK


def adopt(options: BuildOptions) -> int:
    """``--from-repository``: the classifier in front of the user's own models (docs/adopt.md)."""
    from bls_pipeline.backends import native_backends_dir
    from bls_pipeline.builder.adopt import AdoptOptions, adopt_repository

    device, reason = resolve_device(options.device)
    print(f"device: {device} ({reason})", flush=True)
    limits = {name: getattr(options, name) for name in ("max_image_bytes", "max_image_pixels", "max_request_bytes")}
    try:
        adopted = AdoptOptions(
            source=options.from_repository,
            output=options.output,
            ensemble=options.ensemble,
            keep_ensemble=options.keep_ensemble,
            target=options.target,
            device=device,
            hosting=options.hosting,
            labels=options.labels,
            max_batch_size=options.max_batch_size,
            classifier_instances=options.tuned(device)["classifier_instances"],
            force=options.force,
            limits={name: value for name, value in limits.items() if value is not None},
        )
        report = adopt_repository(
            adopted,
            progress=lambda line: print(line, flush=True),
            backends_built=options.target == "local" and native_backends_dir() is not None,
        )
    except (BlsPipelineError, OSError) as exc:
        return report_error("build_repo", exc, ExitCode.INPUT)
    print(
        f"adopted {report.found.directory} into {options.output} ({options.target}, {device}): serve it and call {CLASSIFIER!r}"
    )
    return ExitCode.OK


if __name__ == "__main__":
    raise SystemExit(main())
