"""A network the user already has (an ONNX file or a TensorRT plan): its tensors, and whether it fits.

The classifier is wired to the file's own tensor names and input type (``input``/``output``,
``INPUT__0``/``OUTPUT__0``, FP16 engines); what the preprocessing gives must fit what the
network takes, or the build refuses in one line that names both.

Example::

    network = read_network_file(Path("effnet.onnx"))
    network.input        # TensorSpec(name='input', data_type='TYPE_FP32', dims=(3, 224, 224))
    check_fit(preprocessed("DALI_OUTPUT", 224), network.input, preprocessing="preprocessing", network="effnet.onnx")
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bls_pipeline.contract import TensorSpec
from bls_pipeline.errors import ConfigError
from bls_pipeline.layout import ONNX_FILE, PLAN_FILE
from bls_pipeline.request.submodels import NETWORK_INPUT_DTYPES, SubModels
from bls_pipeline.runtime.network import tensorrt_importable

ONNX, TENSORRT = "onnx", "tensorrt"
# ONNX TensorProto element types and TensorRT dtypes by Triton's names.
_ONNX_TYPES = {
    1: "TYPE_FP32",
    10: "TYPE_FP16",
    11: "TYPE_FP64",
    2: "TYPE_UINT8",
    3: "TYPE_INT8",
    6: "TYPE_INT32",
    7: "TYPE_INT64",
}
_TENSORRT_TYPES = {
    "FLOAT": "TYPE_FP32",
    "HALF": "TYPE_FP16",
    "INT8": "TYPE_INT8",
    "INT32": "TYPE_INT32",
    "UINT8": "TYPE_UINT8",
}


@dataclass(frozen=True)
class NetworkFile:
    """A network file's one input and one output, with dims per image (the batch axis removed).

    ``batch`` is the file's batch axis: ``-1`` (dynamic) or its fixed size.
    """

    path: Path
    kind: str
    input: TensorSpec
    output: TensorSpec
    batch: int

    @property
    def num_classes(self) -> int:
        """The logits' size."""
        return self.output.dims[-1]

    @property
    def served_name(self) -> str:
        """The file name Triton's backend (and the Python-hosted network) loads it under."""
        return ONNX_FILE if self.kind == ONNX else PLAN_FILE

    def submodels(self) -> SubModels:
        """The classifier's wiring to this network (the preprocessing is the built one)."""
        return SubModels(
            network_input=self.input.name,
            network_output=self.output.name,
            network_input_dtype=self.input.data_type,
            network_input_dims=self.input.dims,
        )

    def describe(self) -> str:
        """One line for the build output."""
        batch = "dynamic batch" if self.batch < 0 else f"batch {self.batch}"
        return (
            f"{self.path.name} ({self.kind}, {batch}): {describe_tensor(self.input)} -> {describe_tensor(self.output)}"
        )


def describe_tensor(spec: TensorSpec) -> str:
    """``input__0 FP16 [3, 224, 224]``."""
    return f"{spec.name} {spec.data_type.removeprefix('TYPE_')} {list(spec.dims)}"


def network_kind(path: Path) -> str:
    """``onnx`` or ``tensorrt`` by the file's suffix."""
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        return ONNX
    if suffix in (".plan", ".engine", ".trt"):
        return TENSORRT
    raise ConfigError(f"--network {path}: expected an ONNX file (.onnx) or a TensorRT plan (.plan, .engine)")


