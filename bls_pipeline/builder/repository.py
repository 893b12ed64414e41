"""Write a complete Triton model repository for a target (NVIDIA Triton container or local).

The source of every model file is the ``model_repository/`` folder of this project (the
``model.py`` shells and ``preprocessing/1/dali.py``); this module copies them, adds the
network files, the labels and ``preprocessing.json``, and writes every ``config.pbtxt`` as a
protobuf message, last, so that a polling server never loads a half-written model.

Example::

    spec = RepositorySpec(target="local", device="cpu", max_batch_size=64, num_classes=1000,
                          preprocessing=preprocessing_defaults("efficientnet-lite0"))  # from builder.spec
    write_repository(Path("build/model_repository"), spec, labels=imagenet_labels(),
                     network_files=[onnx_path])
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from google.protobuf import json_format

from bls_pipeline import __version__
from bls_pipeline.builder import model_config as mc
from bls_pipeline.builder.spec import device_default
from bls_pipeline.errors import ConfigError
from bls_pipeline.layout import (
    BUILD_SPEC_FILE,
    CONFIG_FILE,
    DALI_FILE,
    LABELS_FILE,
    MODEL_FILE,
    ORT_ALLOW_SPINNING,
    SERIALIZED_FILE,
    SETTINGS_FILE,
    WARMUP_DIR,
    version_dir,
)
from bls_pipeline.model_sources import model_sources_dir
from bls_pipeline.networks.preprocessing import PreprocessingSettings
from bls_pipeline.request.submodels import SubModels
from bls_pipeline.runtime.device import CPU, GPU, decoder_device, detect_device

if TYPE_CHECKING:
    from bls_pipeline.builder.user_pipeline import ConvertedPipeline

LOGGER = logging.getLogger(__name__)

PACKAGE_DIR = Path(__file__).resolve().parent.parent
TEMPLATE_DIR = model_sources_dir()
# What the classifier (serving.models.ClassifierModel) imports, and so all that the container
# repository ships of the package: no builder, no torch, no DALI (the container's Triton backends
# host those sub-models). tests/unit/test_container_copy.py lists it and imports it alone.
CONTAINER_PACKAGE = (
    "__init__.py",
    "contract.py",
    "errors.py",
    "request",
    "serving",
    "runtime/__init__.py",
    "runtime/device.py",
)
# A real photograph that model_warmup decodes before the server reports ready.
WARMUP_IMAGE = PACKAGE_DIR / "data" / "warmup.jpg"


@dataclass(frozen=True)
class RepositorySpec:
    """Everything that decides the configs of one repository.

    ``target`` is where the models are hosted (``triton`` container or ``local`` pip-installed
    server), ``device`` where they run (``cpu`` or ``gpu``): two independent settings, and
    ``device`` is the only one that decides instance kinds and the DALI decoder.
    """

    target: str
    max_batch_size: int
    num_classes: int
    device: str = CPU
    # One of model_config.RUNTIMES: tensorrt, onnxruntime or torch-cuda.
    runtime: str = mc.ONNXRUNTIME
    preprocessing: PreprocessingSettings = field(default_factory=PreprocessingSettings)
    # The knobs of bls_pipeline.builder.spec (help, per-device defaults there), resolved.
    dali_threads: int = device_default("dali_threads", CPU)
    dali_autoconfig: bool = False
    hw_decoder_load: float = device_default("hw_decoder_load", CPU)
    preprocessing_instances: int = device_default("preprocessing_instances", CPU)
    network_instances: int = 1
    classifier_instances: int = device_default("classifier_instances", CPU)
    gpus: tuple[int, ...] = ()
    network_threads: int = 0
    # ONNX Runtime's idle pool threads busy-wait by default; on a CPU shared with DALI and the
    # Python stubs that costs throughput (docs/performance.md: +12 % at concurrency 8 without).
    network_spinning: bool = False
    max_image_bytes: int | None = None
    max_image_pixels: int | None = None
    max_request_bytes: int | None = None
    queue_delay_us: int = 0
    # The classifier's queue bound (model_config.QueuePolicy; 0 turns a bound off).
    max_queue_size: int = device_default("max_queue_size", CPU)
    queue_timeout_ms: int = device_default("queue_timeout_ms", CPU)
    # A converted user pipeline (bls_pipeline.builder.user_pipeline): served as model.dali
    # instead of dali.py + preprocessing.json.
    user_pipeline: ConvertedPipeline | None = None
    # Local target: the sub-models served by Triton's own backends built with
    # tools/build_backends.py (see builder.hosting); the triton target always uses them.
    native_models: frozenset[str] = frozenset()
    # The network's tensors: the contract's for an exported checkpoint, the file's own for a
    # --network file (FP16 inputs included); the classifier is wired to them.
    submodels: SubModels = field(default_factory=SubModels)
    network_output_dtype: str = "TYPE_FP32"

    def __post_init__(self) -> None:
        mc.check_target(self.target)
        if self.max_batch_size < 1:
            raise ConfigError(f"max batch size must be at least 1, got {self.max_batch_size}")
        mc.check_runtime(self.runtime)
        mc.check_runtime_device(self.runtime, self.device)
        if not 0.0 <= self.hw_decoder_load <= 1.0:
            raise ConfigError(f"hw_decoder_load must be between 0 and 1, got {self.hw_decoder_load}")
        if self.user_pipeline and self.user_pipeline.decoder_device != decoder_device(self.device):
            raise ConfigError(
                f"the user pipeline was converted with a {self.user_pipeline.decoder_device} decoder, "
                f"the repository's device {self.device} needs {decoder_device(self.device)}"
            )
        unknown = sorted(set(self.native_models) - {mc.PREPROCESSING, mc.NETWORK})
        if unknown:
            raise ConfigError(f"only {mc.PREPROCESSING} and {mc.NETWORK} can be hosted natively, not {unknown}")
        if self.target == "local" and mc.NETWORK in self.native_models and self.runtime != "onnxruntime":
            raise ConfigError("the pip-installed server has no TensorRT backend: host the engine in Python")

    @property
    def crop(self) -> int:
        """The preprocessing output's (and the network input's) size: the one every writer uses."""
        return self.user_pipeline.crop if self.user_pipeline else self.preprocessing.crop

    def to_json(self) -> dict[str, Any]:
        """The spec as ``bls_build.json`` holds it (the user pipeline without its serialized
        graph, which is ``preprocessing/1/model.dali``), with the crop spelled out."""
        values = asdict(self)
        values["native_models"] = sorted(self.native_models)
        if self.user_pipeline:
            values["user_pipeline"].pop("serialized")
        return {"version": __version__, "crop": self.crop, **values}

    @classmethod
    def from_json(cls, values: dict[str, Any], serialized: bytes = b"") -> RepositorySpec:
        """The spec of :meth:`to_json`'s ``values``; ``serialized``: the user pipeline's graph."""
        from bls_pipeline.builder.user_pipeline import ConvertedPipeline

        known = {f.name for f in dataclasses.fields(cls)}
        values = {key: _tuples(value) for key, value in values.items() if key in known}
        values["preprocessing"] = PreprocessingSettings(**values["preprocessing"])
        values["native_models"] = frozenset(values["native_models"])
        if "submodels" in values:
            values["submodels"] = SubModels(**values["submodels"])
        if values.get("user_pipeline"):
            values["user_pipeline"] = ConvertedPipeline(**values["user_pipeline"], serialized=serialized)
        return cls(**values)

    def native(self, model: str) -> bool:
        """Whether ``model`` is served by Triton's own backend (not a Python-backend model)."""
        return self.target == "triton" or model in self.native_models

    def configs(self) -> dict[str, mc.ModelConfig]:
        """The three model configs, by model name."""
        crop = self.crop
        classifier_parameters: dict[str, object] = {"labels_file": LABELS_FILE, **self.submodels.parameters()}
        for key in ("max_image_bytes", "max_image_pixels", "max_request_bytes"):
            if getattr(self, key) is not None:
                classifier_parameters[key] = getattr(self, key)
        network_parameters = self.network_parameters()
        configs = {
            mc.CLASSIFIER: mc.classifier_config(
                max_batch_size=self.max_batch_size,
                device=self.device,
                parameters=classifier_parameters,
                max_queue_delay_us=self.queue_delay_us,
                queue=mc.QueuePolicy(self.max_queue_size, self.queue_timeout_ms),
                instances=self.classifier_instances,
                gpus=self.gpus,
            ),
            mc.PREPROCESSING: mc.preprocessing_config(
                target=self.target,
                max_batch_size=self.max_batch_size,
                crop=crop,
                device=self.device,
                num_threads=self.dali_threads,
                autoconfig=self.dali_autoconfig,
                max_queue_delay_us=self.queue_delay_us,
                instances=self.preprocessing_instances,
                native=self.native(mc.PREPROCESSING),
                gpus=self.gpus,
            ),
            mc.NETWORK: mc.network_config(
                target=self.target,
                runtime=self.runtime,
                max_batch_size=self.max_batch_size,
                crop=crop,
                num_classes=self.num_classes,
                device=self.device,
                max_queue_delay_us=self.queue_delay_us,
                parameters=network_parameters,
                instances=self.network_instances,
                native=self.native(mc.NETWORK),
                gpus=self.gpus,
                input_name=self.submodels.network_input,
                output_name=self.submodels.network_output,
                input_data_type=self.submodels.network_input_dtype,
                output_data_type=self.network_output_dtype,
            ),
        }
        mc.add_classification_output(
            configs[mc.CLASSIFIER], num_classes=self.num_classes, label_filename=f"1/{LABELS_FILE}"
        )
        warmup_sizes = self.warmup_sizes()
        image = {"data_type": "TYPE_UINT8", "dims": [WARMUP_IMAGE.stat().st_size], "input_data_file": WARMUP_IMAGE.name}
        if self.native(mc.PREPROCESSING):
            for images in warmup_sizes:
                rows = {**image, "dims": [images, *image["dims"]], "input_data_file": warmup_file(images)}
                mc.add_warmup_sample(
                    configs[mc.PREPROCESSING], name=f"batch {images}", batch_size=1, inputs={mc.DALI_INPUT: rows}
                )
        else:
            mc.add_warmup(configs[mc.PREPROCESSING], inputs={mc.DALI_INPUT: image}, batch_sizes=warmup_sizes)
        zeros = {"data_type": self.submodels.network_input_dtype, "dims": [3, crop, crop], "zero_data": True}
        mc.add_warmup(configs[mc.NETWORK], inputs={self.submodels.network_input: zeros}, batch_sizes=warmup_sizes)
        return configs

    def warmup_sizes(self) -> list[int]:
        """The batch sizes the sub-models warm up at, in order."""
        # Largest batch first: nvImageCodec sizes the mixed decoder's share of hardware-decoded
        # JPEGs once, from the first batch a pipeline runs (hw_decoder_load x that batch, rounded
        # up to the engines' mini-batch), and keeps it. Warmed at one image first, every later
        # batch sent only one mini-batch to the hardware JPEG engine and the rest to the CPU.
        return sorted({1, self.max_batch_size}, reverse=True)

    def network_parameters(self) -> dict[str, object] | None:
        """The network's threading parameters, in the keys of whatever hosts it."""
        if not self.native(mc.NETWORK):
            return {"intra_op_threads": self.network_threads, "allow_spinning": int(self.network_spinning)}
        if self.runtime != "onnxruntime":
            return None
        # Triton's ONNX Runtime backend: its own thread-count key, and the session config
        # entry that our build of it passes through (other builds ignore an unknown key).
        parameters: dict[str, object] = {ORT_ALLOW_SPINNING: int(self.network_spinning)}
        if self.network_threads > 0:
            parameters["intra_op_thread_count"] = self.network_threads
        return parameters

    def dali_settings(self) -> dict:
        """The ``preprocessing.json`` that ``dali.py`` reads beside itself."""
        settings = asdict(self.preprocessing)
        settings["mean"], settings["std"] = list(settings["mean"]), list(settings["std"])
        settings["decoder_device"] = decoder_device(self.device)
        settings["max_batch_size"] = self.max_batch_size
        settings["num_threads"] = self.dali_threads
        settings["hw_decoder_load"] = self.hw_decoder_load
        return settings


