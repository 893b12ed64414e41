"""Turn the DALI validation pipeline of a training script into the served preprocessing.

The user names ``PATH.py:FUNCTION``: a ``@pipeline_def`` function (or a plain function that
builds the graph inside a pipeline) that reads files with a reader, decodes, resizes, crops,
normalizes and returns images and labels. Importing ``PATH.py`` runs the user's code; the
file itself is never edited. The conversion builds the user's graph twice with DALI's own
``fn`` API, while the readers and image decoders of ``nvidia.dali.fn`` are temporarily
replaced:

- *served*: the reader's encoded-data output becomes ``fn.external_source(name="DALI_INPUT")``;
  the reader's other outputs (labels, boxes) stay as they are, so that the outputs computed
  from them alone can be found and dropped; the image decoders run on ``decoder_device``;
- *original*: the real reader, pointed at sample photographs laid out the way it reads them
  (sharding, shuffling and paths replaced; every other argument kept).

Operators that cannot be served (random ones, videos, a second input, ...) are refused with
one line that names the operator. Then both graphs run on the same encoded bytes (those the
original's reader produced) and must agree; the served pipeline is the serialized graph
(``model.dali``) that Triton's DALI backend and :mod:`bls_pipeline.runtime.dali` both load.

Example::

    source = PipelineSource.parse("train.py:validation_pipe", ["image_size=256", "image_crop=224"])
    converted = convert_pipeline(source, decoder_device="cpu", max_batch_size=64, num_threads=2)
    Path("model.dali").write_bytes(converted.serialized)
    print(converted.output_shape, converted.max_abs_diff)   # (3, 224, 224) 0.0
"""

from __future__ import annotations

import ast
import contextlib
import importlib.util
import inspect
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bls_pipeline.builder.reader_layouts import READERS, SAMPLE_SUFFIXES, UserPipelineError, recording_tfrecord_features
from bls_pipeline.contract import CHANNELS, DALI_INPUT, DALI_OUTPUT
from bls_pipeline.model_sources import samples_dir
from bls_pipeline.runtime.device import decoder_device

# The photographs every conversion is verified on (scikit-image's, shipped in samples/).
# What the network takes: one float32 CHW image of three channels, square.
NETWORK_DTYPE = np.float32
DECODER_DEVICES = ("cpu", "mixed")

# Reader arguments that only say where the data lives and how it is split and ordered:
# the conversion drops them (the served model has no files), the verification replaces them.
_ORDER_ARGUMENTS = ("shard_id", "num_shards", "stick_to_shard", "random_shuffle", "shuffle_after_epoch", "seed")
# Readers that return no encoded images, and what to do instead.
_VIDEO_ADVICE = (
    "videos are not images: write a dali.py by hand with fn.experimental.inputs.video or "
    "fn.external_source + fn.experimental.decoders.video (see DALI's 'from training to inference')"
)
_LMDB_ADVICE = (
    "its LMDB sample layout is not built here, so the conversion could not be verified; "
    "replace it by hand with fn.external_source(name='DALI_INPUT')"
)
_REFUSED_READERS = {
    "video": _VIDEO_ADVICE,
    "video_resize": _VIDEO_ADVICE,
    "sequence": "it reads image sequences (frames), the served model takes one image per sample",
    "numpy": "it reads decoded arrays, not encoded images",
    "nemo_asr": "it reads audio, not images",
    "caffe": _LMDB_ADVICE,
    "caffe2": _LMDB_ADVICE,
}
_DECODERS = ("image", "image_crop", "image_slice", "image_random_crop")


@dataclass(frozen=True)
class PipelineSource:
    """``PATH.py:FUNCTION`` and the values of its arguments (``--pipeline-arg NAME=VALUE``)."""

    path: Path
    function: str
    arguments: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, spec: str, arguments: Sequence[str] = ()) -> PipelineSource:
        """From ``"train.py:validation_pipe"`` and ``["image_size=256", ...]``."""
        path, sep, function = spec.rpartition(":")
        if not sep or not path.endswith(".py") or not function.isidentifier():
            raise UserPipelineError(f"--dali-pipeline {spec!r}: expected PATH.py:FUNCTION")
        if not Path(path).is_file():
            raise UserPipelineError(f"--dali-pipeline: no such file {path}")
        return cls(Path(path), function, dict(parse_pipeline_arg(text) for text in arguments))

    def __str__(self) -> str:
        return f"{self.path}:{self.function}"


