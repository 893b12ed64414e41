"""Adopt a repository the user already has: the ``classifier`` in front of their own models.

``tools/build_repo.py --from-repository DIR --output OUT`` reads ``DIR`` (the tutorial's
layout: ``preprocessing`` on the DALI backend, the network, and an ensemble tying them),
follows the ensemble's steps to the DALI model and the network, reads their tensors, types
and batch sizes from their configs (or, without one, from the autoserialized pipeline and
the ONNX file), and writes into ``OUT`` a copy of the user's models with the classifier
beside them, wired to their names (:class:`bls_pipeline.request.submodels.SubModels`).
``DIR`` is only read. Then both paths run in process on the sample photographs, the
ensemble's (pipeline, then network) and the classifier's, and their classes must agree.

Example::

    found = read_repository(Path("model_repository"))
    print(found.describe())
    report = adopt_repository(AdoptOptions(source=Path("model_repository"), output=Path("adopted")), progress=print)
"""

from __future__ import annotations

import functools
import logging
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from bls_pipeline import contract
from bls_pipeline.builder import model_config as mc
from bls_pipeline.builder.hosting import AUTO, BUILD_HINT, NATIVE, PYTHON
from bls_pipeline.builder.network_file import ONNX, TENSORRT, check_fit, describe_tensor, read_network_file
from bls_pipeline.builder.repository import TEMPLATE_DIR, prepare_output, write_classifier_files
from bls_pipeline.builder.user_dali import UserPipeline, load_user_pipeline
from bls_pipeline.contract import TensorSpec
from bls_pipeline.errors import ConfigError
from bls_pipeline.layout import CONFIG_FILE, DALI_FILE, LABELS_FILE, MODEL_FILE, ONNX_FILE, PLAN_FILE, SERIALIZED_FILE
from bls_pipeline.request.submodels import SubModels
from bls_pipeline.runtime.device import CPU, GPU, decoder_device, instance_kind

LOGGER = logging.getLogger(__name__)

DALI = "dali"
_NETWORK_FILES = {ONNX: ONNX_FILE, TENSORRT: PLAN_FILE}


@dataclass(frozen=True)
class FoundModel:
    """One of the user's models as the classifier will call it."""

    name: str
    directory: Path
    kind: str  # dali, onnx or tensorrt
    input: TensorSpec
    output: TensorSpec
    max_batch_size: int  # 0: no limit of its own (the classifier's)
    source: str  # where input, output and max batch size were read
    config: mc.ModelConfig | None = None

    @property
    def version_dir(self) -> Path:
        """The version Triton serves by default (the highest)."""
        return _latest_version(self.directory)

    def describe(self) -> str:
        """One line for the build output."""
        batch = f"max batch {self.max_batch_size}" if self.max_batch_size else "no max batch"
        return f"{self.name} ({self.kind}): {describe_tensor(self.input)} -> {describe_tensor(self.output)}, {batch} (from {self.source})"


@dataclass(frozen=True)
class FoundRepository:
    """What :func:`read_repository` found: the ensemble (if any), the DALI model and the network."""

    directory: Path
    ensemble: str | None
    preprocessing: FoundModel
    network: FoundModel
    models: tuple[str, ...]

    def describe(self) -> str:
        """The lines the build prints about what it found."""
        via = f"ensemble {self.ensemble}" if self.ensemble else "no ensemble: the one DALI model and the one network"
        return "\n".join(
            [
                f"found in {self.directory}: {', '.join(self.models)} ({via})",
                f"  {self.preprocessing.describe()}",
                f"  {self.network.describe()}",
            ]
        )

    def submodels(self) -> SubModels:
        """The classifier's wiring to these two models."""
        return SubModels(
            preprocessing_model=self.preprocessing.name,
            preprocessing_input=self.preprocessing.input.name,
            preprocessing_output=self.preprocessing.output.name,
            preprocessing_max_batch_size=self.preprocessing.max_batch_size,
            network_model=self.network.name,
            network_input=self.network.input.name,
            network_output=self.network.output.name,
            network_input_dtype=self.network.input.data_type,
            network_input_dims=tuple(self.network.input.dims),
            network_max_batch_size=self.network.max_batch_size,
        )