def warmup_file(images: int) -> str:
    """The preprocessing warmup file of ``images`` copies of the warmup photograph, end to end:
    an unbatched DALI model's warmup sample is one ``[images, bytes]`` tensor read from a file."""
    return WARMUP_IMAGE.name if images == 1 else f"warmup-x{images}.bin"


def write_warmup_files(directory: Path, spec: RepositorySpec) -> None:
    """The files that the preprocessing model's ``model_warmup`` samples read, into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(WARMUP_IMAGE, directory / WARMUP_IMAGE.name)
    if spec.native(mc.PREPROCESSING):
        for images in spec.warmup_sizes():
            if images > 1:
                (directory / warmup_file(images)).write_bytes(WARMUP_IMAGE.read_bytes() * images)


def _tuples(value: Any) -> Any:
    """JSON lists back to the tuples of the dataclasses, nested dicts included."""
    if isinstance(value, list):
        return tuple(_tuples(item) for item in value)
    if isinstance(value, dict):
        return {key: _tuples(item) for key, item in value.items()}
    return value


def write_build_spec(output: Path, spec: RepositorySpec) -> Path:
    """``<output>/bls_build.json``: the spec that the launcher, the sizing, the benchmark and
    the demo read back instead of reverse-engineering the configs."""
    path = Path(output) / BUILD_SPEC_FILE
    path.write_text(json.dumps(spec.to_json(), indent=2) + "\n")
    return path


def read_build_spec(repository: Path) -> RepositorySpec | None:
    """The spec a build wrote into ``repository``; None when it has none (not built by
    ``tools/build_repo.py``, or by a version before ``bls_build.json``)."""
    path = Path(repository) / BUILD_SPEC_FILE
    if not path.is_file():
        return None
    try:
        values = json.loads(path.read_text())
        serialized = version_dir(repository, mc.PREPROCESSING) / SERIALIZED_FILE
        has_graph = values.get("user_pipeline") and serialized.is_file()
        return RepositorySpec.from_json(values, serialized.read_bytes() if has_graph else b"")
    except (ValueError, TypeError, KeyError) as exc:
        raise ConfigError(f"{path} is not a build spec this version reads ({exc}): rebuild the repository") from None


def serialize_pipeline(dali_file: Path, output: Path) -> Path:
    """Serialize the pipeline of ``dali_file`` (with its ``preprocessing.json``) to ``output``."""
    # Imported here: DALI is heavy, and only a natively hosted local repository needs it.
    from bls_pipeline.runtime.dali import load_pipeline_module

    pipeline = load_pipeline_module(dali_file).preprocessing()
    pipeline.serialize(filename=str(output))
    return output


def prepare_output(output: Path, *, force: bool) -> None:
    """Create ``output``; a non-empty one is only replaced with ``force``."""
    if output.exists() and not output.is_dir():
        raise ConfigError(f"{output} exists and is not a directory")
    if output.is_dir() and any(output.iterdir()):
        if not force:
            raise ConfigError(f"{output} is not empty: pass --force to replace it")
        shutil.rmtree(output)
    output.mkdir(parents=True, exist_ok=True)


def copy_container_package(destination: Path) -> list[Path]:
    """Copy what the classifier imports into ``destination`` (``classifier/1/bls_pipeline``):
    the NVIDIA Triton container has no bls_pipeline, and the Python backend's import path finds
    it beside ``model.py``. Returns the files copied."""
    for entry in CONTAINER_PACKAGE:
        source, target = PACKAGE_DIR / entry, destination / entry
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"), dirs_exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
    return sorted(path for path in destination.rglob("*") if path.is_file())


def write_classifier_files(output: Path, *, labels: Sequence[str], target: str) -> Path:
    """The classifier's ``model.py`` and labels in ``output/classifier/1`` (its config is the caller's, written last).

    For the NVIDIA Triton container, what it imports goes beside it (:func:`copy_container_package`).
    """
    version = output / mc.CLASSIFIER / "1"
    version.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(TEMPLATE_DIR / mc.CLASSIFIER / "1" / MODEL_FILE, version / MODEL_FILE)
    (version / LABELS_FILE).write_text("".join(f"{label}\n" for label in labels))
    if target == "triton":
        copy_container_package(version / PACKAGE_DIR.name)
    return version


def write_repository(
    output: Path,
    spec: RepositorySpec,
    *,
    labels: Sequence[str],
    network_files: Sequence[Path],
) -> dict[str, Path]:
    """Write the repository into ``output`` (which must exist); returns config paths by model.

    ``network_files`` (``model.onnx``, ``model.plan``) are moved into the network's version
    directory unless they are there already.
    """
    if len(labels) != spec.num_classes:
        raise ConfigError(f"{len(labels)} labels for a network with {spec.num_classes} classes")
    versions = {name: output / name / "1" for name in (mc.CLASSIFIER, mc.PREPROCESSING, mc.NETWORK)}
    for directory in versions.values():
        directory.mkdir(parents=True, exist_ok=True)
    for path in network_files:
        destination = versions[mc.NETWORK] / path.name
        if path.resolve() != destination.resolve():
            shutil.move(os.fspath(path), destination)

    write_classifier_files(output, labels=labels, target=spec.target)
    write_warmup_files(output / mc.PREPROCESSING / WARMUP_DIR, spec)
    if spec.user_pipeline:
        # Both hostings load the serialized graph: the DALI backend reads model.dali first.
        (versions[mc.PREPROCESSING] / SERIALIZED_FILE).write_bytes(spec.user_pipeline.serialized)
    else:
        shutil.copyfile(TEMPLATE_DIR / mc.PREPROCESSING / "1" / DALI_FILE, versions[mc.PREPROCESSING] / DALI_FILE)
        (versions[mc.PREPROCESSING] / SETTINGS_FILE).write_text(json.dumps(spec.dali_settings(), indent=2) + "\n")
    for name in (mc.PREPROCESSING, mc.NETWORK):
        if not spec.native(name):
            shutil.copyfile(TEMPLATE_DIR / name / "1" / MODEL_FILE, versions[name] / MODEL_FILE)
    if spec.target == "local" and spec.native(mc.PREPROCESSING) and not spec.user_pipeline:
        # Serialized with the DALI that will serve it: the DALI backend then loads it directly
        # instead of running python3 to autoserialize dali.py at every load. DALI cannot
        # create a GPU pipeline without CUDA, so a GPU repository built on a machine without
        # one leaves that to the backend, which serializes dali.py when it loads the model.
        if spec.device == CPU or detect_device()[0] == GPU:
            serialize_pipeline(versions[mc.PREPROCESSING] / DALI_FILE, versions[mc.PREPROCESSING] / SERIALIZED_FILE)
        else:
            LOGGER.warning("no CUDA here: model.dali is left to the DALI backend, which serializes dali.py at load")

    write_build_spec(output, spec)
    paths = {}
    for name, config in spec.configs().items():
        paths[name] = mc.write_config(output / name / CONFIG_FILE, config)
        LOGGER.info("wrote %s", paths[name])
    return paths


def change_queue_policy(
    repository: Path, *, max_queue_size: int | None = None, timeout_ms: int | None = None
) -> mc.QueuePolicy:
    """Rewrite the classifier's queue policy in a built ``repository`` where given (its
    ``config.pbtxt`` and its ``bls_build.json``); the policy now.

    For measuring other bounds on the same build (``tools/overload.py``) without rebuilding it.
    """
    path = Path(repository) / mc.CLASSIFIER / "config.pbtxt"
    config = mc.read_config(path)
    current = config.dynamic_batching.default_queue_policy
    policy = mc.QueuePolicy(
        current.max_queue_size if max_queue_size is None else max_queue_size,
        current.default_timeout_microseconds // 1000 if timeout_ms is None else timeout_ms,
    )
    json_format.ParseDict(policy.config(), current)
    mc.write_config(path, config)
    spec = read_build_spec(repository)
    if spec is not None:
        write_build_spec(
            repository,
            dataclasses.replace(spec, max_queue_size=policy.max_queue_size, queue_timeout_ms=policy.timeout_ms),
        )
    return policy
