"""The DALI preprocessing pipeline of the ``preprocessing`` model.

This file must stay self-contained (it imports only DALI and the standard library): the
NVIDIA Triton container's DALI backend autoserializes it without ``bls_pipeline`` installed.
The values that depend on the served weights (sizes, interpolation, mean, std, decoder
device) come from ``preprocessing.json`` beside the file, written by ``tools/build_repo.py``;
without that file the defaults below, which match the shipped EfficientNet-Lite0 weights,
apply.

Example (in process, CPU)::

    pipe = preprocessing(batch_size=8, num_threads=2, device_id=None, prefetch_queue_depth=1,
                         decoder_device="cpu")
    pipe.build()
    pipe.feed_input("DALI_INPUT", [np.frombuffer(jpeg_bytes, np.uint8)])
    (images,) = pipe.run()   # float32 [N, 3, crop, crop]
"""

from __future__ import annotations

import json
from pathlib import Path

from nvidia.dali import fn, pipeline_def, types
from nvidia.dali.plugin.triton import autoserialize

INPUT_NAME = "DALI_INPUT"
# The output's name: with Model Autoconfiguration the DALI backend names the output after it.
OUTPUT_NAME = "DALI_OUTPUT"
SETTINGS_FILE = "preprocessing.json"

# EfficientNet-Lite0 (TF reference preprocessing): resize the shorter side to
# crop + 32, bilinear, centre crop, then (x - 127) / 128 on 0..255 pixels.
DEFAULT_SETTINGS: dict = {
    "resize_shorter": 256,
    "crop": 224,
    "interpolation": "linear",
    "mean": [127.0, 127.0, 127.0],
    "std": [128.0, 128.0, 128.0],
    # tools/build_repo.py writes "mixed" for --device gpu; without its file, the CPU works anywhere.
    "decoder_device": "cpu",
    "max_batch_size": 64,
    "num_threads": 4,
    # Share of the mixed decoder's JPEGs sent to the GPU's hardware JPEG engine (DALI's own
    # default is 0.65; the rest are decoded by CUDA with CPU-side Huffman decoding).
    "hw_decoder_load": 0.65,
}

INTERPOLATIONS = {
    "nearest": types.INTERP_NN,
    "linear": types.INTERP_LINEAR,
    "cubic": types.INTERP_CUBIC,
    "lanczos": types.INTERP_LANCZOS3,
    "triangular": types.INTERP_TRIANGULAR,
}


def load_settings(directory: Path | None = None) -> dict:
    """The preprocessing settings: ``DEFAULT_SETTINGS`` updated by ``preprocessing.json``."""
    settings = dict(DEFAULT_SETTINGS)
    path = (directory or Path(__file__).resolve().parent) / SETTINGS_FILE
    if path.is_file():
        settings.update(json.loads(path.read_text()))
    return settings


_SETTINGS = load_settings()


def _decode_on_gpu(encoded, hw_decoder_load: float):
    """JPEGs on the GPU (nvJPEG, hardware decoder first), every other format on the CPU.

    The mixed decoder decodes what nvImageCodec's GPU and CPU extensions can; the PyPI build
    (0.9) has none for PNG or WebP, so with the mixed decoder alone a valid PNG "fails to
    decode" (measured on an H100). The batch is split on the JPEG start marker instead (the
    classifier has checked every image's format) and merged on the GPU.
    """
    if (encoded[0] == 0xFF) & (encoded[1] == 0xD8):
        images = fn.decoders.image(encoded, device="mixed", output_type=types.RGB, hw_decoder_load=hw_decoder_load)
    else:
        images = fn.decoders.image(encoded, device="cpu", output_type=types.RGB).gpu()
    return images


@autoserialize
@pipeline_def(
    batch_size=_SETTINGS["max_batch_size"],
    num_threads=_SETTINGS["num_threads"],
    # A CPU pipeline has no device: the DALI backend refuses device 0 where there is no CUDA.
    device_id=None if _SETTINGS["decoder_device"] == "cpu" else 0,
    output_dtype=types.FLOAT,
    output_ndim=3,
    # Splits a GPU batch by format (_decode_on_gpu); a CPU pipeline has no condition in it.
    enable_conditionals=True,
)
def preprocessing(
    resize_shorter: int = _SETTINGS["resize_shorter"],
    crop: int = _SETTINGS["crop"],
    interpolation: str = _SETTINGS["interpolation"],
    mean: list = _SETTINGS["mean"],
    std: list = _SETTINGS["std"],
    decoder_device: str = _SETTINGS["decoder_device"],
    hw_decoder_load: float = _SETTINGS["hw_decoder_load"],
):
    """Encoded image bytes -> normalized float32 CHW ``[3, crop, crop]`` per sample."""
    encoded = fn.external_source(name=INPUT_NAME, dtype=types.UINT8, ndim=1)
    if decoder_device == "mixed":
        images = _decode_on_gpu(encoded, hw_decoder_load)
    else:
        images = fn.decoders.image(encoded, device="cpu", output_type=types.RGB)
    images = fn.resize(
        images,
        resize_shorter=resize_shorter,
        interp_type=INTERPOLATIONS[interpolation],
        antialias=True,
    )
    return fn.crop_mirror_normalize(
        images,
        dtype=types.FLOAT,
        output_layout="CHW",
        crop=(crop, crop),
        crop_pos_x=0.5,
        crop_pos_y=0.5,
        mean=mean,
        std=std,
        name=OUTPUT_NAME,
    )