@functools.lru_cache(maxsize=8)
def _user_pipeline_of(version_dir: Path, device: str, files: tuple[tuple[str, int, int], ...]) -> UserPipeline:
    return load_user_pipeline(version_dir, decoder_device=decoder_device(device))


def _user_pipeline(version_dir: Path, device: str) -> UserPipeline:
    """The user's DALI model of ``version_dir`` for ``device``, loaded once while its files stay
    as they are: importing ``dali.py`` runs the user's code, and reading, copying and verifying
    a repository would otherwise run it three times."""
    files = tuple(
        (path.name, stat.st_mtime_ns, stat.st_size)
        for path in (version_dir / SERIALIZED_FILE, version_dir / DALI_FILE)
        if path.is_file()
        for stat in [path.stat()]
    )
    return _user_pipeline_of(version_dir, device, files)


def _latest_version(directory: Path) -> Path:
    versions = sorted((int(path.name), path) for path in directory.iterdir() if path.is_dir() and path.name.isdigit())
    if not versions:
        raise ConfigError(f"{directory}: no version folder (1/, 2/, ...)")
    return versions[-1][1]


def _spec(tensor) -> TensorSpec:
    return TensorSpec(tensor.name, mc.model_config_pb2.DataType.Name(tensor.data_type), tuple(tensor.dims))


def _kind(config: mc.ModelConfig | None, directory: Path) -> str | None:
    if config is not None:
        if config.backend == "dali":
            return DALI
        if config.platform == "onnxruntime_onnx" or config.backend == "onnxruntime":
            return ONNX
        if config.platform == "tensorrt_plan" or config.backend == "tensorrt":
            return TENSORRT
        if config.platform or config.backend:
            return None
    files = {path.name for version in directory.iterdir() if version.is_dir() for path in version.iterdir()}
    if files & {"dali.py", SERIALIZED_FILE}:
        return DALI
    if ONNX_FILE in files:
        return ONNX
    if PLAN_FILE in files:
        return TENSORRT
    return None


def _read_configs(directory: Path) -> dict[str, mc.ModelConfig | None]:
    """Every model folder of the repository, with its config (``None``: none, Triton's autoconfig)."""
    if not directory.is_dir():
        raise ConfigError(f"--from-repository {directory}: not a directory")
    configs: dict[str, mc.ModelConfig | None] = {}
    for path in sorted(directory.iterdir()):
        if not path.is_dir() or path.name.startswith("."):
            continue
        config_file = path / CONFIG_FILE
        if config_file.is_file():
            configs[path.name] = mc.read_config(config_file)
        elif any(version.is_dir() and version.name.isdigit() for version in path.iterdir()):
            configs[path.name] = None
    if not configs:
        raise ConfigError(f"--from-repository {directory}: no model folders in it")
    return configs


def read_repository(directory: Path, *, ensemble: str | None = None, device: str = CPU) -> FoundRepository:
    """Find the DALI model and the network of ``directory`` through its ensemble; see the module docstring."""
    configs = _read_configs(directory)
    if mc.CLASSIFIER in configs:
        raise ConfigError(
            f"{directory} already has a model named {mc.CLASSIFIER!r}: the adopted classifier would replace it"
        )
    ensembles = sorted(name for name, config in configs.items() if config is not None and config.platform == "ensemble")
    if ensemble is not None and ensemble not in ensembles:
        raise ConfigError(
            f"--ensemble {ensemble}: {directory} has no ensemble of that name (ensembles: {', '.join(ensembles) or 'none'})"
        )
    if ensemble is None and len(ensembles) > 1:
        raise ConfigError(
            f"{directory} has {len(ensembles)} ensembles ({', '.join(ensembles)}): name one with --ensemble"
        )
    chosen = ensemble or (ensembles[0] if ensembles else None)
    kinds = {name: _kind(config, directory / name) for name, config in configs.items() if name not in ensembles}
    if chosen:
        pre_name, net_name = _follow_ensemble(chosen, configs[chosen], configs)
    else:
        dali = [name for name, kind in kinds.items() if kind == DALI]
        nets = [name for name, kind in kinds.items() if kind in (ONNX, TENSORRT)]
        if len(dali) != 1 or len(nets) != 1:
            raise ConfigError(
                f"{directory} has no ensemble, and not one DALI model and one network "
                f"(DALI: {', '.join(dali) or 'none'}; networks: {', '.join(nets) or 'none'})"
            )
        pre_name, net_name = dali[0], nets[0]
    if kinds.get(pre_name) != DALI:
        raise ConfigError(f'{pre_name}: the ensemble\'s first step is not a DALI model (backend: "dali")')
    if kinds.get(net_name) not in (ONNX, TENSORRT):
        raise ConfigError(f"{net_name}: the step after {pre_name} is not an ONNX or TensorRT network")
    preprocessing = _dali_model(directory / pre_name, configs[pre_name], device)
    network = _network_model(directory / net_name, configs[net_name], kinds[net_name])
    check_fit(preprocessing.output, network.input, preprocessing=pre_name, network=net_name)
    return FoundRepository(directory, chosen, preprocessing, network, tuple(configs))


