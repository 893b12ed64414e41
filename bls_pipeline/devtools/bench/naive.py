"""The benchmark's naive baseline: PIL decoding and numpy transforms, one image at a time.

This is what a TorchServe ``image_classifier`` handler does: ``Image.open`` per image,
resize the shorter side, centre-crop, normalize, stack, run the network. It reads the same
``preprocessing.json`` as ``dali.py``, so both paths resize and normalize alike (the filters
differ a little: PIL's antialiased resize is not DALI's, so logits agree only closely).

Example::

    preprocess = PilPreprocessor.from_file(repo / "preprocessing" / "1" / "preprocessing.json")
    batch = np.stack([preprocess(jpeg) for jpeg in images])   # float32 [N, 3, crop, crop]
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from bls_pipeline.networks.preprocessing import PreprocessingSettings

# DALI's interpolation names -> PIL filters; PIL has no "triangular": its antialiased
# bilinear filter is the triangle filter when downscaling.
PIL_FILTERS = {
    "nearest": Image.Resampling.NEAREST,
    "linear": Image.Resampling.BILINEAR,
    "cubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "triangular": Image.Resampling.BILINEAR,
}


def settings_from_json(path: str | os.PathLike[str]) -> PreprocessingSettings:
    """The :class:`PreprocessingSettings` of a ``preprocessing.json`` (extra keys ignored)."""
    data = json.loads(Path(path).read_text())
    return PreprocessingSettings(
        resize_shorter=int(data["resize_shorter"]),
        crop=int(data["crop"]),
        interpolation=data["interpolation"],
        mean=tuple(data["mean"]),
        std=tuple(data["std"]),
    )


@dataclass(frozen=True)
class PilPreprocessor:
    """Encoded bytes -> float32 ``[3, crop, crop]``, the way ``dali.py`` does it, with PIL."""

    settings: PreprocessingSettings

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> PilPreprocessor:
        """From a ``preprocessing.json`` written by the repository build."""
        return cls(settings_from_json(path))

    def __call__(self, image: bytes) -> np.ndarray:
        """Decode, resize the shorter side, centre-crop, normalize; ``OSError`` if undecodable."""
        s = self.settings
        with Image.open(io.BytesIO(image)) as decoded:
            rgb = decoded.convert("RGB")
        width, height = rgb.size
        scale = s.resize_shorter / min(width, height)
        size = (max(s.crop, round(width * scale)), max(s.crop, round(height * scale)))
        resized = rgb.resize(size, PIL_FILTERS[s.interpolation])
        left, top = (size[0] - s.crop) // 2, (size[1] - s.crop) // 2
        cropped = np.asarray(resized.crop((left, top, left + s.crop, top + s.crop)), dtype=np.float32)
        normalized = (cropped - np.asarray(s.mean, np.float32)) / np.asarray(s.std, np.float32)
        return np.ascontiguousarray(normalized.transpose(2, 0, 1))
