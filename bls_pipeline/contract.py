"""The contract between the client, the ``classifier`` endpoint and its two sub-models.

Model names, tensor names, data types and per-image dims, in one place: the configs
(:mod:`bls_pipeline.builder.model_config`), the Triton adapters, the client, the ONNX export
and the benchmark all import them from here. Standard library only, because the classifier
imports it inside the NVIDIA Triton container. ``preprocessing/1/dali.py`` keeps its own copy
of ``DALI_INPUT`` (the DALI backend loads that file without this package); a test holds the
two equal.

Example::

    from bls_pipeline import contract

    contract.IMAGE.config()                 # {"name": "IMAGE", "data_type": "TYPE_UINT8", "dims": [-1]}
    contract.FORMS["bytes"].datatype        # "BYTES": the IMAGE_BYTES input
    contract.preprocessed(contract.DALI_OUTPUT, crop=224).dims   # (3, 224, 224)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Models.
CLASSIFIER = "classifier"
PREPROCESSING = "preprocessing"
NETWORK = "efficientnet-b0"

# The endpoint: encoded image bytes in, in one of two forms (IMAGE, IMAGE_BYTES below), top-k out.
IMAGE_INPUT = "IMAGE"
IMAGE_BYTES_INPUT = "IMAGE_BYTES"
SCORES_OUTPUT = "SCORES"
CLASS_IDS_OUTPUT = "CLASS_IDS"
LABELS_OUTPUT = "LABELS"
# The full softmax, for Triton's classification extension (class_count): "score:index:label".
PROBABILITIES_OUTPUT = "PROBABILITIES"
# The sub-models: bytes -> preprocessed CHW images -> logits.
DALI_INPUT = "DALI_INPUT"
DALI_OUTPUT = "DALI_OUTPUT"
NETWORK_INPUT = "INPUT"
NETWORK_OUTPUT = "OUTPUT"

# Preprocessed images are float32 CHW with three (RGB) channels.
CHANNELS = 3


@dataclass(frozen=True)
class TensorSpec:
    """One input or output: its name, the config's data type and its dims per image (``-1``: any)."""

    name: str
    data_type: str
    dims: tuple[int, ...]

    @property
    def datatype(self) -> str:
        """The inference protocol's name of the type (``"UINT8"``, ``"FP32"``, ``"BYTES"``), as clients send it."""
        name = self.data_type.removeprefix("TYPE_")
        return "BYTES" if name == "STRING" else name

    def config(self) -> dict[str, Any]:
        """The JSON form of a model config's ``input``/``output`` entry."""
        return {"name": self.name, "data_type": self.data_type, "dims": list(self.dims)}


# The padded form: one uint8 row per image, zero-padded on the right to the longest file.
IMAGE = TensorSpec(IMAGE_INPUT, "TYPE_UINT8", (-1,))
# The waste-free form: one BYTES element per image, shape [N, 1], each element one encoded file
# as it is. Padded rows carry the longest file's length for every image (a 64-image request of
# varied photographs: 20-39 MB for 7 MB of JPEG); Triton serializes BYTES elements with a
# length prefix each instead, so nothing is padded and nothing needs trimming. The batch
# dimension still counts images, so max_batch_size and dynamic batching keep their meaning.
IMAGE_BYTES = TensorSpec(IMAGE_BYTES_INPUT, "TYPE_STRING", (1,))
# Both are optional in the config: a request carries exactly one of them.
CLASSIFIER_INPUTS = (IMAGE, IMAGE_BYTES)
# The two forms by the name clients choose them with.
PADDED_FORM = "padded"
BYTES_FORM = "bytes"
FORMS = {PADDED_FORM: IMAGE, BYTES_FORM: IMAGE_BYTES}
# Per image [K], K = the request's top_k.
SCORES = TensorSpec(SCORES_OUTPUT, "TYPE_FP32", (-1,))
CLASS_IDS = TensorSpec(CLASS_IDS_OUTPUT, "TYPE_INT64", (-1,))
LABELS = TensorSpec(LABELS_OUTPUT, "TYPE_STRING", (-1,))
CLASSIFIER_OUTPUTS = (SCORES, CLASS_IDS, LABELS)
ENCODED = TensorSpec(DALI_INPUT, "TYPE_UINT8", (-1,))


def preprocessed(name: str, crop: int) -> TensorSpec:
    """The preprocessing output / network input ``name``: float32 ``[3, crop, crop]``."""
    return TensorSpec(name, "TYPE_FP32", (CHANNELS, crop, crop))


def logits(num_classes: int) -> TensorSpec:
    """The network output: float32 logits ``[num_classes]``."""
    return TensorSpec(NETWORK_OUTPUT, "TYPE_FP32", (num_classes,))


def probabilities(num_classes: int) -> TensorSpec:
    """The classifier's optional output: float32 softmax ``[num_classes]``, sent only when requested."""
    return TensorSpec(PROBABILITIES_OUTPUT, "TYPE_FP32", (num_classes,))