def parse_pipeline_arg(text: str) -> tuple[str, Any]:
    """``"NAME=VALUE"`` -> ``(NAME, value)``: a Python literal or a name of ``nvidia.dali.types``.

    >>> parse_pipeline_arg("image_size=256")
    ('image_size', 256)
    >>> parse_pipeline_arg("interpolation=types.INTERP_LINEAR")[1]   # DALIInterpType.INTERP_LINEAR
    """
    name, sep, value = text.partition("=")
    name, value = name.strip(), value.strip()
    if not sep or not name.isidentifier():
        raise UserPipelineError(f"--pipeline-arg {text!r}: expected NAME=VALUE")
    try:
        return name, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        pass
    from nvidia.dali import types

    resolved: Any = types
    parts = value.split(".")
    if parts[0] == "types":
        parts = parts[1:]
    for part in parts:
        resolved = getattr(resolved, part, None) if part.isidentifier() else None
    if resolved is None or resolved is types or inspect.ismodule(resolved):
        raise UserPipelineError(
            f"--pipeline-arg {text!r}: {value!r} is neither a Python literal nor a name from "
            f"nvidia.dali.types (quote strings: {name}=\"'{value}'\")"
        )
    return name, resolved


@dataclass(frozen=True)
class ConvertedPipeline:
    """The served preprocessing built from a user pipeline, and how it was verified."""

    source: str
    reader: str
    serialized: bytes
    decoder_device: str
    output_shape: tuple[int, int, int]
    dropped_outputs: tuple[int, ...]
    placeholders: tuple[str, ...]
    samples: int
    max_abs_diff: float

    @property
    def crop(self) -> int:
        """The network's input size: the pipeline's output is ``[3, crop, crop]``."""
        return self.output_shape[1]


# --- loading the user's code ---------------------------------------------------------------


def import_user_file(path: Path, prefix: str) -> Any:
    """Import the user's ``path`` as a new module (this runs its code); its exceptions propagate.

    The file's folder goes first on ``sys.path`` for the import, so that it imports the code
    around it as it does when it runs.
    """
    path = path.resolve()
    spec = importlib.util.spec_from_file_location(f"{prefix}_{path.stem}_{abs(hash(str(path)))}", path)
    if spec is None or spec.loader is None:
        raise UserPipelineError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.parent))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(path.parent))
    return module


def load_pipeline_function(source: PipelineSource) -> Callable[..., Any]:
    """Import ``source.path`` (this runs the user's code, see :func:`import_user_file`) and return ``source.function``."""
    try:
        module = import_user_file(source.path, "user_pipeline")
    except UserPipelineError:
        raise
    except Exception as exc:  # the user's code may raise anything; report it in one line
        raise UserPipelineError(f"importing {source.path} failed: {type(exc).__name__}: {exc}") from exc
    function = getattr(module, source.function, None)
    if function is None:
        raise UserPipelineError(f"{source.path} has no {source.function!r}")
    from nvidia.dali.pipeline import Pipeline

    if isinstance(function, Pipeline) or not callable(function) or inspect.isclass(function):
        raise UserPipelineError(
            f"{source} is not a DALI pipeline function: name the @pipeline_def function "
            f"(or a plain function that returns fn.* outputs), got {type(function).__name__}"
        )
    return function


class ReaderOnly(str):
    """The value given to a required argument that the user did not give (``data_dir``, ``rank``).

    A ``str`` so that path arithmetic in the user's code still works; readers' location and
    sharding arguments are replaced anyway, and one that reaches another operator is reported.
    """

    def __new__(cls, name: str) -> ReaderOnly:
        value = super().__new__(cls, f"<reader-only argument {name}>")
        value.argument = name
        return value


def _call_arguments(function: Callable[..., Any], source: PipelineSource) -> tuple[dict[str, Any], tuple[str, ...]]:
    """The user's values, plus :class:`ReaderOnly` placeholders for missing required arguments."""
    parameters = inspect.signature(function).parameters
    unknown = sorted(set(source.arguments) - set(parameters))
    if unknown:
        raise UserPipelineError(
            f"{source.function} has no argument {', '.join(unknown)} (it takes: {', '.join(parameters)})"
        )
    arguments = dict(source.arguments)
    placeholders = []
    for name, parameter in parameters.items():
        if (
            name not in arguments
            and parameter.default is inspect.Parameter.empty
            and parameter.kind
            in (
                inspect.Parameter.POSITIONAL_OR_KEYWORD,
                inspect.Parameter.KEYWORD_ONLY,
            )
        ):
            arguments[name] = ReaderOnly(name)
            placeholders.append(name)
    return arguments, tuple(placeholders)