def _follow_ensemble(name: str, config: mc.ModelConfig, configs: dict) -> tuple[str, str]:
    """The step that reads the ensemble's input, and the step that reads that step's output."""
    steps = list(config.ensemble_scheduling.step)
    inputs = {tensor.name for tensor in config.input}
    first = [step for step in steps if set(step.input_map.values()) & inputs]
    if len(first) != 1:
        raise ConfigError(f"ensemble {name}: expected one step reading its input {sorted(inputs)}, found {len(first)}")
    produced = set(first[0].output_map.values())
    second = [step for step in steps if set(step.input_map.values()) & produced]
    if len(second) != 1:
        raise ConfigError(
            f"ensemble {name}: expected one step reading {first[0].model_name}'s output, found {len(second)}"
        )
    for step in (first[0], second[0]):
        if step.model_name not in configs:
            raise ConfigError(f"ensemble {name}: step model {step.model_name!r} is not in the repository")
    return first[0].model_name, second[0].model_name


def _single(config: mc.ModelConfig, name: str) -> tuple[TensorSpec, TensorSpec]:
    if len(config.input) != 1 or len(config.output) != 1:
        raise ConfigError(
            f"{name}: the classifier calls a model of one input and one output; its config has "
            f"{len(config.input)} inputs and {len(config.output)} outputs"
        )
    return _spec(config.input[0]), _spec(config.output[0])


def _per_image(tensor: TensorSpec, name: str) -> TensorSpec:
    """An unbatched DALI model's tensor without its first dimension, which counts the images."""
    if len(tensor.dims) < 2:
        raise ConfigError(
            f"{name}: max_batch_size 0 with {describe_tensor(tensor)}: the classifier sends a batch of images, "
            "the first dimension of an unbatched DALI model's tensors"
        )
    return replace(tensor, dims=tensor.dims[1:])


def _dali_model(directory: Path, config: mc.ModelConfig | None, device: str) -> FoundModel:
    name = directory.name
    if config is not None and config.input and config.output:
        if config.max_batch_size < 0:
            raise ConfigError(f"{name}: max_batch_size {config.max_batch_size}: the classifier sends batches")
        source, output = _single(config, name)
        if config.max_batch_size > 0:
            return FoundModel(name, directory, DALI, source, output, config.max_batch_size, CONFIG_FILE, config)
        # Unbatched (as this project builds it): Triton's DALI backend still takes a batch, the
        # first dimension of each tensor, up to the pipeline's own batch size.
        pipeline = _user_pipeline(_latest_version(directory), device)
        source, output = _per_image(source, name), _per_image(output, name)
        where = f"{CONFIG_FILE}; max batch from {pipeline.source.name}"
        return FoundModel(name, directory, DALI, source, output, pipeline.max_batch_size, where, config)
    # No inputs and outputs in a config: Triton's DALI backend derives them from the pipeline, so do we.
    pipeline = _user_pipeline(_latest_version(directory), device)
    if len(pipeline.input_names) != 1:
        raise ConfigError(
            f"{pipeline.source}: the classifier feeds one input, the pipeline has {list(pipeline.input_names) or 'none'}"
        )
    if pipeline.serialized is None:
        raise ConfigError(f"{pipeline.source}: its output shape is read by running it, and {pipeline.unserializable}")
    from bls_pipeline.builder.user_pipeline import sample_photos

    images = _dali_runner(pipeline.serialized, pipeline.input_names[0], device)(
        [np.fromfile(photo, np.uint8) for photo in sample_photos()]
    )
    output_type = {np.dtype(np.float32): "TYPE_FP32", np.dtype(np.float16): "TYPE_FP16"}.get(
        images.dtype, str(images.dtype)
    )
    max_batch = config.max_batch_size if config is not None and config.max_batch_size else pipeline.max_batch_size
    return FoundModel(
        name,
        directory,
        DALI,
        contract.TensorSpec(pipeline.input_names[0], "TYPE_UINT8", (-1,)),
        # The DALI backend's autoconfiguration names the output after the pipeline's output node.
        contract.TensorSpec(pipeline.output_name, output_type, tuple(images.shape[1:])),
        max_batch,
        f"{pipeline.source.name}, the autoserialized pipeline",
        config,
    )


