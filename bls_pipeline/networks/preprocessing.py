"""The preprocessing that a network's weights expect, in one place.

:class:`PreprocessingSettings` describes what the DALI pipeline (``preprocessing/1/dali.py``)
does to an encoded image: resize the shorter side to ``resize_shorter`` with
``interpolation``, centre-crop ``crop`` x ``crop``, then ``(pixel - mean) / std`` per RGB
channel on 0..255 pixels. Each architecture's values live in its
:class:`bls_pipeline.checkpoints.ArchSpec`; the repository build writes them to
``preprocessing.json`` beside ``dali.py``.

This module is light on purpose (standard library only, no torch or DALI), so that the
build, the tests and the Triton-side code can all import it.

Example::

    from dataclasses import replace
    from bls_pipeline.networks.preprocessing import IMAGENET_MEAN, IMAGENET_STD, PreprocessingSettings

    settings = PreprocessingSettings(interpolation="cubic", mean=IMAGENET_MEAN, std=IMAGENET_STD)
    bigger = replace(settings, resize_shorter=320, crop=288)   # validated again
"""

from __future__ import annotations

from dataclasses import dataclass

from bls_pipeline.errors import ConfigError

# The interpolation names of DALI's fn.resize, as dali.py maps them to ``types.INTERP_*``.
INTERPOLATIONS = ("nearest", "linear", "cubic", "lanczos", "triangular")

# ImageNet statistics on 0..255 pixels, the convention of torchvision and NVIDIA DLE.
IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)
# TensorFlow's EfficientNet-Lite ("inception style", chosen upstream for quantization), on
# 0..255 pixels: (x - 127) / 128.
TF_LITE_MEAN = (127.0, 127.0, 127.0)
TF_LITE_STD = (128.0, 128.0, 128.0)


@dataclass(frozen=True)
class PreprocessingSettings:
    """What the DALI pipeline does; must match the served weights' training validation.

    ``interpolation`` is one of DALI's names (:data:`INTERPOLATIONS`); ``mean`` and ``std``
    apply to RGB pixels in 0..255. Invalid values raise :class:`ConfigError`.
    """

    resize_shorter: int = 256
    crop: int = 224
    interpolation: str = "linear"
    mean: tuple[float, float, float] = TF_LITE_MEAN
    std: tuple[float, float, float] = TF_LITE_STD

    def __post_init__(self) -> None:
        if not 0 < self.crop <= self.resize_shorter:
            raise ConfigError(f"crop ({self.crop}) must be positive and at most resize_shorter ({self.resize_shorter})")
        if self.interpolation not in INTERPOLATIONS:
            raise ConfigError(
                f"unknown interpolation {self.interpolation!r}: expected one of {', '.join(INTERPOLATIONS)}"
            )
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ConfigError("mean and std need three values each, std positive")
        # Lists (from JSON or argparse) become tuples, so that settings stay hashable and
        # compare equal whatever they were built from.
        object.__setattr__(self, "mean", tuple(float(value) for value in self.mean))
        object.__setattr__(self, "std", tuple(float(value) for value in self.std))
