"""The benchmark's repository: a built repository's models, on both hostings, plus the two
designs they are compared with.

:func:`write_bench_repository` reads a repository that ``tools/build_repo.py`` wrote
(``--target local``, either hosting) and writes, for one server:

- ``preprocessing`` and the network in Python-backend models, and ``classifier`` over them;
- where Triton's own backends are built (``tools/build_backends.py``), the same two on them
  (``preprocessing_native``: ``backend: "dali"``; ``efficientnet-b0_native``:
  ``onnxruntime_onnx``) and ``classifier_native`` over them;
- ``classifier_ensemble`` (and ``classifier_ensemble_native``): a Triton ensemble of the same
  two sub-models, ending in ``classifier_postprocess`` (a Python model doing the classifier's
  softmax/top-k/labels), so that it answers exactly like ``classifier``;
- ``classifier_naive``: one Python model that decodes with PIL and transforms with numpy
  (:mod:`bls_pipeline.devtools.bench.naive`), then runs the same network file with the same thread
  settings and batching as the built repository.

Example::

    names = write_bench_repository(Path("build/model_repository"), Path("/tmp/bench_repo"))
    # {"bls": "classifier", "ensemble": "classifier_ensemble", "naive": "classifier_naive",
    #  "bls_native": "classifier_native", "ensemble_native": "classifier_ensemble_native"}
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
from pathlib import Path

from bls_pipeline import contract
from bls_pipeline.backends import native_backends_dir
from bls_pipeline.builder import model_config as mc
from bls_pipeline.builder.hosting import AUTO, choose_hosting
from bls_pipeline.builder.repository import (
    TEMPLATE_DIR,
    RepositorySpec,
    read_build_spec,
    serialize_pipeline,
    write_warmup_files,
)
from bls_pipeline.errors import ConfigError
from bls_pipeline.layout import (
    BUILD_SPEC_FILE,
    CONFIG_FILE,
    DALI_FILE,
    LABELS_FILE,
    MODEL_FILE,
    ONNX_FILE,
    SERIALIZED_FILE,
    SETTINGS_FILE,
    VERSION,
    WARMUP_DIR,
)

LOGGER = logging.getLogger(__name__)

ENSEMBLE = "classifier_ensemble"
POSTPROCESS = "classifier_postprocess"
NAIVE = "classifier_naive"
LOGITS_INPUT = "LOGITS"
# The models of the natively hosted variant are named with this suffix.
NATIVE_SUFFIX = "_native"
# The endpoints the benchmark loads, by the name it reports them under.
ENDPOINTS = {
    "bls": mc.CLASSIFIER,
    "ensemble": ENSEMBLE,
    "naive": NAIVE,
    "bls_native": mc.CLASSIFIER + NATIVE_SUFFIX,
    "ensemble_native": ENSEMBLE + NATIVE_SUFFIX,
}

_MODEL_PY = '''"""Python-backend entry point of the benchmark's ``{name}`` model; the logic lives in ``bls_pipeline``."""