# --- building the user's graph with readers and decoders replaced ----------------------------


@dataclass
class _Build:
    """What one build of the user's graph saw."""

    serve: bool
    decoder_device: str
    sample_dir: Path
    photos: Sequence[Path]
    reader: str = ""
    image_node: Any = None
    meta_nodes: list = field(default_factory=list)
    reader_arguments: set = field(default_factory=set)


@contextlib.contextmanager
def decoders_on(decoder_device: str) -> Iterator[list[str]]:
    """Run every image decoder of ``nvidia.dali.fn`` built inside on ``decoder_device``.

    The repository's device decides where images decode, whatever the user's code chose;
    the list yielded collects the devices the code asked for (DALI's default: ``cpu``).
    """
    from nvidia.dali import fn

    saved: list[tuple[Any, str, Any]] = []
    asked: list[str] = []
    for module in (fn.decoders, fn.experimental.decoders):
        for name in _DECODERS:
            original = getattr(module, name, None)
            if original is not None:
                saved.append((module, name, original))
                setattr(module, name, _decoder(decoder_device, original, asked))
    try:
        yield asked
    finally:
        for module, name, original in reversed(saved):
            setattr(module, name, original)


@contextlib.contextmanager
def _replaced_operators(build: _Build) -> Iterator[None]:
    """Replace ``fn.readers.*`` and the image decoders of ``nvidia.dali.fn`` for one build."""
    from nvidia.dali import fn

    saved: list[tuple[Any, str, Any]] = []

    def replace(module: Any, name: str, wrapper: Callable[[Callable[..., Any]], Callable[..., Any]]) -> None:
        original = getattr(module, name, None)
        if original is not None:
            saved.append((module, name, original))
            setattr(module, name, wrapper(original))

    for name in dir(fn.readers):
        if not name.startswith("_") and not inspect.ismodule(getattr(fn.readers, name)):
            replace(fn.readers, name, lambda original, name=name: _reader(build, f"fn.readers.{name}", name, original))
    replace(
        fn.experimental.readers, "video", lambda original: _refusing("fn.experimental.readers.video", _VIDEO_ADVICE)
    )
    try:
        with decoders_on(build.decoder_device):
            yield
    finally:
        for module, name, original in reversed(saved):
            setattr(module, name, original)


def _refusing(operator: str, reason: str) -> Callable[..., Any]:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise UserPipelineError(f"{operator}: cannot be served: {reason}")

    return refuse


def _decoder(decoder_device: str, original: Callable[..., Any], asked: list[str]) -> Callable[..., Any]:
    def decode(*inputs: Any, **kwargs: Any) -> Any:
        asked.append(kwargs.get("device", "cpu"))
        return original(*inputs, **{**kwargs, "device": decoder_device})

    return decode


def _reader(build: _Build, operator: str, name: str, original: Callable[..., Any]) -> Callable[..., Any]:
    def read(*inputs: Any, **kwargs: Any) -> Any:
        from nvidia.dali import fn, types

        if name in _REFUSED_READERS:
            raise UserPipelineError(f"{operator}: cannot be served: {_REFUSED_READERS[name]}")
        kind = READERS.get(name)
        if kind is None:
            raise UserPipelineError(f"{operator}: cannot be served: not a reader of encoded images")
        if build.reader:
            raise UserPipelineError(
                f"{operator}: cannot be served: several image inputs ({build.reader} and {operator}); "
                "the served model takes one encoded image per sample"
            )
        build.reader = operator
        build.reader_arguments.update(value.argument for value in kwargs.values() if isinstance(value, ReaderOnly))
        user = {key: value for key, value in kwargs.items() if key not in kind.location_arguments + _ORDER_ARGUMENTS}
        arguments = {**user, **kind.layout(build.sample_dir, build.photos, kwargs), "random_shuffle": False}
        returned = original(*inputs, **arguments)
        # Most readers return a tuple of outputs; the TFRecord reader a dict by feature.
        outputs = (
            dict(returned)
            if isinstance(returned, dict)
            else dict(enumerate(returned if isinstance(returned, (list, tuple)) else [returned]))
        )
        image = kind.image_output(kwargs)
        if build.serve:
            outputs[image] = fn.external_source(name=DALI_INPUT, dtype=types.UINT8, ndim=1)
        build.image_node = outputs[image]
        build.meta_nodes = [node for key, node in outputs.items() if key != image]
        if isinstance(returned, dict):
            return outputs
        return outputs[0] if len(outputs) == 1 else tuple(outputs.values())

    return read


