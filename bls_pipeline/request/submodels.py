"""The two models the classifier calls, and their tensors: configuration of the classifier.

By default they are the contract's (``preprocessing``: ``DALI_INPUT`` -> ``DALI_OUTPUT``;
``efficientnet-b0``: ``INPUT`` FP32 -> ``OUTPUT``), with the classifier's own max batch size.
A repository adopted from the user's models (``tools/build_repo.py --from-repository``) or
built around the user's network file (``--network``) names theirs instead: each field below is
one ``parameters`` key of the classifier's ``config.pbtxt`` (the build writes them, the
classifier reads them once in ``initialize``), and an absent key keeps its default.

Standard library only: the classifier imports it inside the NVIDIA Triton container.

Example::

    wiring = SubModels.from_parameters({"network_model": "efficientnet-b0", "network_input": "input__0",
                                        "network_input_dtype": "TYPE_FP16", "network_max_batch_size": "32"})
    wiring.chunk_size(64)        # 32: the classifier splits its batches of 64 for the network
    wiring.parameters()          # the same, as config parameters (strings)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

from bls_pipeline.contract import (
    CHANNELS,
    DALI_INPUT,
    DALI_OUTPUT,
    NETWORK,
    NETWORK_INPUT,
    NETWORK_OUTPUT,
    PREPROCESSING,
)
from bls_pipeline.errors import ConfigError

# The network input types the classifier can feed: the preprocessing's FP32 as it is, or cast
# to FP16 for an engine built with FP16 inputs.
NETWORK_INPUT_DTYPES = ("TYPE_FP32", "TYPE_FP16")


@dataclass(frozen=True)
class SubModels:
    """The sub-models' names, tensor names, network input type and dims, and max batch sizes.

    ``*_max_batch_size`` 0 means "the classifier's own"; a smaller one makes the classifier
    split its batches (the tutorial's models take 32). ``network_input_dims`` empty means
    "whatever the preprocessing gives"; otherwise a preprocessed batch of other dims fails
    with a message naming both, instead of the network's own error.
    """

    preprocessing_model: str = PREPROCESSING
    preprocessing_input: str = DALI_INPUT
    preprocessing_output: str = DALI_OUTPUT
    preprocessing_max_batch_size: int = 0
    network_model: str = NETWORK
    network_input: str = NETWORK_INPUT
    network_output: str = NETWORK_OUTPUT
    network_input_dtype: str = "TYPE_FP32"
    network_input_dims: tuple[int, ...] = ()
    network_max_batch_size: int = 0

    def __post_init__(self) -> None:
        if self.network_input_dtype not in NETWORK_INPUT_DTYPES:
            raise ConfigError(
                f"network_input_dtype {self.network_input_dtype!r}: the classifier feeds the network "
                f"{' or '.join(NETWORK_INPUT_DTYPES)}"
            )
        for name in ("preprocessing_max_batch_size", "network_max_batch_size"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be 0 (the classifier's own) or more, got {getattr(self, name)}")
        if self.network_input_dims and (len(self.network_input_dims) != 3 or self.network_input_dims[0] != CHANNELS):
            raise ConfigError(f"network_input_dims must be [3, H, W], got {list(self.network_input_dims)}")
        object.__setattr__(self, "network_input_dims", tuple(int(size) for size in self.network_input_dims))

    @property
    def casts_to_fp16(self) -> bool:
        """Whether the preprocessing's FP32 batch is cast to FP16 for the network."""
        return self.network_input_dtype == "TYPE_FP16"

    def chunk_size(self, classifier_max_batch_size: int) -> int:
        """The most images the classifier sends the sub-models at once."""
        limits = [classifier_max_batch_size, self.preprocessing_max_batch_size, self.network_max_batch_size]
        return min(limit for limit in limits if limit > 0)

    @classmethod
    def from_parameters(cls, parameters: Mapping[str, str]) -> SubModels:
        """From the classifier's config ``parameters`` (strings); absent keys keep their defaults."""
        values: dict[str, object] = {}
        for field in dataclasses.fields(cls):
            if field.name not in parameters:
                continue
            text = parameters[field.name]
            try:
                if field.name == "network_input_dims":
                    values[field.name] = tuple(int(part) for part in text.split(",")) if text else ()
                elif field.name.endswith("_max_batch_size"):
                    values[field.name] = int(text)
                else:
                    values[field.name] = text
            except ValueError:
                raise ConfigError(f"classifier parameter {field.name}: not a number: {text!r}") from None
        return cls(**values)  # type: ignore[arg-type]

    def parameters(self) -> dict[str, str]:
        """Every field as a config parameter (strings), as :meth:`from_parameters` reads them;
        ``network_input_dims`` only when set (a config's JSON drops empty strings)."""
        return {
            field.name: ",".join(map(str, value)) if isinstance(value, tuple) else str(value)
            for field in dataclasses.fields(self)
            for value in [getattr(self, field.name)]
            if value != ()
        }

    def describe(self) -> str:
        """Two lines for the build output."""
        limit = lambda size: f"max batch {size}" if size else "the classifier's max batch"  # noqa: E731
        dims = list(self.network_input_dims) if self.network_input_dims else "any dims"
        return (
            f"{self.preprocessing_model}: {self.preprocessing_input} -> {self.preprocessing_output} "
            f"({limit(self.preprocessing_max_batch_size)})\n"
            f"{self.network_model}: {self.network_input} {self.network_input_dtype.removeprefix('TYPE_')} {dims} "
            f"-> {self.network_output} ({limit(self.network_max_batch_size)})"
        )