def _network_model(directory: Path, config: mc.ModelConfig | None, kind: str) -> FoundModel:
    name = directory.name
    filename = (config.default_model_filename if config is not None else "") or _NETWORK_FILES[kind]
    path = _latest_version(directory) / filename
    if config is not None and config.input and config.output:
        if config.max_batch_size < 1:
            raise ConfigError(f"{name}: max_batch_size {config.max_batch_size}: the classifier sends batches")
        source, output = _single(config, name)
        return FoundModel(name, directory, kind, source, output, config.max_batch_size, CONFIG_FILE, config)
    network = read_network_file(path)
    max_batch = config.max_batch_size if config is not None and config.max_batch_size else max(network.batch, 0)
    return FoundModel(
        name, directory, kind, network.input, network.output, max_batch, f"{path.name}, the {kind.upper()} file", config
    )


# --- writing ------------------------------------------------------------------------------------


@dataclass
class AdoptOptions:
    """What ``tools/build_repo.py --from-repository`` takes."""

    source: Path
    output: Path
    ensemble: str | None = None
    keep_ensemble: bool = True
    target: str = "local"
    device: str = CPU
    hosting: str = AUTO
    labels: Path | None = None
    max_batch_size: int = 64
    classifier_instances: int = 1
    force: bool = False
    limits: dict[str, int] = field(default_factory=dict)


@dataclass
class AdoptReport:
    """What was found, written and verified, for the CLI to print."""

    found: FoundRepository
    written: list[str]
    hosting: dict[str, str]
    verification: list[str]


def _python_hosted(config: mc.ModelConfig, *, device: str, gpu_inputs: bool) -> mc.ModelConfig:
    """The user's config, its names, tensors and batching as they are, served by a Python-backend model."""
    hosted = mc.ModelConfig()
    hosted.CopyFrom(config)
    hosted.ClearField("platform")
    hosted.ClearField("default_model_filename")
    hosted.backend = "python"
    del hosted.instance_group[:]
    hosted.instance_group.add(kind=mc.model_config_pb2.ModelInstanceGroup.Kind.Value(instance_kind(device)), count=1)
    hosted.parameters[mc.FORCE_CPU_ONLY_INPUT_TENSORS].string_value = "no" if gpu_inputs else "yes"
    return hosted


def _config_of(model: FoundModel) -> mc.ModelConfig:
    """The model's config, or the one Triton would derive for a model without one."""
    if model.config is not None and model.config.input:
        return model.config
    config = mc.ModelConfig()
    if model.config is not None:
        config.CopyFrom(model.config)
    config.name = model.name
    config.max_batch_size = model.max_batch_size or 64
    for tensors, spec in ((config.input, model.input), (config.output, model.output)):
        tensors.add(name=spec.name, data_type=mc.model_config_pb2.DataType.Value(spec.data_type), dims=spec.dims)
    if model.kind == DALI:
        config.backend = "dali"
    elif not config.platform and not config.backend:
        config.platform = "onnxruntime_onnx" if model.kind == ONNX else "tensorrt_plan"
    return config