def _build_graph(
    function: Callable[..., Any],
    arguments: dict[str, Any],
    build: _Build,
    pipeline_arguments: dict[str, Any],
) -> tuple[Any, list[Any]]:
    """Run the user's function with replaced operators; returns (pipeline, its outputs)."""
    from nvidia.dali.data_node import DataNode
    from nvidia.dali.pipeline import Pipeline

    with _replaced_operators(build):
        try:
            if getattr(function, "_is_pipeline_def", False):
                pipe = function(**arguments, **pipeline_arguments)
                outputs = pipe._graph_out  # what the decorated function returned (set_outputs)
            else:
                pipe = Pipeline(**pipeline_arguments)
                with pipe:
                    outputs = function(**arguments)
        except UserPipelineError:
            raise
        except Exception as exc:  # the user's graph code may raise anything
            raise UserPipelineError(_build_failure(function, arguments, build, exc)) from exc
    outputs = list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]
    if not outputs or not all(isinstance(output, DataNode) for output in outputs):
        raise UserPipelineError(
            f"{function.__name__} is not a DALI pipeline: it returned "
            f"{type(outputs[0]).__name__ if outputs else 'nothing'}, not DALI outputs "
            "(decorate it with @pipeline_def, or return the outputs of fn.* operators)"
        )
    if not build.reader:
        raise UserPipelineError(
            f"{function.__name__}: no fn.readers.* reader was called (call it as fn.readers.NAME), "
            "so there is no input to serve"
        )
    missing = _missing_arguments(arguments, build)
    if missing:
        # A placeholder that reached no reader went to another operator (or nowhere): only the
        # user knows its value.
        raise UserPipelineError(_needs_values(function, missing))
    return pipe, outputs


def _missing_arguments(arguments: dict[str, Any], build: _Build) -> list[str]:
    return [
        value.argument
        for value in arguments.values()
        if isinstance(value, ReaderOnly) and value.argument not in build.reader_arguments
    ]


def _needs_values(function: Callable[..., Any], missing: list[str]) -> str:
    return (
        f"{function.__name__} needs a value for {', '.join(missing)} (not only a reader argument): "
        f"pass --pipeline-arg {missing[0]}=VALUE"
    )


def _build_failure(function: Callable[..., Any], arguments: dict[str, Any], build: _Build, exc: Exception) -> str:
    missing = _missing_arguments(arguments, build)
    if missing:
        return _needs_values(function, missing)
    return f"building {function.__name__} failed: {type(exc).__name__}: {str(exc).strip().splitlines()[0]}"


# --- graph checks ----------------------------------------------------------------------------


def operators(node: Any) -> Iterator[Any]:
    """Every operator instance ``node`` depends on, arguments included, each once."""
    seen: set[int] = set()
    stack = [node.source]
    while stack:
        operator = stack.pop()
        if operator is None or id(operator) in seen:
            continue
        seen.add(id(operator))
        yield operator
        for edge in operator.inputs:
            stack.extend(item.source for item in (edge if isinstance(edge, list) else [edge]))


def _edges(node: Any) -> set[str]:
    """The names of every tensor ``node`` depends on, itself included."""
    names = {node.name}
    for operator in operators(node):
        for edge in operator.inputs:
            names.update(item.name for item in (edge if isinstance(edge, list) else [edge]))
    return names


def _display_name(operator: Any) -> str:
    schema = operator._op.schema
    module = schema.ModulePath()
    name = schema.OperatorName()
    from nvidia.dali.fn import _to_snake_case

    return ".".join(["fn", *module, _to_snake_case(name)])


def _select_outputs(outputs: list[Any], build: _Build) -> tuple[int, tuple[int, ...]]:
    """The index of the one image output, and the indices of the dropped (label-only) outputs."""
    image_name = build.image_node.name
    meta_names = {node.name for node in build.meta_nodes}
    kept, dropped = [], []
    for index, output in enumerate(outputs):
        edges = _edges(output)
        if image_name not in edges:
            dropped.append(index)
        elif edges & meta_names:
            raise UserPipelineError(
                f"output {index} of the pipeline combines the images with the reader's labels or metadata "
                "(the served model gets no labels): return the images alone"
            )
        else:
            kept.append(index)
    if len(kept) != 1:
        raise UserPipelineError(
            f"the pipeline returns {len(kept)} outputs computed from the images (outputs {kept}); "
            "the served model needs exactly one"
        )
    return kept[0], tuple(dropped)


