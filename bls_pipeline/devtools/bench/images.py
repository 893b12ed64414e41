"""The benchmark's photographs: scikit-image's, rendered as ImageNet-sized JPEGs, or a folder.

Example::

    images = benchmark_images()            # 500x375 JPEG, quality 90
    mixed = varied_images()                # the same photographs at ImageNet's spread of sizes
    mine = load_images(Path("photos/"))
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bls_pipeline.errors import BenchError

# ImageNet's typical photograph: 500x375, JPEG quality 90.
IMAGE_SIZE = (500, 375)
JPEG_QUALITY = 90
# skimage's real photographs (all in the wheel, no download); rendered landscape 500x375.
PHOTO_NAMES = (
    "chelsea",
    "coffee",
    "rocket",
    "astronaut",
    "stereo_motorcycle",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
)
# ImageNet's photographs vary: most near 500x375, some several times larger. One size per
# photograph, so a multi-image request mixes 30 KB and 700 KB files as real ones do
# (mean about 160 KB; the largest sets the padded row length).
VARIED_SIZES = ((500, 375), (400, 300), (640, 480), (500, 333), (1024, 768), (375, 500), (2048, 1536), (800, 600))

# ImageNet-sized photographs: the portrait, landscape and square shapes of its validation set
# and one larger photograph, at quality 96: 55-340 KB (mean about 140 KB), where the
# benchmark's own set is one size and 30-90 KB.
IMAGENET_SIZES = ((500, 375), (375, 500), (500, 333), (333, 500), (500, 500), (640, 480), (800, 600), (1600, 1200))
IMAGENET_QUALITY = 96


@dataclass(frozen=True)
class BenchImage:
    """One encoded image of the fixed set."""

    name: str
    data: bytes
    width: int
    height: int


def _photo(name: str) -> np.ndarray:
    import skimage.data

    image = getattr(skimage.data, name)()
    if isinstance(image, tuple):  # stereo_motorcycle: (left, right, disparity)
        image = image[0]
    return image


def render_photo(array: np.ndarray, size: tuple[int, int] = IMAGE_SIZE, quality: int = JPEG_QUALITY) -> bytes:
    """``array`` scaled to cover ``size`` (Lanczos), centre-cropped to it, as a JPEG.

    Deterministic for a given Pillow: the same pixels and encoder settings every run.
    """
    from PIL import Image

    image = Image.fromarray(array).convert("RGB")
    width, height = image.size
    scale = max(size[0] / width, size[1] / height)
    scaled = image.resize(
        (max(size[0], round(width * scale)), max(size[1], round(height * scale))), Image.Resampling.LANCZOS
    )
    left, top = (scaled.width - size[0]) // 2, (scaled.height - size[1]) // 2
    buffer = io.BytesIO()
    scaled.crop((left, top, left + size[0], top + size[1])).save(buffer, "JPEG", quality=quality, optimize=False)
    return buffer.getvalue()


def benchmark_images(names: Sequence[str] = PHOTO_NAMES, size: tuple[int, int] = IMAGE_SIZE) -> list[BenchImage]:
    """The fixed image set: skimage photographs as ImageNet-sized quality-90 JPEGs."""
    return [BenchImage(name, render_photo(_photo(name), size), *size) for name in names]


def varied_images(names: Sequence[str] = PHOTO_NAMES) -> list[BenchImage]:
    """The fixed photographs at :data:`VARIED_SIZES` (one size each), for the request-form comparison."""
    return [
        BenchImage(name, render_photo(_photo(name), size), *size)
        for name, size in zip(names, VARIED_SIZES * (len(names) // len(VARIED_SIZES) + 1))
    ]


def imagenet_sized_images(names: Sequence[str] = PHOTO_NAMES) -> list[BenchImage]:
    """The fixed photographs at :data:`IMAGENET_SIZES` (one size each), quality 96."""
    return [
        BenchImage(name, render_photo(_photo(name), size, IMAGENET_QUALITY), *size)
        for name, size in zip(names, IMAGENET_SIZES * (len(names) // len(IMAGENET_SIZES) + 1))
    ]


def load_images(directory: Path) -> list[BenchImage]:
    """Every JPEG or PNG file of ``directory``, sorted by name (so the set is fixed)."""
    from PIL import Image

    paths = sorted(p for p in Path(directory).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not paths:
        raise BenchError(f"no .jpg, .jpeg or .png files in {directory}")
    images = []
    for path in paths:
        data = path.read_bytes()
        with Image.open(io.BytesIO(data)) as image:
            images.append(BenchImage(path.name, data, *image.size))
    return images