def choose_adopted_hosting(options: AdoptOptions, found: FoundRepository, backends_built: bool) -> dict[str, str]:
    """``native`` (the user's configs as they are) or ``python`` (re-hosted) for each of the two models.

    The container has every backend. The pip-installed server has Triton's DALI and ONNX
    Runtime backends where ``tools/build_backends.py`` built them, and never TensorRT's: a plan
    is hosted in Python there (TensorRT where it is installed).
    """
    if options.target == "triton":
        return {found.preprocessing.name: NATIVE, found.network.name: NATIVE}
    if options.hosting == PYTHON:
        return {found.preprocessing.name: PYTHON, found.network.name: PYTHON}
    if options.hosting == NATIVE and not backends_built:
        raise ConfigError(
            f"--hosting native: Triton's DALI and ONNX Runtime backends are not built here ({BUILD_HINT})"
        )
    native = NATIVE if backends_built else PYTHON
    return {found.preprocessing.name: native, found.network.name: native if found.network.kind == ONNX else PYTHON}


def adopt_repository(
    options: AdoptOptions, progress: Callable[[str], None] = LOGGER.info, *, backends_built: bool = False
) -> AdoptReport:
    """Read, copy, wire and verify; see the module docstring. ``options.source`` is only read."""
    from bls_pipeline.request.postprocess import load_labels

    source, output = options.source.resolve(), options.output.resolve()
    if output == source or source in output.parents:
        raise ConfigError(
            f"--output {options.output} is inside --from-repository {options.source}: write the adopted repository elsewhere"
        )
    progress(f"reading {options.source} (only read: your models are copied, never edited)")
    found = read_repository(options.source, ensemble=options.ensemble, device=options.device)
    progress(found.describe())
    labels = load_labels(options.labels)
    if len(labels) != found.network.output.dims[-1]:
        raise ConfigError(
            f"{found.network.name} gives {found.network.output.dims[-1]} classes but the labels have {len(labels)}: pass --labels FILE"
        )
    if (
        found.ensemble
        and options.keep_ensemble
        and found.preprocessing.output.data_type != found.network.input.data_type
    ):
        raise ConfigError(
            f"{found.ensemble} hands {found.preprocessing.name}'s {describe_tensor(found.preprocessing.output)} to "
            f"{found.network.name}'s {describe_tensor(found.network.input)}, which Triton refuses at load (an ensemble "
            "does not cast; the classifier does): pass --no-keep-ensemble"
        )
    hosting = choose_adopted_hosting(options, found, backends_built)
    if found.network.kind == TENSORRT and options.device == CPU:
        raise ConfigError(f"{found.network.name} is a TensorRT plan: it runs only on a GPU (--device gpu)")
    prepare_output(options.output, force=options.force)
    written: list[str] = []
    for name in found.models:
        if name == found.ensemble and not options.keep_ensemble:
            written.append(f"{name}: left out (--no-keep-ensemble)")
            continue
        shutil.copytree(options.source / name, options.output / name, ignore=shutil.ignore_patterns("__pycache__"))
        if name not in (found.preprocessing.name, found.network.name):
            written.append(f"{name}: copied as it is")
    written.append(_write_preprocessing(options, found.preprocessing, hosting[found.preprocessing.name]))
    written.append(_write_network(options, found.network, hosting[found.network.name]))
    wiring = found.submodels()
    config = mc.classifier_config(
        max_batch_size=options.max_batch_size,
        device=options.device,
        parameters={"labels_file": LABELS_FILE, **wiring.parameters(), **options.limits},
        instances=options.classifier_instances,
    )
    mc.add_classification_output(config, num_classes=len(labels), label_filename=f"1/{LABELS_FILE}")
    write_classifier_files(options.output, labels=labels, target=options.target)
    mc.write_config(options.output / mc.CLASSIFIER / CONFIG_FILE, config)
    written.append(
        f"{mc.CLASSIFIER}: new, max batch {options.max_batch_size} (split into {wiring.chunk_size(options.max_batch_size)} "
        f"for the sub-models), wired to\n      " + wiring.describe().replace("\n", "\n      ")
    )
    for line in written:
        progress(f"  {line}")
    verification = verify_adopted(options.output, found, wiring, device=options.device, labels=labels)
    for line in verification:
        progress(f"  {line}")
    return AdoptReport(found, written, hosting, verification)