def _check_operators(output: Any) -> None:
    """Refuse random operators and inputs other than the served one."""
    for operator in operators(output):
        schema = operator._op.schema
        name = schema.Name()
        if name == "ExternalSource":
            if operator._name != DALI_INPUT:
                raise UserPipelineError(
                    f"fn.external_source (name {operator._name!r}): cannot be served: several inputs (the reader "
                    "and this one); the served model takes the encoded image alone"
                )
        elif schema.HasRandomSeedArg():
            raise UserPipelineError(
                f"{_display_name(operator)}: cannot be served: it is random (augmentation); "
                "serve the validation pipeline, which must give the same output for the same image"
            )
        elif "Video" in name or "video" in name:
            raise UserPipelineError(f"{_display_name(operator)}: cannot be served: {_VIDEO_ADVICE}")


# --- running -------------------------------------------------------------------------------


def _as_arrays(output: Any) -> list[np.ndarray]:
    if hasattr(output, "as_cpu"):
        output = output.as_cpu()
    return [np.array(output[index]) for index in range(len(output))]


def _check_served_output(samples: list[np.ndarray], layout: str) -> tuple[int, int, int]:
    """The network takes float32 ``[3, N, N]``: refuse anything else, naming what came out."""
    shapes = {sample.shape for sample in samples}
    dtype = samples[0].dtype
    described = f"{dtype} {layout or 'no layout'} {sorted(shapes)[0] if len(shapes) == 1 else sorted(shapes)}"
    if dtype != NETWORK_DTYPE:
        raise UserPipelineError(
            f"the pipeline outputs {described}; the network takes float32 CHW: "
            "use dtype=types.FLOAT and output_layout='CHW' (crop_mirror_normalize)"
        )
    if len(shapes) != 1:
        raise UserPipelineError(f"the pipeline outputs images of different shapes ({described}): crop to a fixed size")
    (shape,) = shapes
    if len(shape) != 3 or shape[0] != CHANNELS or layout not in ("", "CHW") or shape[1] != shape[2]:
        raise UserPipelineError(
            f"the pipeline outputs {described}; the network takes float32 CHW [3, N, N]: "
            "use output_layout='CHW' and a square crop"
        )
    return shape


def sample_photos(directory: Path | None = None) -> list[Path]:
    """The photographs of ``directory`` (default: the sample photographs shipped with the
    package) that the verification reads (sorted, at least one)."""
    directory = samples_dir() if directory is None else directory
    photos = sorted(path for path in directory.iterdir() if path.suffix.lower() in SAMPLE_SUFFIXES)
    if not photos:
        raise UserPipelineError(f"no sample photographs in {directory} to verify the conversion on")
    return photos


def convert_pipeline(
    source: PipelineSource,
    *,
    decoder_device: str,
    max_batch_size: int,
    num_threads: int,
    photos: Sequence[Path] | None = None,
) -> ConvertedPipeline:
    """Convert and verify the user's pipeline; see the module docstring.

    ``decoder_device`` is ``"cpu"`` or ``"mixed"`` (a GPU is needed to verify ``mixed``).
    Raises :class:`UserPipelineError` with one line for a user.
    """
    if decoder_device not in DECODER_DEVICES:
        raise UserPipelineError(f"decoder device must be one of {DECODER_DEVICES}, got {decoder_device!r}")
    photos = list(photos) if photos is not None else sample_photos()
    with recording_tfrecord_features():
        return _convert(source, decoder_device, max_batch_size, num_threads, photos)