def read_network_file(path: Path) -> NetworkFile:
    """The tensors of ``path``; a TensorRT plan can only be read where TensorRT is installed."""
    if not path.is_file():
        raise ConfigError(f"no such network file: {path}")
    kind = network_kind(path)
    inputs, outputs = _onnx_tensors(path) if kind == ONNX else _tensorrt_tensors(path)
    if len(inputs) != 1:
        raise ConfigError(
            f"{path.name} has {len(inputs)} inputs ({', '.join(t.name for t in inputs)}): the classifier feeds one image tensor"
        )
    if not outputs:
        raise ConfigError(f"{path.name} has no output")
    (image,), logits = inputs, outputs[0]
    if len(image.dims) != 4 or len(logits.dims) != 2:
        raise ConfigError(
            f"{path.name}: expected a batched image input [N, C, H, W] and logits [N, classes], "
            f"got {image.name} {list(image.dims)} and {logits.name} {list(logits.dims)}"
        )
    if logits.dims[-1] < 1:
        raise ConfigError(f"{path.name}: the number of classes of {logits.name} {list(logits.dims)} is not fixed")
    per_image = lambda spec: TensorSpec(spec.name, spec.data_type, spec.dims[1:])  # noqa: E731
    return NetworkFile(path, kind, per_image(image), per_image(logits), batch=image.dims[0])


def _onnx_tensors(path: Path) -> tuple[list[TensorSpec], list[TensorSpec]]:
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # a corrupt or foreign file: protobuf raises its own types
        raise ConfigError(f"{path} is not a readable ONNX model: {exc}") from None
    initializers = {tensor.name for tensor in model.graph.initializer}

    def spec(value) -> TensorSpec:
        tensor = value.type.tensor_type
        dims = tuple(dim.dim_value if dim.HasField("dim_value") else -1 for dim in tensor.shape.dim)
        return TensorSpec(value.name, _ONNX_TYPES.get(tensor.elem_type, f"ONNX type {tensor.elem_type}"), dims)

    inputs = [spec(value) for value in model.graph.input if value.name not in initializers]
    return inputs, [spec(value) for value in model.graph.output]


def _tensorrt_tensors(path: Path) -> tuple[list[TensorSpec], list[TensorSpec]]:
    if not tensorrt_importable():
        raise ConfigError(
            f"{path.name} is a TensorRT plan: reading its tensors needs TensorRT, which is not installed here "
            "(on a GPU machine with TensorRT it is read; or give the ONNX file it was built from)"
        )
    import tensorrt as trt

    engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(path.read_bytes())
    if engine is None:
        raise ConfigError(f"TensorRT could not deserialize {path} (built with another TensorRT version or GPU?)")
    inputs, outputs = [], []
    for index in range(engine.num_io_tensors):
        name = engine.get_tensor_name(index)
        dtype = _TENSORRT_TYPES.get(engine.get_tensor_dtype(name).name, str(engine.get_tensor_dtype(name)))
        spec = TensorSpec(name, dtype, tuple(engine.get_tensor_shape(name)))
        (inputs if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else outputs).append(spec)
    return inputs, outputs


def check_fit(preprocessed: TensorSpec, network_input: TensorSpec, *, preprocessing: str, network: str) -> None:
    """Refuse, in one line naming both, a preprocessing output that the network input cannot take.

    The dims per image must be equal (``-1`` in the network matches any size) and the types
    FP32 -> FP32, or FP32 -> FP16 (the classifier casts for an FP16 engine), or FP16 -> FP16.
    """
    dims_fit = len(preprocessed.dims) == len(network_input.dims) and all(
        want in (-1, have) for have, want in zip(preprocessed.dims, network_input.dims)
    )
    type_fits = network_input.data_type in NETWORK_INPUT_DTYPES and preprocessed.data_type in (
        "TYPE_FP32",
        network_input.data_type,
    )
    if dims_fit and type_fits:
        return
    if not dims_fit and sorted(preprocessed.dims) == sorted(network_input.dims):
        why = "same sizes in another layout (CHW against HWC?)"
    elif not dims_fit:
        why = "the shapes differ"
    else:
        why = "the classifier feeds FP32 as it is or cast to FP16"
    raise ConfigError(
        f"{preprocessing} gives {describe_tensor(preprocessed)} but {network} takes "
        f"{describe_tensor(network_input)}: {why}"
    )