def _write_preprocessing(options: AdoptOptions, model: FoundModel, hosting: str) -> str:
    """The copy of the DALI model for the device and hosting (``model.dali``, a Python-backend config); returns what was done."""
    target = options.output / model.name
    version = target / model.version_dir.name
    pipeline = _user_pipeline(model.version_dir, options.device)
    notes = []
    if not pipeline.unchanged or hosting == PYTHON:
        if pipeline.serialized is None:
            raise ConfigError(
                f"{pipeline.source}: serving it {'in Python' if hosting == PYTHON else 'with a ' + pipeline.decoder_device + ' decoder'} "
                f"needs its serialized graph, and {pipeline.unserializable}: adopt it on the machine that serves it"
            )
        (version / SERIALIZED_FILE).write_bytes(pipeline.serialized)
        notes.append(
            f"{SERIALIZED_FILE} written beside your {pipeline.source.name} ({pipeline.decoder_device} decoder for --device {options.device})"
        )
    if hosting == PYTHON:
        shutil.copyfile(TEMPLATE_DIR / mc.PREPROCESSING / "1" / MODEL_FILE, version / MODEL_FILE)
        mc.write_config(
            target / CONFIG_FILE, _python_hosted(_config_of(model), device=options.device, gpu_inputs=False)
        )
        notes.append("hosted in a Python-backend model (same name, tensors and batching)")
    else:
        notes.append("Triton's DALI backend, your config as it is")
    return f"{model.name}: " + "; ".join(notes)


def _write_network(options: AdoptOptions, model: FoundModel, hosting: str) -> str:
    """The copy of the network for the hosting; returns what was done."""
    target = options.output / model.name
    if hosting != PYTHON:
        backend = "ONNX Runtime" if model.kind == ONNX else "TensorRT"
        return f"{model.name}: Triton's {backend} backend, your config as it is" + _onnx_gpu_warning(options, model)
    version = target / model.version_dir.name
    filename = (model.config.default_model_filename if model.config is not None else "") or _NETWORK_FILES[model.kind]
    if filename != _NETWORK_FILES[model.kind]:
        shutil.copyfile(version / filename, version / _NETWORK_FILES[model.kind])
    shutil.copyfile(TEMPLATE_DIR / mc.NETWORK / "1" / MODEL_FILE, version / MODEL_FILE)
    mc.write_config(
        target / CONFIG_FILE, _python_hosted(_config_of(model), device=options.device, gpu_inputs=options.device == GPU)
    )
    runtime = "TensorRT" if model.kind == TENSORRT else "ONNX Runtime"
    return f"{model.name}: hosted in a Python-backend model on {runtime} (same name, tensors and batching)"


# --- verification -------------------------------------------------------------------------------


def _dali_runner(serialized: bytes, input_name: str, device: str):
    from nvidia.dali.pipeline import Pipeline

    from bls_pipeline.runtime.dali import DaliPreprocessor

    on_gpu = device == GPU
    return DaliPreprocessor(
        lambda prefetch_queue_depth: Pipeline.deserialize(
            serialized,
            batch_size=64,
            num_threads=2,
            device_id=0 if on_gpu else None,
            prefetch_queue_depth=prefetch_queue_depth,
        ),
        input_name=input_name,
        max_batch_size=64,
        on_device=on_gpu,
    )