def _convert(
    source: PipelineSource, decoder_device: str, max_batch_size: int, num_threads: int, photos: list[Path]
) -> ConvertedPipeline:
    from nvidia.dali import fn, types
    from nvidia.dali.pipeline import Pipeline

    function = load_pipeline_function(source)
    arguments, placeholders = _call_arguments(function, source)
    device_id = 0 if decoder_device == "mixed" else None
    common = {"num_threads": num_threads, "device_id": device_id, "prefetch_queue_depth": 1}

    with tempfile.TemporaryDirectory(prefix="user-pipeline-") as scratch:
        served_build = _Build(True, decoder_device, Path(scratch) / "served", photos)
        original_build = _Build(False, decoder_device, Path(scratch) / "original", photos)
        served_build.sample_dir.mkdir()
        original_build.sample_dir.mkdir()

        # The served graph, as DALI's backend will run it (sizes, dtypes declared for autoconfig).
        pipe, outputs = _build_graph(
            function,
            arguments,
            served_build,
            {**common, "batch_size": max_batch_size, "output_dtype": types.FLOAT, "output_ndim": 3},
        )
        image_index, dropped = _select_outputs(outputs, served_build)
        _check_operators(outputs[image_index])
        with pipe:
            # Named after the contract, so that the DALI backend's autoconfiguration names it so
            # too; a layout-only reshape shares the data (no copy).
            pipe.set_outputs(fn.reshape(outputs[image_index], layout="CHW", name=DALI_OUTPUT))
        try:
            serialized = pipe.serialize()
        except RuntimeError as exc:
            raise UserPipelineError(_runtime_failure("the converted pipeline", exc)) from exc
        del pipe

        # The original, reader included, on the samples; its reader's bytes feed the served one.
        original, original_outputs = _build_graph(
            function, arguments, original_build, {**common, "batch_size": len(photos)}
        )
        original.set_outputs(original_outputs[image_index], original_build.image_node)
        try:
            original.build()
            reference, encoded = original.run()
        except RuntimeError as exc:
            raise UserPipelineError(_runtime_failure("the original pipeline on the sample photographs", exc)) from exc
        layout = reference.layout()
        reference, encoded = _as_arrays(reference), _as_arrays(encoded)
        del original
    shape = _check_served_output(reference, layout)

    # All samples in one batch, whatever the served maximum (Triton overrides it the same way).
    served = Pipeline.deserialize(serialized, batch_size=len(encoded), **common)
    try:
        served.feed_input(DALI_INPUT, encoded)
        (output,) = served.run()
    except RuntimeError as exc:
        raise UserPipelineError(_runtime_failure("the converted pipeline on the sample photographs", exc)) from exc
    served_arrays = _as_arrays(output)
    if any(a.shape != b.shape for a, b in zip(served_arrays, reference)):
        raise UserPipelineError(
            "verification failed: the converted pipeline's output shapes differ from the original's"
        )
    diff = max(float(np.max(np.abs(a.astype(np.float64) - b))) for a, b in zip(served_arrays, reference))
    if diff != 0.0:
        raise UserPipelineError(
            f"verification failed: the converted pipeline differs from the original by {diff:g} "
            f"(max abs) on the sample photographs"
        )
    return ConvertedPipeline(
        source=str(source),
        reader=served_build.reader,
        serialized=serialized,
        decoder_device=decoder_device,
        output_shape=tuple(int(size) for size in shape),
        dropped_outputs=dropped,
        placeholders=placeholders,
        samples=len(encoded),
        max_abs_diff=diff,
    )


def _runtime_failure(what: str, exc: RuntimeError) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    # DALI's messages start with a context line; the reason is usually the first "Error" line.
    reason = next((line for line in lines if "rror" in line), lines[0] if lines else type(exc).__name__)
    return f"running {what} failed: {reason}"


def convert_for_repository(
    source: PipelineSource,
    *,
    device: str,
    max_batch_size: int,
    num_threads: int,
    progress: Callable[[str], None],
) -> ConvertedPipeline:
    """:func:`convert_pipeline` for the repository's ``device``, reporting each step to ``progress``."""
    progress(f"importing {source.path} for {source.function} (this runs the code of your training script)")
    converted = convert_pipeline(
        source, decoder_device=decoder_device(device), max_batch_size=max_batch_size, num_threads=num_threads
    )
    dropped = ", ".join(str(index) for index in converted.dropped_outputs) or "none"
    progress(
        f"      {converted.reader} -> fn.external_source(name={DALI_INPUT!r}); outputs dropped (labels, "
        f"metadata): {dropped}; decoder: {converted.decoder_device}"
    )
    if converted.placeholders:
        progress(f"      reader-only arguments, no value needed: {', '.join(converted.placeholders)}")
    progress(
        f"      verified on {converted.samples} sample photographs: output float32 "
        f"{list(converted.output_shape)}, max |converted - original| = {converted.max_abs_diff:g}"
    )
    return converted