from bls_pipeline.devtools.bench.models import {cls} as TritonPythonModel  # noqa: F401
'''


def _write_model_py(version_dir: Path, name: str, cls: str) -> None:
    version_dir.mkdir(parents=True, exist_ok=True)
    (version_dir / MODEL_FILE).write_text(_MODEL_PY.format(name=name, cls=cls))


def postprocess_config(*, max_batch_size: int, num_classes: int, max_queue_delay_us: int) -> mc.ModelConfig:
    """``classifier_postprocess``: logits ``[C]`` in, the classifier's three outputs out."""
    config = mc.ModelConfig()
    config.CopyFrom(
        mc.classifier_config(
            max_batch_size=max_batch_size,
            parameters={"labels_file": LABELS_FILE},
            max_queue_delay_us=max_queue_delay_us,
        )
    )
    config.name = POSTPROCESS
    del config.input[:]
    config.input.add(name=LOGITS_INPUT, data_type=mc.model_config_pb2.TYPE_FP32, dims=[num_classes])
    return config


def classifier_ensemble_config(
    *, max_batch_size: int, name: str = ENSEMBLE, preprocessing: str = mc.PREPROCESSING, network: str = mc.NETWORK
) -> mc.ModelConfig:
    """``classifier_ensemble``: IMAGE -> preprocessing -> network -> postprocess, as protobuf."""
    return mc.ensemble_config(
        name=name,
        max_batch_size=max_batch_size,
        inputs=[contract.IMAGE.config()],
        outputs=[spec.config() for spec in contract.CLASSIFIER_OUTPUTS],
        steps=[
            mc.EnsembleStep(preprocessing, {mc.DALI_INPUT: mc.IMAGE_INPUT}, {mc.DALI_OUTPUT: "preprocessed"}),
            mc.EnsembleStep(network, {mc.NETWORK_INPUT: "preprocessed"}, {mc.NETWORK_OUTPUT: "logits"}),
            mc.EnsembleStep(
                POSTPROCESS,
                {LOGITS_INPUT: "logits"},
                {
                    mc.SCORES_OUTPUT: mc.SCORES_OUTPUT,
                    mc.CLASS_IDS_OUTPUT: mc.CLASS_IDS_OUTPUT,
                    mc.LABELS_OUTPUT: mc.LABELS_OUTPUT,
                },
            ),
        ],
    )


def naive_config(classifier: mc.ModelConfig, network: mc.ModelConfig) -> mc.ModelConfig:
    """``classifier_naive``: the classifier's contract and batching, the (Python-hosted) network's threads."""
    config = mc.ModelConfig()
    config.CopyFrom(classifier)
    config.name = NAIVE
    # The top-k outputs only: the naive model does not offer Triton's classification extension.
    top_k = [output for output in config.output if output.name != contract.PROBABILITIES_OUTPUT]
    del config.output[:]
    config.output.extend(top_k)
    config.parameters.clear()
    config.parameters["labels_file"].string_value = LABELS_FILE
    for key, value in mc.parameters_of(network).items():
        if key in ("intra_op_threads", "allow_spinning"):
            config.parameters[key].string_value = value
    return config


def _spec(built: Path, native_models: frozenset[str]) -> RepositorySpec:
    """The built repository's spec (its ``bls_build.json``), on the given hosting."""
    spec = read_build_spec(built)
    if spec is None:
        raise ConfigError(f"{built} has no {BUILD_SPEC_FILE}: rebuild it with tools/build_repo.py")
    return dataclasses.replace(spec, target="local", native_models=native_models)


def _write_sub_models(built: Path, output: Path, spec: RepositorySpec, suffix: str) -> tuple[str, str]:
    """``preprocessing<suffix>`` and ``<network><suffix>`` of ``spec``'s hosting; their names."""
    names = (mc.PREPROCESSING + suffix, mc.NETWORK + suffix)
    configs = spec.configs()
    for model, name in zip((mc.PREPROCESSING, mc.NETWORK), names):
        version = output / name / "1"
        version.mkdir(parents=True)
        for path in (built / model / "1").iterdir():
            # The pipeline (dali.py and its settings, or model.dali: either hosting loads it
            # first), the network files; model.py follows the hosting.
            if path.is_file() and path.name != MODEL_FILE:
                os.link(path, version / path.name)
        if model == mc.PREPROCESSING:
            write_warmup_files(output / name / WARMUP_DIR, spec)
        if not spec.native(model):
            shutil.copyfile(TEMPLATE_DIR / model / "1" / MODEL_FILE, version / MODEL_FILE)
        elif model == mc.PREPROCESSING and not (version / SERIALIZED_FILE).is_file():
            serialize_pipeline(version / DALI_FILE, version / SERIALIZED_FILE)
        config = configs[model]
        config.name = name
        mc.write_config(output / name / CONFIG_FILE, config)
    return names


def _write_classifier(built: Path, output: Path, name: str, preprocessing: str, network: str) -> None:
    shutil.copytree(built / mc.CLASSIFIER, output / name, ignore=shutil.ignore_patterns("__pycache__"))
    config = mc.read_config(output / name / CONFIG_FILE)
    config.name = name
    config.parameters["preprocessing_model"].string_value = preprocessing
    config.parameters["network_model"].string_value = network
    mc.write_config(output / name / CONFIG_FILE, config)


def native_hosting(built: Path, backends_built: bool) -> frozenset[str]:
    """The sub-models the native variant hosts on Triton's own backends (empty: no variant)."""
    spec = _spec(built, frozenset())
    hosting = choose_hosting(
        target="local", device=spec.device, runtime=spec.runtime, requested=AUTO, backends_built=backends_built
    )
    return frozenset(model for model, choice in hosting.items() if choice.native)


def write_bench_repository(built: Path, output: Path, *, native: bool | None = None) -> dict[str, str]:
    """Write the benchmark repository of ``built`` into ``output`` (which must not exist).

    ``native`` (default: where Triton's own backends are built here) adds the natively hosted
    variant. Returns the model name of each endpoint written (keys of :data:`ENDPOINTS`). A
    repository for the NVIDIA Triton container (``--target triton``) is refused: the
    benchmark runs the pip-installed server.
    """
    built, output = Path(built), Path(output)
    if (built / mc.CLASSIFIER / "1" / "bls_pipeline").is_dir():
        raise ConfigError(f"{built} is not a --target local repository: the benchmark runs the pip-installed server")
    onnx = built / mc.NETWORK / VERSION / ONNX_FILE
    if not onnx.is_file():
        raise ConfigError(f"{onnx} is missing: the naive baseline runs the ONNX model")
    if native is None:
        native = native_backends_dir() is not None
    output.mkdir(parents=True)
    python_spec = _spec(built, frozenset())
    preprocessing, network = _write_sub_models(built, output, python_spec, "")
    _write_classifier(built, output, mc.CLASSIFIER, preprocessing, network)
    written = {"bls": mc.CLASSIFIER, "ensemble": ENSEMBLE, "naive": NAIVE}
    classifier = mc.read_config(output / mc.CLASSIFIER / CONFIG_FILE)
    max_batch_size = classifier.max_batch_size
    delay = classifier.dynamic_batching.max_queue_delay_microseconds
    labels = output / mc.CLASSIFIER / "1" / LABELS_FILE

    post_dir = output / POSTPROCESS / "1"
    _write_model_py(post_dir, POSTPROCESS, "PostprocessModel")
    shutil.copyfile(labels, post_dir / LABELS_FILE)
    mc.write_config(
        output / POSTPROCESS / CONFIG_FILE,
        postprocess_config(
            max_batch_size=max_batch_size, num_classes=python_spec.num_classes, max_queue_delay_us=delay
        ),
    )
    (output / ENSEMBLE / "1").mkdir(parents=True, exist_ok=True)
    mc.write_config(output / ENSEMBLE / CONFIG_FILE, classifier_ensemble_config(max_batch_size=max_batch_size))

    native_models = native_hosting(built, backends_built=True) if native else frozenset()
    if native_models:
        spec = _spec(built, native_models)
        preprocessing, network = _write_sub_models(built, output, spec, NATIVE_SUFFIX)
        _write_classifier(built, output, ENDPOINTS["bls_native"], preprocessing, network)
        ensemble = ENDPOINTS["ensemble_native"]
        (output / ensemble / "1").mkdir(parents=True)
        mc.write_config(
            output / ensemble / CONFIG_FILE,
            classifier_ensemble_config(
                max_batch_size=max_batch_size, name=ensemble, preprocessing=preprocessing, network=network
            ),
        )
        written.update(bls_native=ENDPOINTS["bls_native"], ensemble_native=ensemble)

    naive_dir = output / NAIVE / "1"
    _write_model_py(naive_dir, NAIVE, "NaiveClassifierModel")
    shutil.copyfile(labels, naive_dir / LABELS_FILE)
    shutil.copyfile(output / mc.PREPROCESSING / "1" / SETTINGS_FILE, naive_dir / SETTINGS_FILE)
    # The same network files as the served model: on a GPU, model.pt runs on torch CUDA.
    for network_file in (output / mc.NETWORK / "1").glob("model.*"):
        if network_file.name != MODEL_FILE:
            os.link(network_file, naive_dir / network_file.name)
    mc.write_config(
        output / NAIVE / CONFIG_FILE, naive_config(classifier, mc.read_config(output / mc.NETWORK / CONFIG_FILE))
    )
    LOGGER.info("benchmark repository written to %s", output)
    return written