def verify_adopted(
    repository: Path, found: FoundRepository, wiring: SubModels, *, device: str, labels: Sequence[str]
) -> list[str]:
    """Run the adopted models in process on the sample photographs, the ensemble's way
    (pipeline, then network) and the classifier's (its batching, cast and top-k); the classes
    must agree. Returns the lines to print; what cannot run here is said, not skipped."""
    from bls_pipeline.builder.user_pipeline import sample_photos
    from bls_pipeline.request.orchestration import Orchestrator, classify_request
    from bls_pipeline.runtime.device import detect_device

    if device == GPU and detect_device()[0] != GPU:
        return [
            f"not verified here: the repository is for --device gpu and {detect_device()[1]}; serve it on the GPU machine"
        ]
    version = repository / found.preprocessing.name / found.preprocessing.version_dir.name
    serialized_file = version / SERIALIZED_FILE
    if not serialized_file.is_file():
        pipeline = _user_pipeline(found.preprocessing.version_dir, device)
        if pipeline.serialized is None:
            return [f"not verified here: {pipeline.source}: {pipeline.unserializable}"]
        serialized = pipeline.serialized
    else:
        serialized = serialized_file.read_bytes()
    network = _network_runner(repository / found.network.name, found.network, device)
    if isinstance(network, str):
        return [f"not verified here: {network}"]
    preprocess = _dali_runner(serialized, wiring.preprocessing_input, device)
    photos = sample_photos()
    encoded = [np.fromfile(photo, np.uint8) for photo in photos]
    dtype = np.float16 if wiring.casts_to_fp16 else np.float32
    ensemble = network(preprocess(encoded).astype(dtype)).argmax(axis=1)
    classify = Orchestrator(
        preprocess=lambda rows: preprocess(list(rows)),
        infer=lambda batch: network(batch.astype(dtype)),
        max_batch_size=wiring.chunk_size(64),
    )
    results = classify([bytes(array) for array in encoded])
    logits = np.stack([np.asarray(result) for result in results])
    classes = classify_request(logits, 1, labels).class_ids[:, 0]
    lines = [
        f"verified in process ({device}) on {len(photos)} sample photographs, the ensemble's path and the classifier's:"
    ]
    for photo, by_ensemble, by_classifier in zip(photos, ensemble, classes):
        lines.append(
            f"    {photo.name}: ensemble {by_ensemble} ({labels[by_ensemble]}), classifier {by_classifier} ({labels[by_classifier]})"
        )
    if list(ensemble) != list(classes):
        raise ConfigError(
            "verification failed: the ensemble's classes and the classifier's differ:\n" + "\n".join(lines[1:])
        )
    return lines


def _onnx_gpu_warning(options: AdoptOptions, model: FoundModel) -> str:
    """A warning for an ONNX network on the GPU in a repository for the pip-installed server
    whose ONNX Runtime has no CUDA provider: Triton's ONNX Runtime backend built here links
    that library, so the network would fail to load ("CUDA execution provider is not enabled
    in this build"); the NVIDIA Triton container's backend has the provider."""
    if model.kind != ONNX or options.target != "local" or options.device != GPU:
        return ""
    if model.config is not None and model.config.instance_group and mc.device_of(model.config) == CPU:
        return ""
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        return ""
    return (
        "\n      warning: this ONNX Runtime has no CUDA provider, so Triton's ONNX Runtime backend built for the"
        " pip-installed server cannot load a KIND_GPU network: give it instance_group KIND_CPU, or serve"
        " the repository in the NVIDIA Triton container (--target triton)"
    )


def _network_runner(directory: Path, model: FoundModel, device: str):
    """The network as served, in process, on the device its config puts it on; or why it cannot run here."""
    from bls_pipeline.runtime.network import OnnxRuntimeNetwork, TensorRTNetwork, tensorrt_importable

    config = mc.read_config(directory / CONFIG_FILE) if (directory / CONFIG_FILE).is_file() else None
    version = _latest_version(directory)
    filename = (config.default_model_filename if config is not None else "") or _NETWORK_FILES[model.kind]
    if model.kind == TENSORRT:
        if device != GPU or not tensorrt_importable():
            return f"{model.name} is a TensorRT plan and TensorRT is not installed here"
        return TensorRTNetwork(version / filename)
    # A config may put the network on the CPU in a GPU repository (instance_group KIND_CPU).
    on = CPU if config is not None and config.instance_group and mc.device_of(config) == CPU else device
    import onnxruntime

    if on == GPU and "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        return f"{model.name} runs on the GPU and this ONNX Runtime has no CUDAExecutionProvider"
    return OnnxRuntimeNetwork(version / filename, device=on)
